"""Data-loading speed: the reference's per-sample CREMA-D loader versus the prepared arrays.

    python scripts/bench_data.py [--clips 512] [--workers 2] [--batch-size 64] [--out results/benchmarks.md]

Generates CREMA-D-shaped raw clips in a temp folder (16 kHz wav of ~2.5 s, plus one 480x360 JPEG
per second in the reference's preprocessed layout Image-01-FPS/<clip>/<frame:05d>.jpg), then
measures training samples/s of
  (a) a loader in the reference's style: per sample librosa.load at 22.05 kHz, tile to 3 s, STFT
      512/353, log; os.listdir + PIL + RandomResizedCrop/flip/ToTensor/Normalize; torch DataLoader;
  (b) the prepared path: the same clips stored by data_prep/store.py (257x188 float16, uint8
      frames at 256x256), read by avbalance.data.prepared (train_batches, augmentation on the CPU
      here; on a GPU it runs there), and its reading side alone (what a GPU would wait for);
  (c) if data_prep.cremad exists: its preparation speed in clips/s on the same number of clips.
The figures go to a section of --out (other sections of the file are kept).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import librosa
import numpy as np
import soundfile as sf
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision import transforms

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src")]  # run from a checkout without installing

from avbalance.data.prepared import EpochReader, build, random_resized_crop_boxes, train_frames  # noqa: E402
from data_prep.store import SplitWriter, write_manifest  # noqa: E402

EMOTIONS = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
SECTION = "## Data loading (scripts/bench_data.py)"


# ----------------------------------------------------------------------------- raw clips

def make_raw(root: Path, n: int, seconds: float = 2.5, hw=(360, 480)) -> list[tuple[str, int]]:
    """Reference layout: AudioWAV/<id>.wav (16 kHz) + Image-01-FPS/<id>/<frame:05d>.jpg (1 fps)."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        cid, label = f"{1001 + k % 91}_C{k:05d}_{EMOTIONS[k % 6]}_XX", k % 6
        dur = seconds + 0.1 * (k % 5)
        t = np.arange(int(dur * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 60 * label) * t) + rng.normal(0, 0.05, t.size)
        (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
        sf.write(root / "AudioWAV" / f"{cid}.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
        frame_dir = root / "Image-01-FPS" / cid
        frame_dir.mkdir(parents=True, exist_ok=True)
        for s in range(int(np.ceil(dur))):
            # smooth texture + grain: JPEG work comparable to camera frames (a flat image decodes too fast)
            img = cv2.resize(rng.integers(0, 255, (hw[0] // 8, hw[1] // 8, 3), dtype=np.uint8), hw[::-1])
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(frame_dir / f"{30 * s:05d}.jpg"), img)
        rows.append((cid, label))
    return rows


# ----------------------------------------------------------------------------- (a) reference style

class ReferenceStyle(torch.utils.data.Dataset):
    """The reference CremadDataset.__getitem__, per sample, nothing cached."""

    def __init__(self, root: Path, rows):
        self.root, self.rows = root, rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        cid, label = self.rows[i]
        samples, _ = librosa.load(self.root / "AudioWAV" / f"{cid}.wav", sr=22050)
        resamples = np.clip(np.tile(samples, 3)[:22050 * 3], -1.0, 1.0)
        spectrogram = np.log(np.abs(librosa.stft(resamples, n_fft=512, hop_length=353)) + 1e-7)
        transform = transforms.Compose([  # rebuilt per sample, as the reference does
            transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        frame_dir = self.root / "Image-01-FPS" / cid
        image_samples = os.listdir(frame_dir)
        images = torch.zeros((1, 3, 224, 224))
        images[0] = transform(Image.open(frame_dir / image_samples[0]).convert("RGB"))
        return spectrogram, images.permute(1, 0, 2, 3), label


def bench_reference(root: Path, rows, workers: int, batch_size: int) -> float:
    loader = torch.utils.data.DataLoader(ReferenceStyle(root, rows), batch_size=batch_size, shuffle=True,
                                         num_workers=workers)
    t, n = time.perf_counter(), 0
    for spec, images, label in loader:
        n += len(label)
    return n / (time.perf_counter() - t)


# ----------------------------------------------------------------------------- (b) prepared

def prepare_store(root: Path, rows, out: Path, frame_hw=(256, 256), max_frames=3) -> float:
    """The reference's features computed once, into the store. -> clips/s (one process)."""
    t = time.perf_counter()
    w = SplitWriter(out, "train", len(rows), max_frames=max_frames, frame_hw=frame_hw, audio_shape=(257, 188))
    for i, (cid, label) in enumerate(rows):
        y, _ = librosa.load(root / "AudioWAV" / f"{cid}.wav", sr=22050)
        y = np.clip(np.tile(y, 3)[:22050 * 3], -1.0, 1.0)
        spec = np.log(np.abs(librosa.stft(y, n_fft=512, hop_length=353)) + 1e-7)
        files = sorted(os.listdir(root / "Image-01-FPS" / cid))[:max_frames]
        frames = np.stack([cv2.resize(cv2.imread(str(root / "Image-01-FPS" / cid / f))[..., ::-1], frame_hw[::-1],
                                      interpolation=cv2.INTER_AREA) for f in files])
        w.write(i, cid, label, frames, spec)
    summary = w.close()
    write_manifest(out, {"name": "bench", "class_names": EMOTIONS, "splits": {"train": summary}})
    return len(rows) / (time.perf_counter() - t)


def store_cfg(out: Path):
    return OmegaConf.create(dict(name="bench", root=str(out), prep_command="-", num_classes=6, selection_split="train",
                                 spec_shape=[257, 188], frames=1, frame_selection="even", image_size=224, audio_crop=None))


def pass_start_ms(out: Path, workers: int, batch_size: int, passes: int = 4) -> tuple[float, float, float]:
    """Milliseconds from asking for a pass (an evaluation of the store) to its first batch, with `workers`
    DataLoader workers: the run's first pass (the workers start), its later passes (they are kept), and
    a pass of a new loader each time (what every pass cost before the workers were kept), medians."""
    def first_batch(data) -> float:
        t = time.perf_counter()
        batches = data.eval_batches("train")
        next(batches)
        ms = 1000 * (time.perf_counter() - t)
        for _ in batches:  # the pass finished, untimed, as a run's are (a pass left early has reads in flight)
            pass
        return ms
    kept = build(store_cfg(out), seed=0, batch_size=batch_size, device="cpu", num_workers=workers)
    first, later = first_batch(kept), [first_batch(kept) for _ in range(passes - 1)]
    fresh = [first_batch(build(store_cfg(out), seed=0, batch_size=batch_size, device="cpu", num_workers=workers))
             for _ in range(passes - 1)]
    return first, float(np.median(later)), float(np.median(fresh))


def bench_prepared(out: Path, workers: int, batch_size: int) -> dict[str, float]:
    cfg = store_cfg(out)
    def rate(**kw) -> float:  # epoch 0 warms up (page cache, workers' start-up, preload's copy), epoch 1 is timed
        data = build(cfg, seed=0, batch_size=batch_size, device="cpu", **kw)
        for _ in data.train_batches(0):
            pass
        t, n = time.perf_counter(), 0
        for b in data.train_batches(1):
            n += len(b)
        return n / (time.perf_counter() - t)
    res = {f"prepared, train_batches on CPU (augmentation on CPU), num_workers={w}": rate(num_workers=w)
           for w in sorted({0, workers})}
    # speed.preload=all: the split copied once (here into RAM, on a GPU into its memory), gathered per batch
    res["prepared, preloaded (speed.preload=all), train_batches on CPU (augmentation on CPU)"] = rate(preload="all")
    data = build(cfg, seed=0, batch_size=batch_size, device="cpu")
    # reading side alone: what a GPU run waits for (the augmentation then runs on the GPU)
    reader = EpochReader(data.splits["train"], [data.rows["train"][i:i + batch_size] for i in range(0, len(data.rows["train"]), batch_size)],
                         np.zeros((len(data.rows["train"]), 1), dtype=np.int64), np.zeros(len(data.rows["train"]), dtype=np.int64), 188)
    t = time.perf_counter()
    n = sum(len(reader[k]["label"]) for k in range(len(reader)))
    res["prepared, reading side only (one thread; the GPU path's CPU work)"] = n / (time.perf_counter() - t)
    return res


def augment_ms(batch_size: int, reps: int = 5) -> float:
    """CPU time of the batched train augmentation (crop + resize to 224 + flip + normalise) per batch."""
    frames = torch.randint(0, 256, (batch_size, 1, 256, 256, 3), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    boxes, flips = random_resized_crop_boxes(batch_size, 256, 256, g), torch.rand(batch_size, generator=g) < 0.5
    train_frames(frames, boxes, flips, 224)
    t = time.perf_counter()
    for _ in range(reps):
        train_frames(frames, boxes, flips, 224)
    return (time.perf_counter() - t) / reps * 1000


# ----------------------------------------------------------------------------- (c) the CREMA-D preparation

def bench_prep_module(tmp: Path, n: int, workers: int) -> tuple[float | None, str]:
    try:
        from data_prep import cremad, synth  # noqa: F401
    except ImportError as e:
        return None, f"data_prep.cremad not available ({e})"
    raw = tmp / "cremad_raw"
    synth.make_cremad(raw, n_actors=8, n_clips=n, seconds=2.5, hw=(360, 480), texture=True)
    n_clips = sum(1 for _ in (raw / "AudioWAV").glob("*.wav"))
    # a fresh process, as a user runs it (its worker pool forks; this process already has threads)
    cmd = [sys.executable, "-m", "data_prep.cremad", "--raw", str(raw), "--out", str(tmp / "cremad_prep"),
           "--workers", str(workers)]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return n_clips / (time.perf_counter() - t), f"`python -m data_prep.cremad --workers {workers}` on synthetic 480x360 flv + 16 kHz wav (process start included)"


# ----------------------------------------------------------------------------- report

def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} torch threads"


def commit(repo: Path = REPO) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        # results/ is these scripts' output, not the code measured: a section written before does not make the tree dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)results"], cwd=repo,
                               capture_output=True, text=True).stdout.strip()
        return sha + (" (dirty)" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "uncommitted"


def write_section(path: Path, text: str) -> None:
    """Replace the section that `text` heads (its first line, a '## ' heading; up to the next '## ')
    in the file, or append it; every other section is kept."""
    heading = text.split("\n", 1)[0]
    if not heading.startswith("## "):
        raise ValueError(f"a section starts with a '## ' heading, got {heading!r}")
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    head, _, tail = old.partition(heading + "\n")
    rest = tail[tail.find("\n## "):] if "\n## " in tail else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # written whole, then renamed: an interrupted run keeps the old file
    tmp.write_text(head.rstrip() + "\n\n" + text.rstrip() + "\n" + rest)
    tmp.replace(path)


def _thread_vs_workers(prepared: dict[str, float], workers: int) -> str:
    """What the two host readers measured, in one sentence (the table's rows, not a belief)."""
    thread = prepared["prepared, train_batches on CPU (augmentation on CPU), num_workers=0"]
    procs = prepared.get(f"prepared, train_batches on CPU (augmentation on CPU), num_workers={workers}")
    if procs is None or workers == 0:
        return ""
    faster = "faster" if thread > procs else "slower"
    return (f"On {os.cpu_count()} CPU cores the prefetch thread (num_workers=0) was {faster} than {workers} worker "
            f"process{'es' if workers != 1 else ''} "
            f"({thread:.0f} vs {procs:.0f} samples/s).")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=512)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference-style loader")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks.md")
    p.add_argument("--no-prep-module", action="store_true", help="skip (c)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = make_raw(tmp / "raw", args.clips)
        ref = bench_reference(tmp / "raw", rows, args.workers, args.batch_size)
        store_rate = prepare_store(tmp / "raw", rows, tmp / "prepared")
        prepared = bench_prepared(tmp / "prepared", args.workers, args.batch_size)
        starts = pass_start_ms(tmp / "prepared", args.workers, args.batch_size) if args.workers else None
        prep_rate, prep_note = (None, "skipped (--no-prep-module)") if args.no_prep_module else \
            bench_prep_module(tmp, args.clips, args.workers)
    lines = [SECTION, "",
             f"Command: `python scripts/bench_data.py --clips {args.clips} --workers {args.workers} --batch-size {args.batch_size}`  ",
             f"Commit: {commit()}  ", f"Machine: {machine()}  ",
             f"Data: {args.clips} synthetic CREMA-D-shaped clips (2.5-2.9 s, 16 kHz wav; 480x360 JPEG at 1 fps), "
             f"batch {args.batch_size}, 1 frame at 224, spectrogram 257x188.", "",
             "| path | samples/s | vs reference |", "|---|---:|---:|",
             f"| (a) reference-style per-sample loader, DataLoader num_workers={args.workers} | {ref:.0f} | 1.0x |"]
    lines += [f"| (b) {k} | {v:.0f} | {v / ref:.1f}x |" for k, v in prepared.items()]
    aug = augment_ms(args.batch_size)
    lines += ["", f"Where the time goes in (b) on this CPU: the batched augmentation (RandomResizedCrop to 224 via "
              f"roi_align, flip, normalise) costs {aug:.0f} ms per batch of {args.batch_size} on the CPU, i.e. at most "
              f"{1000 * args.batch_size / aug:.0f} samples/s; on a GPU it runs on the device, asynchronously, and the CPU "
              f"only does the reading side. {_thread_vs_workers(prepared, args.workers)}",
              *([] if starts is None else [
                  "", f"Start of a pass with num_workers={args.workers} (an evaluation of the store; milliseconds to its "
                  f"first batch, medians): the run's first pass {starts[0]:.0f} ms (its workers start), later passes "
                  f"{starts[1]:.0f} ms (the same workers), a new loader per pass {starts[2]:.0f} ms."]),
              "", f"Preparation (one-off): in-script store writer {store_rate:.1f} clips/s (1 process); "
              + (f"{prep_note}: {prep_rate:.1f} clips/s." if prep_rate else f"{prep_note}."), ""]
    text = "\n".join(lines)
    print(text)
    write_section(args.out, text)
    return {"reference": ref, **prepared, "store_clips_per_s": store_rate, "prep_clips_per_s": prep_rate,
            "pass_start_ms": starts}


if __name__ == "__main__":
    main()
