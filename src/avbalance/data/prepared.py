"""`prepared`: the loader of every dataset that data_prep/ wrote (format: data_prep/store.py).

Per batch the CPU only does one sorted, batched read from the memory-mapped arrays (uint8
frames, float16 spectrograms) in a background thread or DataLoader workers (started once, kept for
every pass: each batch's plan travels with its index). The batch goes to
the device as uint8/float16 (pinned, non_blocking) and the augmentation runs there, in batch:

  train: RandomResizedCrop(image_size, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip 0.5,
         per frame (the reference) or per clip (`crop_per: clip`), then ImageNet normalisation;
  eval:  Resize((image_size, image_size)) (the reference's test transform, no centre crop).

Frames fed per clip (`frames`) are picked from the clip's stored frames (`frame_selection`):
  even      centres of `frames` equal segments of the stored frames (default; the fix)
  random    one random frame in each segment, drawn per epoch (training only; eval uses even)
  reference the first stored frame(s), as the reference code's unused-index bug does
Audio: `audio_crop: N` keeps N spectrogram columns, a random window in training and the centred
one in evaluation (the reference also crops randomly at test time on VGGSound: a deviation).

All randomness comes from epoch_generator(seed, epoch, stream), so a resumed run reproduces.

`preload` (speed.preload): a split's arrays copied to the device once, on first use; its batches are
then gathers there, with no read, pinning or copy on the host (the same batches, bit for bit).
"""
from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError, DataNotPreparedError
from ..registry import DATASETS
from .base import Batch, epoch_generator, rank_batches, split_batch_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STREAM_ORDER, STREAM_PICK, STREAM_AUG = 0, 1, 2  # independent random streams of one epoch
PRELOAD = ("auto", "off", "eval", "all")
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- reading (CPU)

_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _decode_pool(threads: int) -> ThreadPoolExecutor | None:
    """A thread pool of `threads` for JPEG decoding, one per process (a forked DataLoader worker does
    not inherit a working pool); None for one thread."""
    if threads <= 1:
        return None
    key = (os.getpid(), threads)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix="avbalance-jpeg")
    return _POOLS[key]


class SplitArrays:
    """The arrays of one split. Memmaps open lazily, so DataLoader workers open their own
    instead of receiving pickled array data."""

    def __init__(self, split_dir: Path, decode_threads: int = 1):
        self.dir = Path(split_dir)
        self.format = json.loads((self.dir / "format.json").read_text())
        self.jpeg = self.format["jpeg"]
        self.decode_threads = decode_threads  # JPEG stores: threads decoding a batch (OpenCV lets go of the GIL)
        self._a = None

    def __getstate__(self):  # never pickle the memmaps
        return {**self.__dict__, "_a": None}

    @property
    def a(self) -> dict:
        if self._a is None:
            names = ["labels", "n_frames", "audio", "frames_index" if self.jpeg else "frames"]
            self._a = {k: np.load(self.dir / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in names}
            if self.jpeg:
                self._a["blob"] = np.memmap(self.dir / "frames.jpg.bin", dtype=np.uint8, mode="r")
        return self._a

    def read_frames(self, rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """rows [B] sorted, pos [B, T] stored-frame indices -> uint8 [B, T, H, W, 3]."""
        if not self.jpeg:
            return self.a["frames"][rows[:, None], pos]  # one gather over the memmap
        import cv2  # JPEG-stored frames only: the loader imports without OpenCV

        idx = self.a["frames_index"][rows[:, None], pos]  # [B, T, 2] (offset, length)
        blob = self.a["blob"]
        decode = lambda on: cv2.imdecode(blob[on[0]:on[0] + on[1]], cv2.IMREAD_COLOR)[..., ::-1]  # noqa: E731  BGR -> RGB
        pool = _decode_pool(self.decode_threads)
        out = list(pool.map(decode, idx.reshape(-1, 2)) if pool else map(decode, idx.reshape(-1, 2)))
        return np.stack(out).reshape(*pos.shape, *out[0].shape)


class ConcatArrays:
    """Several splits read as one (protocol=paper trains on train + val, as the reference trained
    on its whole train list): row r of the union is row r - offset of the split it falls in."""

    def __init__(self, parts: list[SplitArrays]):
        self.parts, self.format, self.jpeg = parts, parts[0].format, parts[0].jpeg
        shapes = {(tuple(p.format["audio_shape"]), tuple(p.format["frame_hw"])) for p in parts}
        if len(shapes) != 1:
            raise ConfigError(f"dataset.train_splits {[p.dir.name for p in parts]} were prepared with different shapes")
        self.offsets = np.cumsum([0] + [len(p.a["labels"]) for p in parts])
        self._a = None

    def __getstate__(self):  # DataLoader workers reopen the memmaps
        return {**self.__dict__, "_a": None}

    def _pieces(self, rows: np.ndarray):
        """rows [B] sorted -> (part, its rows, mask into rows) per part, in row order."""
        for p, lo, hi in zip(self.parts, self.offsets[:-1], self.offsets[1:]):
            sel = (rows >= lo) & (rows < hi)
            if sel.any():
                yield p, rows[sel] - lo, sel

    @property
    def a(self) -> dict:
        if self._a is None:
            cat = lambda k: np.concatenate([np.asarray(p.a[k]) for p in self.parts])  # noqa: E731  small arrays
            self._a = {"labels": cat("labels"), "n_frames": cat("n_frames"), "audio": _ConcatRows(self)}
        return self._a

    def read_frames(self, rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return np.concatenate([p.read_frames(r, pos[sel]) for p, r, sel in self._pieces(rows)])


class _ConcatRows:
    def __init__(self, arrays: ConcatArrays):
        self.arrays = arrays

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return np.concatenate([p.a["audio"][r] for p, r, _ in self.arrays._pieces(rows)])


class EpochReader(torch.utils.data.Dataset):
    """Item k = batch k of one epoch's plan, read from disk. The plan (which rows, which stored
    frames, where the audio window starts) is drawn up front in the main process, so workers
    hold no randomness of their own."""

    def __init__(self, arrays: SplitArrays, batches: list[np.ndarray], frame_pos: np.ndarray,
                 audio_start: np.ndarray, audio_len: int):
        self.arrays, self.batches = arrays, batches
        self.frame_pos, self.audio_start, self.audio_len = frame_pos, audio_start, audio_len

    def __len__(self):
        return len(self.batches)

    def rows(self, k: int) -> np.ndarray:
        """Batch k's rows, sorted: the memmap is read front to back (a preloaded split gathers them alike)."""
        return np.sort(self.batches[k])

    def plan(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batch k's rows, their frames [B, T], audio starts [B]."""
        rows = self.rows(k)
        return rows, self.frame_pos[rows], self.audio_start[rows]

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return read_batch(self.arrays, *self.plan(k), self.audio_len)


def read_batch(arrays, rows: np.ndarray, frame_pos: np.ndarray, audio_start: np.ndarray, audio_len: int) -> dict:
    """One batch from disk: sorted `rows`, their stored frames to feed [B, T], audio window starts [B]."""
    a = arrays.a
    frames = arrays.read_frames(rows, frame_pos)                               # [B, T, H, W, 3] uint8
    audio = a["audio"][rows]                                                   # [B, F, Tstored] f16
    cols = audio_start[:, None] + np.arange(audio_len)                         # [B, c]
    audio = np.take_along_axis(audio, cols[:, None, :], axis=2)                # [B, F, c]
    return {"audio": torch.from_numpy(audio), "frames": torch.from_numpy(frames),
            "label": torch.from_numpy(a["labels"][rows].astype(np.int64)),
            "index": torch.from_numpy(rows.astype(np.int64))}


class _PlannedReads(torch.utils.data.Dataset):
    """Item (split, rows, frames, audio starts) -> that batch, read from the split's arrays. The
    persistent workers hold this from their start; each pass's plan travels with its indices."""

    def __init__(self, arrays: dict, audio_len: int):
        self.arrays, self.audio_len = arrays, audio_len

    def __getitem__(self, item) -> dict[str, torch.Tensor]:
        split, rows, frame_pos, audio_start = item
        return read_batch(self.arrays[split], rows, frame_pos, audio_start, self.audio_len)


class _PlanSampler(torch.utils.data.Sampler):
    """The items of the pass in progress, drawn in the main process: (split, reader) is set before each pass."""

    def __init__(self):
        self.split, self.reader = None, None

    def __iter__(self):
        return ((self.split, *self.reader.plan(k)) for k in range(len(self.reader)))

    def __len__(self):
        return len(self.reader)


def _pin(batch: dict) -> dict:
    return {k: v.pin_memory() for k, v in batch.items()}


def _thread_prefetch(reader: EpochReader, pin: bool, depth: int = 3):
    """Read batches in a background thread, `depth` ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for k in range(len(reader)):
                b = reader[k]
                item = _pin(b) if pin else b
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
        except BaseException as e:  # surface reader errors in the consumer
            q.put(e)
        q.put(None)

    t = threading.Thread(target=work, daemon=True, name="avbalance-prefetch")
    t.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the consumer stopped early (break, exception): let the thread end


# ----------------------------------------------------------------------------- preloaded splits (device)

def _stored_frames(arrays) -> int:
    """Frames a split's clips hold at most (the store's padding beyond them is never read)."""
    return max(1, int(np.max(arrays.a["n_frames"], initial=1)))


def arrays_name(arrays) -> str:
    """A split's name, or the names of a union's parts joined by +."""
    return "+".join(p.dir.name for p in getattr(arrays, "parts", [arrays]))


def split_nbytes(arrays, frames: int | None = None) -> int:
    """Device bytes of a preloaded split: `frames` fed frames per clip (None: every stored frame,
    decoded), the spectrograms and the labels."""
    (H, W), (F_, T_) = arrays.format["frame_hw"], arrays.format["audio_shape"]
    t = _stored_frames(arrays) if frames is None else frames
    return len(arrays.a["labels"]) * (t * H * W * 3 + F_ * T_ * 2 + 8)


class DeviceSplit:
    """A split's arrays copied to `device` once (speed.preload): batch k of an epoch's plan is then
    a gather on the device. Gives what EpochReader gives for the same plan (rows sorted in a batch).
    `pos` [N, T]: the frames every plan feeds (a fixed frame policy: only those are copied), or None:
    every stored frame (frame_selection=random draws others each epoch)."""

    def __init__(self, arrays, device: torch.device, pos: np.ndarray | None = None, chunk: int = 256):
        a = arrays.a
        labels = np.asarray(a["labels"])
        n_stored = np.asarray(a["n_frames"]).astype(np.int64)
        n = len(labels)
        if pos is None:  # every stored frame, the last one repeated into the padding (a JPEG store has no empty slot to decode)
            t = _stored_frames(arrays)
            pos = np.minimum(np.arange(t)[None, :], np.maximum(n_stored[:, None], 1) - 1)
            self.pos = None
        else:
            self.pos = pos = np.asarray(pos)
        (H, W), (F_, T_) = arrays.format["frame_hw"], arrays.format["audio_shape"]
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        self.audio = torch.zeros((n, F_, T_), dtype=torch.float16, device=device)
        self.frames = torch.zeros((n, pos.shape[1], H, W, 3), dtype=torch.uint8, device=device)
        from tqdm import tqdm  # here, not at the top: scripts/bench_train.py imports this module without tqdm
        chunks = tqdm(range(0, n, chunk), desc=f"preload {arrays_name(arrays)}", leave=False, disable=None,
                      file=sys.stderr)  # None: quiet when not a terminal
        for lo in chunks:  # in chunks: the host never holds the whole split
            rows = np.arange(lo, min(n, lo + chunk))
            rows = rows[labels[rows] >= 0]  # skipped rows are never read (their slots stay zero)
            if not len(rows):
                continue
            idx = torch.from_numpy(rows).to(device)
            self.audio[idx] = torch.from_numpy(np.ascontiguousarray(a["audio"][rows])).to(device)
            self.frames[idx] = torch.from_numpy(np.ascontiguousarray(arrays.read_frames(rows, pos[rows]))).to(device)

    def batches(self, reader: "EpochReader", device: torch.device):
        """The batches of `reader`'s plan, on the device."""
        rows = [reader.rows(k) for k in range(len(reader))]
        if not rows:
            return
        flat = _to_device(torch.from_numpy(np.concatenate(rows).astype(np.int64)), device)  # the epoch's rows, one copy
        if self.pos is not None and not np.array_equal(self.pos, reader.frame_pos):
            raise RuntimeError("a preloaded split with fixed frames was asked for other frames")  # a bug, not input
        pos = None if self.pos is not None else _to_device(
            torch.from_numpy(np.ascontiguousarray(reader.frame_pos, dtype=np.int64)), device)            # [N, T]
        start = _to_device(torch.from_numpy(np.ascontiguousarray(reader.audio_start, dtype=np.int64)), device)  # [N]
        cols = torch.arange(reader.audio_len, device=device)
        crop = reader.audio_len != self.audio.shape[2]
        s = 0
        for r in rows:
            idx = flat[s:s + len(r)]                                           # [B] device view: no copy
            s += len(r)
            audio = self.audio[idx]                                            # [B, F, Tst]
            if crop:
                win = (start[idx, None] + cols).unsqueeze(1).expand(-1, audio.shape[1], -1)  # [B, F, c]
                audio = audio.gather(2, win)
            frames = self.frames[idx] if pos is None else self.frames[idx[:, None], pos[idx]]  # [B, T, H, W, 3]
            yield {"audio": audio, "frames": frames, "label": self.labels[idx], "index": idx}


# ----------------------------------------------------------------------------- choices (CPU, seeded)

def pick_frames(n_stored: np.ndarray, t: int, policy: str, g: torch.Generator | None = None) -> np.ndarray:
    """Stored-frame indices to feed, per clip: n_stored [N] (>= 1) -> [N, t] int64."""
    n = torch.from_numpy(n_stored.astype(np.int64)).clamp(min=1)[:, None]  # [N, 1]
    if policy == "reference":  # the first t stored frames (the reference's CREMA-D/VGGSound reading)
        return torch.minimum(torch.arange(t)[None, :], n - 1).numpy()
    if policy == "segments":   # the reference AVDataset (KS, AVE): seg = n // t, frames 0, seg, 2 seg
        return torch.minimum(torch.arange(t)[None, :] * (n // t).clamp(min=1), n - 1).numpy()
    if policy == "even":
        u = torch.full((len(n), t), 0.5, dtype=torch.float64)                # segment centres
    elif policy == "random":
        u = torch.rand(len(n), t, generator=g, dtype=torch.float64)          # anywhere in the segment
    else:
        raise ConfigError(f"frame_selection must be even, random, reference or segments, got '{policy}'")
    pos = ((torch.arange(t)[None, :] + u) * n / t).floor().long()            # [N, t]
    return torch.minimum(pos, n - 1).numpy()


def _central_crop_size(H: int, W: int, ratio) -> tuple[int, int]:
    if W / H < ratio[0]:
        return W, int(round(W / ratio[0]))
    if W / H > ratio[1]:
        return int(round(H * ratio[1])), H
    return W, H


def random_resized_crop_boxes(n: int, H: int, W: int, g: torch.Generator, scale=(0.08, 1.0),
                              ratio=(3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for n crops at once -> [n, 4] (x1, y1, x2, y2)
    in pixels: up to 10 tries of (area, log-uniform ratio), else the central crop clamped to ratio."""
    area = torch.empty(n, attempts).uniform_(scale[0], scale[1], generator=g) * (H * W)
    log_r = torch.log(torch.tensor(ratio))
    aspect = torch.exp(torch.empty(n, attempts).uniform_(log_r[0].item(), log_r[1].item(), generator=g))
    w, h = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()  # [n, attempts]
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = ok.int().argmax(dim=1, keepdim=True)                         # first valid try
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    u = torch.rand(n, 2, generator=g)
    y, x = (u[:, 0] * (H - h + 1)).floor(), (u[:, 1] * (W - w + 1)).floor()
    # fallback (no valid try): the whole image clamped to the ratio range, centred
    fw, fh = _central_crop_size(H, W, ratio)
    bad = ~ok.any(dim=1)
    w, h = torch.where(bad, float(fw), w), torch.where(bad, float(fh), h)
    y, x = torch.where(bad, float((H - fh) // 2), y), torch.where(bad, float((W - fw) // 2), x)
    return torch.stack([x, y, x + w, y + h], dim=1)


# ----------------------------------------------------------------------------- transforms (device, batched)

_NORM: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """[K, 3, S, S] in 0..255 -> ImageNet-normalised float, (x / 255 - mean) / std in one pass.
    The constants go to the device once (a tensor built from a list per batch is a blocking copy)."""
    if x.device not in _NORM:
        std = torch.tensor(IMAGENET_STD)
        _NORM[x.device] = ((1 / (255 * std)).view(1, 3, 1, 1).to(x.device),
                           (-torch.tensor(IMAGENET_MEAN) / std).view(1, 3, 1, 1).to(x.device))
    scale, shift = _NORM[x.device]
    return torch.addcmul(shift, x.float(), scale)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without blocking the host: from pinned memory, non_blocking."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def _to_clip_layout(x: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """[B*T, 3, S, S] -> [B, 3, T, S, S], a view of the contiguous frames-first tensor: the
    encoder's transpose back to [B, T, 3, S, S] costs no copy."""
    return x.view(B, T, *x.shape[1:]).transpose(1, 2)


def _nchw(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> contiguous uint8 [B*T, 3, H, W] (cheap: uint8, one copy)."""
    B, T, H, W, _ = frames.shape
    return frames.reshape(B * T, H, W, 3).permute(0, 3, 1, 2).contiguous()


def train_frames(frames: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B, T, H, W, 3], boxes [B*T, 4] (x1, y1, x2, y2) pixels and bool flips [B*T], all on the device
    -> RandomResizedCrop + flip + normalise -> [B, 3, T, size, size] float32."""
    B, T, H, W, _ = frames.shape
    x = _nchw(frames)                                                        # [B*T, 3, H, W] uint8
    flips = flips.view(-1, 1, 1, 1)
    # flip(crop(img, box)) == crop(flip(img), mirrored box): flip the small uint8 input rather
    # than the float output, and mirror the box; torch.where keeps it free of host syncs
    x = torch.where(flips, x.flip(-1), x).float()
    boxes = boxes.to(x)
    x1 = torch.where(flips.view(-1), W - boxes[:, 2], boxes[:, 0])
    x2 = torch.where(flips.view(-1), W - boxes[:, 0], boxes[:, 2])
    rois = torch.stack([torch.arange(B * T, device=x.device, dtype=x.dtype), x1, boxes[:, 1], x2, boxes[:, 3]], dim=1)
    # roi_align = crop + bilinear resize of every box in one call; with sampling_ratio -1 it
    # averages ceil(box/size) samples per output pixel, i.e. antialiasing when shrinking
    x = roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return _to_clip_layout(_normalise(x), B, T)


def eval_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> Resize((size, size)) + normalise -> [B, 3, T, size, size] float32.
    The resize runs on uint8 and rounds to uint8, as the reference's PIL Resize before ToTensor."""
    B, T, H, W, _ = frames.shape
    x = _nchw(frames)
    if (H, W) != (size, size):
        x = TF.resize(x, [size, size], antialias=True)
    return _to_clip_layout(_normalise(x), B, T)


# ----------------------------------------------------------------------------- the DataModule

class PreparedData:
    def __init__(self, cfg, *, seed: int, batch_size: int, num_workers: int = 0, device=None, rank: int = 0, world: int = 1,
                 eval_batch_size: int | None = None, preload: str = "off"):
        self.name, self.root = cfg.name, Path(cfg.root)
        self.rank, self.world = rank, world
        if not (self.root / "manifest.json").exists():
            raise DataNotPreparedError(f"dataset '{self.name}' is not prepared at {self.root}: run `{cfg.prep_command}`")
        manifest = json.loads((self.root / "manifest.json").read_text())
        self.seed, self.batch_size, self.num_workers = seed, batch_size, num_workers
        self.eval_batch_size = eval_batch_size or batch_size
        self.device = torch.device(device or "cpu")
        self.frames, self.image_size = int(cfg.frames), int(cfg.image_size)
        self.frame_selection = cfg.get("frame_selection", "even")
        self.crop_per = cfg.get("crop_per", "frame")
        if self.crop_per not in ("frame", "clip"):
            raise ConfigError(f"crop_per must be frame or clip, got '{self.crop_per}'")
        pick_frames(np.ones(1), 1, self.frame_selection, torch.Generator())  # validates the policy early

        # JPEG stores read in this process (num_workers=0: the prefetch thread, and preloading) decode
        # each batch on several threads; worker processes decode on one each (they are the parallelism)
        threads = min(8, os.cpu_count() or 1) if num_workers == 0 else 1
        self.splits = {d.name: SplitArrays(d, threads) for d in sorted(self.root.iterdir()) if (d / "format.json").exists()}
        order = {"train": 0, "val": 1, "test": 2}
        self.split_names = sorted(self.splits, key=lambda s: (order.get(s, 3), s))
        if "train" not in self.splits:
            raise DataNotPreparedError(f"dataset '{self.name}' at {self.root} has no train split: run `{cfg.prep_command}`")
        train_splits = list(cfg.get("train_splits") or ["train"])
        missing = [t for t in train_splits if t not in self.splits]
        if missing:
            raise ConfigError(f"dataset '{self.name}': dataset.train_splits names {missing}, not prepared at {self.root} "
                              f"(splits: {', '.join(self.split_names)})")
        # the arrays a run reads per split; "train" may be a union (protocol=paper: train + val)
        self.arrays = {**self.splits, "train": ConcatArrays([self.splits[t] for t in train_splits])
                       if len(train_splits) > 1 else self.splits[train_splits[0]]}
        self.selection_split = cfg.selection_split
        if self.selection_split not in self.splits:
            raise ConfigError(f"dataset '{self.name}': selection_split '{self.selection_split}' is not prepared at "
                              f"{self.root} (splits: {', '.join(self.split_names)}); pick one of those")
        if cfg.num_classes is None and not manifest.get("class_names"):
            raise ConfigError(f"dataset '{self.name}': {self.root}/manifest.json lists no class_names; set dataset.num_classes")
        self.num_classes = len(manifest["class_names"]) if cfg.num_classes is None else int(cfg.num_classes)
        self.class_names = list(manifest.get("class_names") or [str(i) for i in range(self.num_classes)])
        if len(self.class_names) != self.num_classes:
            raise ConfigError(f"dataset '{self.name}': num_classes is {self.num_classes} but {self.root} "
                              f"was prepared with {len(self.class_names)} classes")
        # rows with label -1 (skipped or never written) are not part of the dataset
        self.rows = {s: np.flatnonzero(np.asarray(a.a["labels"]) >= 0) for s, a in self.arrays.items()}
        for s in dict.fromkeys(["train", self.selection_split, "test"]):   # the splits a run reads
            if s in self.rows and len(self.rows[s]) == 0:
                raise DataNotPreparedError(
                    f"dataset '{self.name}': split '{s}' at {self.root} has no usable clip (all "
                    f"{len(self.arrays[s].a['labels'])} rows skipped or not written); expected at least one: "
                    f"prepare it again with `{cfg.prep_command}` and --overwrite (its error names the cause)")
        self.audio_len = self._check_audio(cfg)
        if str(preload) not in PRELOAD:
            raise ConfigError(f"speed.preload={preload!r}; expected one of {list(PRELOAD)}")
        self.preload, self._preloaded = str(preload), {}
        self._loaders: list[torch.utils.data.DataLoader] = []  # idle persistent worker loaders (num_workers > 0)

    def _preloaded_split(self, split: str, device: torch.device) -> DeviceSplit | None:
        """The split's arrays on `device` if speed.preload takes it (copied on first use), else None.
        off: never; eval: every split but the training one; all: every split; auto: on CUDA, each
        split that fits in a quarter of the device's free memory. The first pass over train (the first
        epoch, or an evaluation of train rows) decides the run's evaluation splits too (the selection split
        and test): a preload that does not fit is refused before the first epoch, not after it."""
        splits = [split] + ([s for s in (self.selection_split, "test") if s in self.splits] if split == "train" else [])
        for s in dict.fromkeys(splits):
            key = (s, str(device))
            if key not in self._preloaded:
                take = {"off": False, "eval": s != "train", "all": True, "auto": device.type == "cuda"}[self.preload]
                self._preloaded[key] = self._copy(s, device) if take else None
        return self._preloaded[(split, str(device))]

    def _copy(self, split: str, device: torch.device) -> DeviceSplit | None:
        """The split copied to `device`, if it fits (on CUDA: in a quarter of the free memory); an
        explicit preload that does not fit is refused, auto's is left on the host (None)."""
        # a fixed frame policy feeds the same frames every epoch, in training and evaluation alike:
        # only those are copied (CREMA-D: 1 of up to 4 stored); frame_selection=random needs them all
        arrays = self.arrays[split]
        pos = None if self.frame_selection == "random" else pick_frames(np.asarray(arrays.a["n_frames"]),
                                                                        self.frames, self.frame_selection)
        need = split_nbytes(arrays, None if pos is None else self.frames)
        if device.type == "cuda":  # free: the driver's, and what torch's allocator holds without using it
            free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            if need > free // 4:
                if self.preload != "auto":
                    raise ConfigError(f"speed.preload={self.preload}: split '{split}' of '{self.name}' needs "
                                      f"{need / 2**20:,.1f} MiB on {device}, more than a quarter of its "
                                      f"{free / 2**20:,.1f} MiB free; use speed.preload="
                                      f"{'eval or off' if self.preload == 'all' and split == 'train' else 'off'}")
                return None
        t = time.perf_counter()
        copy = DeviceSplit(arrays, device, pos)
        log.info("preloaded %s/%s to %s: %.1f MiB in %.1f s", self.name, split, device, need / 2**20, time.perf_counter() - t)
        return copy

    def _check_audio(self, cfg) -> int:
        F_, T_ = self.splits["train"].format["audio_shape"]
        crop = cfg.get("audio_crop")
        if crop is not None and not 0 < int(crop) <= T_:
            raise ConfigError(f"dataset '{self.name}': audio_crop {crop} is outside 1..{T_} (stored columns)")
        c = T_ if crop is None else int(crop)
        want = cfg.get("spec_shape")
        if want is not None and [F_, c] != list(want):
            raise ConfigError(f"dataset '{self.name}': spec_shape {list(want)} but the prepared audio gives "
                              f"[{F_}, {c}] at {self.root}; fix spec_shape or audio_crop")
        return c

    def num_rows(self, split: str) -> int:
        return len(self.rows[split])

    def num_batches(self, split: str) -> int:
        return -(-self.num_rows(split) // split_batch_size(self, split))

    def _reader(self, split: str, batches: list[np.ndarray], frame_policy: str, audio_random: bool, g) -> EpochReader:
        a = self.arrays[split]
        n_stored = np.asarray(a.a["n_frames"])
        frame_pos = pick_frames(n_stored, self.frames, frame_policy, g)        # [N, frames], by row
        spare = a.format["audio_shape"][1] - self.audio_len                     # free columns to place the crop in
        if audio_random:
            start = torch.randint(0, spare + 1, (len(n_stored),), generator=g).numpy()
        else:
            start = np.full(len(n_stored), spare // 2)
        return EpochReader(a, batches, frame_pos, start, self.audio_len)

    def _batches(self, split: str, reader: EpochReader, device: torch.device):
        """The plan's batches as dicts of device tensors: gathered from the preloaded split, or read
        on the host (a background thread or DataLoader workers) and copied over."""
        cached = self._preloaded_split(split, device)
        if cached is not None:
            yield from cached.batches(reader, device)
            return
        pin = device.type == "cuda"
        host = _thread_prefetch(reader, pin) if self.num_workers == 0 else self._worker_batches(split, reader, pin)
        for b in host:
            yield {k: v.to(device, non_blocking=True) for k, v in b.items()}

    def _worker_batches(self, split: str, reader: EpochReader, pin: bool):
        """The plan's batches read by `num_workers` worker processes that start once, on first use, and
        then serve every pass of every split (a new DataLoader per pass forks them all again, at a cost that
        grows with the workers and the process's memory; scripts/bench_data.py times the start of a pass
        both ways). A loader is lent to one pass at a time: a pass started inside another (a nested
        evaluation) gets a second one."""
        idle = [dl for dl in self._loaders if dl.pin_memory == pin]
        if idle:
            loader = idle[0]
            self._loaders.remove(loader)
        else:
            loader = torch.utils.data.DataLoader(_PlannedReads(self.arrays, self.audio_len), sampler=_PlanSampler(),
                                                 batch_size=None, num_workers=self.num_workers, pin_memory=pin,
                                                 prefetch_factor=4, persistent_workers=True)
        loader.sampler.split, loader.sampler.reader = split, reader
        try:
            yield from loader
        except GeneratorExit:  # the consumer stopped early: the next pass's iter() discards what is in flight
            self._loaders.append(loader)
            raise
        # a reader error leaves the loader out: its workers end with it, a new one serves the next pass
        self._loaders.append(loader)

    def _audio(self, a: torch.Tensor) -> torch.Tensor:
        return a.float().unsqueeze(1)                                           # [B, F, c] f16 -> [B, 1, F, c]

    def train_batches(self, epoch: int, device=None, rows=None):
        device = torch.device(device or self.device)
        rows = self.rows["train"] if rows is None else self.rows["train"][np.asarray(rows)]
        order = rows[torch.randperm(len(rows), generator=epoch_generator(self.seed, epoch, STREAM_ORDER)).numpy()]
        reader = self._reader("train", rank_batches(order, self.batch_size, self.rank, self.world), self.frame_selection,
                              True, epoch_generator(self.seed, epoch, STREAM_PICK))
        g = epoch_generator(self.seed, epoch, STREAM_AUG + 1000 * self.rank)  # DDP: each process its own crops
        for b in self._batches("train", reader, device):
            B, T, H, W, _ = b["frames"].shape
            k = B * T if self.crop_per == "frame" else B                        # one crop per frame or per clip
            boxes = random_resized_crop_boxes(k, H, W, g)
            flips = torch.rand(k, generator=g) < 0.5
            if self.crop_per == "clip":                                         # [B, 4] -> [B*T, 4]
                boxes, flips = boxes.repeat_interleave(T, 0), flips.repeat_interleave(T, 0)
            yield Batch(self._audio(b["audio"]),
                        train_frames(b["frames"], _to_device(boxes, device), _to_device(flips, device), self.image_size),
                        b["label"], b["index"])

    def eval_batches(self, split: str, device=None, rows=None):
        device = torch.device(device or self.device)
        if split not in self.splits:
            raise ConfigError(f"dataset '{self.name}' has no split '{split}' at {self.root} (splits: {', '.join(self.split_names)})")
        policy = "even" if self.frame_selection == "random" else self.frame_selection  # eval never draws frames
        order = self.rows[split] if rows is None else self.rows[split][np.asarray(rows)]
        reader = self._reader(split, rank_batches(order, self.eval_batch_size), policy, False, None)
        for b in self._batches(split, reader, device):
            yield Batch(self._audio(b["audio"]), eval_frames(b["frames"], self.image_size), b["label"], b["index"])


@DATASETS.register("prepared")
def build(cfg_dataset, **kw) -> PreparedData:
    return PreparedData(cfg_dataset, **kw)
