"""JPEG-stored frames: decoding speed of the prepared loader's reading side by number of threads.

    python scripts/bench_jpeg.py [--clips 512] [--frames 3] [--threads 1 2 4 8] [--out results/benchmarks.md]

Writes a JPEG store (data_prep/store.py, --jpeg) of synthetic 256x256 textured frames (quality 90, like
the camera frames data_prep stores), then times `SplitArrays.read_frames` over it in batches of 64 clips
with each number of decoding threads (OpenCV decodes outside the GIL). With num_workers=0 the loader
uses min(8, CPU cores) threads; DataLoader worker processes decode on one each. Needs numpy, OpenCV
and torch. Its section of --out is replaced, the rest of the file kept.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src"), str(REPO / "scripts")]  # run from a checkout without installing

from avbalance.data.prepared import SplitArrays  # noqa: E402
from bench_data import commit, machine, write_section  # noqa: E402
from data_prep.store import SplitWriter  # noqa: E402

SECTION = "## JPEG decoding threads (scripts/bench_jpeg.py)"


def make_store(root: Path, clips: int, frames: int, side: int = 256) -> SplitArrays:
    rng = np.random.default_rng(0)
    w = SplitWriter(root, "train", clips, max_frames=frames, frame_hw=(side, side), audio_shape=(8, 8), jpeg=True)
    for i in w.todo():
        # smooth texture + grain: JPEG work comparable to camera frames (a flat image decodes too fast)
        f = [np.clip(cv2.resize(rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8), (side, side))
                     + rng.normal(0, 8, (side, side, 3)), 0, 255).astype(np.uint8) for _ in range(frames)]
        w.write(i, f"c{i}", i % 3, np.stack(f), np.zeros((8, 8), np.float32))
    w.close()
    return SplitArrays(root / "train")


def frames_per_second(arrays: SplitArrays, threads: int, batch: int, reps: int) -> float:
    n, t = len(arrays.a["labels"]), arrays.format["max_frames"]
    rows, pos = np.arange(n), np.tile(np.arange(t), (n, 1))
    arrays.decode_threads = threads
    arrays.read_frames(rows[:batch], pos[:batch])  # warm: page cache, the pool's threads
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        for lo in range(0, n, batch):
            arrays.read_frames(rows[lo:lo + batch], pos[lo:lo + batch])
        best = max(best, n * t / (time.perf_counter() - t0))
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=512)
    p.add_argument("--frames", type=int, default=3, help="stored frames per clip (VGGSound and KS feed 3)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=3, help="passes per setting; the fastest is reported")
    p.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks.md")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        arrays = make_store(Path(tmp), args.clips, args.frames)
        res = {k: frames_per_second(arrays, k, args.batch_size, args.reps) for k in args.threads}
    lines = [SECTION, "",
             f"Command: `python scripts/bench_jpeg.py --clips {args.clips} --frames {args.frames} --threads "
             f"{' '.join(map(str, args.threads))} --batch-size {args.batch_size} --reps {args.reps}`  ", f"Commit: {commit()}  ", f"Machine: {machine()}  ",
             f"Data: {args.clips} clips x {args.frames} synthetic textured 256x256 frames stored as JPEG; "
             f"`read_frames` in batches of {args.batch_size} clips, best of {args.reps} passes.", "",
             "| decoding threads | frames/s | vs 1 thread |", "|---:|---:|---:|"]
    lines += [f"| {k} | {v:,.0f} | {v / res[args.threads[0]]:.2f}x |" for k, v in res.items()]
    lines += ["", f"The loader decodes on min(8, CPU cores) = {min(8, os.cpu_count() or 1)} threads here when it reads in "
              "its own process (num_workers=0, and when a split is preloaded); DataLoader workers decode on one each."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_section(args.out, text)
    return res


if __name__ == "__main__":
    main()
