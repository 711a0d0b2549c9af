"""On-disk format of a prepared dataset: one folder per split of memory-mapped .npy arrays.

    <out>/manifest.json               written last (write_manifest), its presence = "prepared"
    <out>/<split>/format.json         the writer's parameters (checked when a run resumes)
    <out>/<split>/frames.npy          uint8   [N, Tmax, H, W, 3]   (raw mode), or, with jpeg=True:
    <out>/<split>/frames.jpg.bin      the JPEG files one after the other, and
    <out>/<split>/frames_index.npy    int64   [N, Tmax, 2]         (byte offset, length) per frame
    <out>/<split>/n_frames.npy        int16   [N]                  frames stored per clip (>= 1)
    <out>/<split>/audio.npy           float16 [N, F, T]
    <out>/<split>/labels.npy          int64   [N]                  -1 = not written or skipped
    <out>/<split>/ids.npy             <U{id_len} [N]               clip ids, fixed width, no pickle
    <out>/<split>/done.npy            bool    [N]                  row written or skipped
    <out>/<split>/skipped.json        [[index, id, reason], ...]

Every array loads with np.load(path, mmap_mode="r", allow_pickle=False). One process writes
(the preparation's main process, fed by a worker pool), so there is no locking.

Crash safety: rows go straight into the memmaps; flush() first syncs the arrays, then replaces
done.npy atomically. A row is "done" only once its data is on disk, so a crash loses at most
the rows written since the last flush, and reopening the split (resume) redoes exactly those.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np


class UserError(Exception):
    """Bad input from the user; message is one line. CLIs print `error: <msg>` and exit 2."""


ID_LEN = 64            # default width of the ids array (unicode characters)
FLUSH_EVERY = 256      # the writer flushes itself every this many rows
JPEG_QUALITY = 90


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class SplitWriter:
    def __init__(self, out_dir: Path, split: str, n: int, *, max_frames: int,
                 frame_hw: tuple[int, int], audio_shape: tuple[int, int], jpeg: bool = False,
                 id_len: int = ID_LEN):
        self.dir = Path(out_dir) / split
        self.split, self.n, self.max_frames, self.jpeg, self.id_len = split, n, max_frames, jpeg, id_len
        self.frame_hw, self.audio_shape = tuple(frame_hw), tuple(audio_shape)
        fmt = dict(n=n, max_frames=max_frames, frame_hw=list(self.frame_hw),
                   audio_shape=list(self.audio_shape), jpeg=jpeg, id_len=id_len, version=1)
        self.dir.mkdir(parents=True, exist_ok=True)
        fmt_path = self.dir / "format.json"
        resume = fmt_path.exists()
        if resume:
            old = json.loads(fmt_path.read_text())
            if old != fmt:
                raise UserError(f"{self.dir} was started with other parameters ({old}); "
                                f"delete it or choose another --out")
        H, W = self.frame_hw
        shapes = {"n_frames": ((n,), np.int16), "audio": ((n, *self.audio_shape), np.float16),
                  "labels": ((n,), np.int64), "ids": ((n,), f"<U{id_len}")}
        if jpeg:
            shapes["frames_index"] = ((n, max_frames, 2), np.int64)
        else:
            shapes["frames"] = ((n, max_frames, H, W, 3), np.uint8)
        self.arr = {k: self._open(k, shape, dtype, resume) for k, (shape, dtype) in shapes.items()}
        if resume:
            self.done = np.load(self.dir / "done.npy", allow_pickle=False).copy()
            skipped = json.loads((self.dir / "skipped.json").read_text())
            # rows not marked done were written after the last flush: redo them from scratch
            self.skipped = {i: (cid, why) for i, cid, why in skipped if self.done[i]}
            self.arr["labels"][~self.done] = -1
        else:
            self.done = np.zeros(n, dtype=bool)
            self.skipped = {}
            self.arr["labels"][:] = -1
        if jpeg:
            self._open_blob(resume)
        self._since_flush = 0
        if not resume:
            self.flush()
            _atomic_write_bytes(fmt_path, json.dumps(fmt).encode())  # last: marks a usable split

    def _open(self, name, shape, dtype, resume):
        path = self.dir / f"{name}.npy"
        if resume and path.exists():
            a = np.lib.format.open_memmap(path, mode="r+")
            if a.shape != shape or a.dtype != np.dtype(dtype):
                raise UserError(f"{path} has shape {a.shape} {a.dtype}, expected {shape} {dtype}; delete {self.dir}")
            return a
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    def _open_blob(self, resume):
        path = self.dir / "frames.jpg.bin"
        size = 0
        if resume and path.exists():
            # bytes past the last done row were appended after the last flush: drop them
            idx = self.arr["frames_index"][self.done]
            size = int((idx[..., 0] + idx[..., 1]).max()) if idx.size else 0
        self.blob = open(path, "r+b" if (resume and path.exists()) else "w+b")
        self.blob.truncate(size)
        self.blob.seek(size)

    def todo(self) -> list[int]:
        return np.flatnonzero(~self.done).tolist()

    def write(self, i: int, clip_id: str, label: int, frames: np.ndarray, audio: np.ndarray) -> None:
        if label < 0:
            raise ValueError(f"{clip_id}: label must be >= 0, got {label}")
        t = self._check(i, clip_id, frames, audio)
        if self.jpeg:
            idx = np.zeros((self.max_frames, 2), dtype=np.int64)
            for k in range(t):
                # cv2 encodes BGR: frames are RGB, so swap channels before encoding
                ok, buf = cv2.imencode(".jpg", frames[k][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                assert ok, "cv2.imencode failed"
                idx[k] = (self.blob.tell(), len(buf))
                self.blob.write(buf.tobytes())
            self.arr["frames_index"][i] = idx
        else:
            self.arr["frames"][i, :t] = frames
            self.arr["frames"][i, t:] = 0
        self.arr["audio"][i] = audio.astype(np.float16)
        self.arr["n_frames"][i] = t
        self.arr["ids"][i] = clip_id
        self.arr["labels"][i] = int(label)
        self.skipped.pop(i, None)  # a row skipped earlier may be rewritten
        self._mark_done(i)

    def skip(self, i: int, clip_id: str, reason: str) -> None:
        if not 0 <= i < self.n:
            raise IndexError(f"row {i} out of range [0, {self.n})")
        if len(clip_id) > self.id_len:
            raise ValueError(f"clip id longer than {self.id_len} characters: {clip_id!r}")
        self.arr["ids"][i] = clip_id
        self.arr["labels"][i] = -1
        self.arr["n_frames"][i] = 0
        self.skipped[i] = (clip_id, reason)
        self._mark_done(i)

    def _check(self, i, clip_id, frames, audio) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"row {i} out of range [0, {self.n})")
        if len(clip_id) > self.id_len:
            raise ValueError(f"clip id longer than {self.id_len} characters: {clip_id!r}")
        t = frames.shape[0]
        if frames.dtype != np.uint8 or frames.shape[1:] != (*self.frame_hw, 3) or not 1 <= t <= self.max_frames:
            raise ValueError(f"{clip_id}: frames must be uint8 [1..{self.max_frames}, {self.frame_hw[0]}, "
                             f"{self.frame_hw[1]}, 3], got {frames.dtype} {frames.shape}")
        if audio.shape != self.audio_shape:
            raise ValueError(f"{clip_id}: audio must be {self.audio_shape}, got {audio.shape}")
        if not np.isfinite(audio).all() or np.abs(audio).max() > 6e4:
            raise ValueError(f"{clip_id}: audio has non-finite values or exceeds the float16 range")
        return t

    def _mark_done(self, i):
        self.done[i] = True
        self._since_flush += 1
        if self._since_flush >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        # Order matters: data first, then the done mask that vouches for it.
        for a in self.arr.values():
            a.flush()
        if self.jpeg:
            self.blob.flush()
            os.fsync(self.blob.fileno())
        skipped = [[i, cid, why] for i, (cid, why) in sorted(self.skipped.items())]
        _atomic_write_bytes(self.dir / "skipped.json", json.dumps(skipped).encode())
        _atomic_save_npy(self.dir / "done.npy", self.done)
        self._since_flush = 0

    def close(self) -> dict:
        self.flush()
        if self.jpeg:
            self.blob.close()
        labels = np.asarray(self.arr["labels"])
        counts = Counter(labels[labels >= 0].tolist())
        files = sorted(p for p in self.dir.iterdir() if p.suffix in (".npy", ".bin"))
        summary = {
            "n": self.n,
            "written": int((labels >= 0).sum()),
            "not_done": int((~self.done).sum()),
            "counts": {int(k): int(v) for k, v in sorted(counts.items())},
            "skipped": [[cid, why] for _, (cid, why) in sorted(self.skipped.items())],
            "max_frames": self.max_frames, "frame_hw": list(self.frame_hw),
            "audio_shape": list(self.audio_shape), "jpeg": self.jpeg,
            "sha256": {p.name: _sha256(p) for p in files},
        }
        self.arr = {}  # drop the memmaps (closes the files)
        return summary


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """Atomic: <out_dir>/manifest.json appears complete or not at all. Write it last."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(Path(out_dir) / "manifest.json", json.dumps(manifest, indent=2).encode())


def read_manifest(out_dir) -> dict:
    path = Path(out_dir) / "manifest.json"
    if not path.exists():
        raise UserError(f"no manifest at {path}: the dataset is not prepared (or its preparation did not finish)")
    return json.loads(path.read_text())
