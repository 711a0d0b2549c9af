"""A prepared dataset of CREMA-D's shapes and split sizes filled with random values, for timing
training end to end from the store (the loader, the device-side augmentation, the step and
evaluation) on a machine without the real clips:

    python scripts/make_bench_store.py --out data/bench_cremad
    python train.py dataset=custom dataset.root=data/bench_cremad dataset.selection_split=val model=resnet18 \
        modulation=ogm_ge modulation.alpha=0.8 precision=bf16 epochs=3

Shapes as data_prep.cremad stores them: uint8 frames at 256x256 (`--frames` per clip), a float16
257x188 log spectrogram, 6 classes. Split sizes: the reference's 6,698 train and 744 test clips, with
744 more as val. Accuracy on it means nothing; only the speed does. Needs numpy and OpenCV only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]  # run from a checkout without installing

from data_prep.store import SplitWriter, write_manifest  # noqa: E402

SPLITS = {"train": 6698, "val": 744, "test": 744}


def make(out: Path, sizes: dict[str, int], frames: int = 1, frame_hw=(256, 256), spec=(257, 188), classes: int = 6,
         seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in sizes.items():
        w = SplitWriter(out, split, n, max_frames=frames, frame_hw=frame_hw, audio_shape=spec)
        for i in w.todo():  # resumable: rows already written are kept
            w.write(i, f"{split}{i:05d}", int(rng.integers(classes)),
                    rng.integers(0, 256, (frames, *frame_hw, 3), dtype=np.uint8),
                    rng.standard_normal(spec, dtype=np.float32))
        w.close()
    write_manifest(out, {"class_names": [f"class{c}" for c in range(classes)], "synthetic": "scripts/make_bench_store.py"})
    return out


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--frames", type=int, default=1, help="frames stored per clip (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.0, help="split sizes times this (default: CREMA-D's)")
    args = p.parse_args(argv)
    if args.frames < 1 or args.scale <= 0:
        p.error(f"--frames {args.frames} --scale {args.scale}: expected --frames >= 1 and --scale > 0")
    sizes = {s: max(1, round(n * args.scale)) for s, n in SPLITS.items()}
    make(args.out, sizes, frames=args.frames)
    print(f"wrote {sizes} to {args.out}")
    return args.out


if __name__ == "__main__":
    main()
