"""Machinery shared by every dataset module: split lists, decoding, spectrogram recipes, and the
parallel runner that feeds a SplitWriter (store.py) and resumes where a previous run stopped.

A dataset module only turns its raw layout into {split: [Clip, ...]} plus class names, then calls
`prepare(...)`. Everything that touches media lives here, so every dataset decodes alike.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import shlex
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from data_prep.store import SplitWriter, UserError, write_manifest

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".flv", ".m4v")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SOUNDFILE_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


class ClipError(Exception):
    """One clip cannot be prepared; it is skipped and listed in the manifest with this reason."""


# ----------------------------------------------------------------------------- split lists

def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines. utf-8-sig drops a BOM if present; splitlines handles CRLF."""
    return [ln.strip() for ln in Path(path).read_text(encoding="utf-8-sig").splitlines() if ln.strip()]


def require(path: Path, what: str, hint: str = "") -> Path:
    """The one-line error for a missing raw folder or list file: what was expected, where."""
    if not Path(path).exists():
        raise UserError(f"{what} not found: expected {path}" + (f" ({hint})" if hint else ""))
    return Path(path)


def index_files(root: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """stem -> path for every file with one of `exts` below root (flat or one folder per class)."""
    found: dict[str, Path] = {}
    for dirpath, _, files in os.walk(root, followlinks=True):
        for f in sorted(files):
            stem, ext = os.path.splitext(f)
            if ext.lower() in exts:
                found.setdefault(stem, Path(dirpath) / f)
    return found


def holdout_names(names, fraction: float, seed: int) -> list[str]:
    """A seeded random `fraction` of `names` (at least one). Sorting first makes the choice depend
    only on the set of names and the seed, not on the order they were listed in."""
    names = sorted(set(names))
    k = max(1, round(fraction * len(names))) if fraction > 0 else 0
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(names, size=k, replace=False).tolist())


def stratified_holdout(labels: list[int], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of round(fraction * N) rows, shared out over the classes in proportion to
    their size (largest remainder), so val keeps the class balance of train even when classes are
    small. Depends only on the label sequence and the seed."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    quota = fraction * sizes
    take = np.floor(quota).astype(int)
    rest = round(fraction * len(labels)) - take.sum()
    tiebreak = rng.random(len(classes))          # seeded order among equal remainders
    for c in np.lexsort((tiebreak, -(quota - take)))[:max(0, rest)]:
        take[c] += 1
    mask = np.zeros(len(labels), dtype=bool)
    for c, k in zip(classes, take, strict=True):
        rows = np.flatnonzero(labels == c)
        mask[rng.permutation(rows)[:k]] = True
    return mask


def hold_out_val(rows: list, labels: list[int], fraction: float, seed: int) -> tuple[list, list]:
    """(train, val): a seeded, class-stratified `fraction` of rows moves to val, order kept."""
    held = stratified_holdout(labels, fraction, seed)
    return [r for r, h in zip(rows, held, strict=True) if not h], [r for r, h in zip(rows, held, strict=True) if h]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- clips

@dataclass(frozen=True)
class Clip:
    clip_id: str
    label: int
    visual: str | None                 # video file, folder of images, or .npy frames [T,H,W,3]
    audio: str | None = None           # wav/flac/mp3 or .npy features [F,T]; None = the video's own track
    audio_fallback: str | None = None  # used when the video has no audio track (--audio-dir)
    problem: str | None = None         # known before decoding (missing file...): skipped with this reason


@dataclass(frozen=True)
class FrameSpec:
    max_frames: int
    hw: tuple[int, int]    # stored (H, W)
    at: str = "first"      # "first": first frame of each second (reference CREMA-D / VGGSound extractor)
                           # "middle": frame round((s + 0.5) * fps) of second s (reference KS / AVE)


# ----------------------------------------------------------------------------- visual decoding

def _resize_rgb(bgr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    # Aspect is not kept: the reference test transform is Resize((224, 224)) on the whole frame.
    out = cv2.resize(bgr, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def wanted_frame_indices(fps: float, spec: FrameSpec) -> list[int]:
    if spec.at == "first":
        step = int(fps)  # the reference casts CAP_PROP_FPS to int: frames 0, fps, 2*fps, ...
        return [s * step for s in range(spec.max_frames)]
    if spec.at == "middle":
        return sorted({round((s + 0.5) * fps) for s in range(spec.max_frames)})
    raise ValueError(f"unknown frame position {spec.at!r} (first | middle)")


def read_video_frames(path: str, spec: FrameSpec) -> np.ndarray:
    """uint8 [t<=max_frames, H, W, 3] RGB at 1 fps. Frames are grabbed in order and only the wanted
    ones are converted (retrieve), which is cheaper than seeking in flv/mp4 for short clips."""
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])  # the pool is the parallelism
    try:
        if not cap.isOpened():
            raise ClipError(f"cannot open video {path}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not fps or not math.isfinite(fps) or fps < 1:
            raise ClipError(f"video {path} reports no frame rate ({fps})")
        wanted = wanted_frame_indices(fps, spec)
        frames, k, idx = [], 0, 0
        for idx in range(wanted[-1] + 1):
            if not cap.grab():
                break
            if idx == wanted[k]:
                ok, bgr = cap.retrieve()
                if ok:
                    frames.append(_resize_rgb(bgr, spec.hw))
                k += 1
    finally:
        cap.release()
    if not frames and idx > 0 and spec.at != "first":
        # shorter than half a second: no "middle" frame exists, keep the first one instead
        return read_video_frames(path, FrameSpec(1, spec.hw, at="first"))
    if not frames:
        raise ClipError(f"no frame could be decoded from {path}")
    return np.stack(frames)


def even_subset(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them if n <= k)."""
    if n <= k:
        return list(range(n))
    return np.linspace(0, n - 1, k).round().astype(int).tolist()


def read_image_folder(path: str, spec: FrameSpec) -> np.ndarray:
    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ClipError(f"no images ({'/'.join(IMAGE_EXTS)}) in folder {path}")
    frames = []
    for i in even_subset(len(files), spec.max_frames):
        bgr = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ClipError(f"cannot read image {files[i]}")
        frames.append(_resize_rgb(bgr, spec.hw))
    return np.stack(frames)


def read_frame_array(path: str, spec: FrameSpec) -> np.ndarray:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or arr.shape[0] < 1:
        raise ClipError(f"{path}: expected uint8 frames [T, H, W, 3], got {arr.dtype} {list(arr.shape)}")
    # the array is RGB already; _resize_rgb converts BGR->RGB, so hand it BGR
    return np.stack([_resize_rgb(np.ascontiguousarray(arr[i][..., ::-1]), spec.hw)
                     for i in even_subset(arr.shape[0], spec.max_frames)])


def read_visual(path: str, spec: FrameSpec) -> np.ndarray:
    if not os.path.exists(path):
        raise ClipError(f"visual input not found: {path}")
    if os.path.isdir(path):
        return read_image_folder(path, spec)
    if path.lower().endswith(".npy"):
        return read_frame_array(path, spec)
    return read_video_frames(path, spec)


# ----------------------------------------------------------------------------- audio decoding

class NoAudioTrack(ClipError):
    pass


def _decode_soundfile(path: str) -> tuple[np.ndarray, int]:
    import soundfile as sf
    # the same call librosa.load makes: float32, channels last, then transposed to [C, n]
    y, sr = sf.read(path, dtype="float32", always_2d=True)
    return y.T, sr


def _decode_container(path: str) -> tuple[np.ndarray, int]:
    import av
    with av.open(path) as box:
        if not box.streams.audio:
            raise NoAudioTrack(f"no audio track in {path}")
        stream = box.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")  # planar float32, native layout and rate
        chunks = [f.to_ndarray() for frame in box.decode(stream) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
        sr = stream.codec_context.sample_rate
    if not chunks:
        raise ClipError(f"audio track of {path} decodes to no samples")
    return np.concatenate(chunks, axis=1), sr


def load_wave(path: str, sr: int | None) -> np.ndarray:
    """Mono float32 at `sr` (None = native rate), as librosa.load(path, sr=sr, mono=True) does:
    channel mean, then soxr_hq resampling. Audio files go through soundfile (like librosa), video
    containers through PyAV."""
    if path.lower().endswith(SOUNDFILE_EXTS):
        try:
            y, native = _decode_soundfile(path)
        except Exception:   # e.g. an mp3 this libsndfile cannot read: let ffmpeg try
            y, native = _decode_container(path)
    else:
        y, native = _decode_container(path)
    y = y.mean(axis=0) if y.shape[0] > 1 else y[0]
    if y.size == 0:
        raise ClipError(f"{path} holds no audio samples")
    if sr is not None and sr != native:
        import librosa
        y = librosa.resample(y, orig_sr=native, target_sr=sr, res_type="soxr_hq")
    return np.ascontiguousarray(y, dtype=np.float32)


def tile_to(y: np.ndarray, n: int) -> np.ndarray:
    """Repeat the clip until it fills n samples, then cut (reference: np.tile(x, k)[:n]; the KS/AVE
    script used a fixed k=10, which leaves clips under n/10 samples short; we always fill)."""
    return np.tile(y, -(-n // len(y)))[:n]


# ----------------------------------------------------------------------------- spectrogram recipes
# A recipe turns a mono waveform (loaded at `load_sr`, then brought to `sr`) into a float32 [F, T].

@dataclass(frozen=True)
class StftRecipe:
    """log(|librosa.stft| + 1e-7): CREMA-D (22.05 kHz, 3 s, 512/353 -> 257x188) and VGGSound
    (16 kHz, 10 s, 256/128 -> 129x1251). librosa >= 0.10 pads with zeros by default; the
    reference ran with the older default (reflect), so it is set explicitly."""
    name: str
    sr: int
    num_samples: int
    n_fft: int
    hop: int
    load_sr: int | None = None   # rate of an intermediate wav in the reference's chain (None: straight to sr)
    kind: str = "librosa_stft"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_fft // 2 + 1, 1 + self.num_samples // self.hop)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        import librosa
        y = np.clip(tile_to(y, self.num_samples), -1.0, 1.0)
        spec = librosa.stft(y, n_fft=self.n_fft, hop_length=self.hop, window="hann", center=True, pad_mode="reflect")
        return np.log(np.abs(spec) + 1e-7).astype(np.float32)


@dataclass(frozen=True)
class ScipyRecipe:
    """The deleted KS/AVE script: scipy.signal.spectrogram (PSD, Tukey(0.25) window, hop 159) of 160000
    samples at 22.05 kHz, log(S + 1e-7), standardised per clip -> 257x1004. Its audio was an ffmpeg
    16 kHz mono wav loaded by librosa at 22.05 kHz, hence load_sr=16000 then sr=22050."""
    name: str = "spectrogram"
    sr: int = 22050
    num_samples: int = 160000
    nperseg: int = 512
    noverlap: int = 353
    load_sr: int | None = 16000
    kind: str = "scipy_spectrogram"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.nperseg // 2 + 1, (self.num_samples - self.noverlap) // (self.nperseg - self.noverlap))

    def __call__(self, y: np.ndarray) -> np.ndarray:
        from scipy import signal
        y = np.clip(tile_to(y, self.num_samples), -1.0, 1.0)
        _, _, spec = signal.spectrogram(y, self.sr, nperseg=self.nperseg, noverlap=self.noverlap)
        spec = np.log(spec + 1e-7)
        return ((spec - spec.mean()) / (spec.std() + 1e-9)).astype(np.float32)


@dataclass(frozen=True)
class FbankRecipe:
    """The reference's process_audio.py (AST recipe): kaldi fbank, 128 mel bins, 10 ms shift, padded
    or cut to 1024 frames, (x + 4.503877) / (5.141276 * 2). Stored freq-first [128, 1024] so the
    model input is [1, F, T] like the other recipes. The reference read whatever rate its wavs had;
    we fix 16 kHz, the rate the AST statistics were computed at."""
    name: str = "fbank"
    sr: int = 16000
    num_frames: int = 1024
    mel_bins: int = 128
    norm_mean: float = -4.503877
    norm_std: float = 5.141276
    load_sr: int | None = None
    kind: str = "kaldi_fbank"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.mel_bins, self.num_frames)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        import torch
        import torchaudio.compliance.kaldi as kaldi
        w = torch.from_numpy(y)[None]
        w = w - w.mean()
        fb = kaldi.fbank(w, htk_compat=True, sample_frequency=self.sr, use_energy=False, window_type="hanning",
                         num_mel_bins=self.mel_bins, dither=0.0, frame_shift=10)          # [frames, mel]
        fb = torch.nn.functional.pad(fb, (0, 0, 0, max(0, self.num_frames - fb.shape[0])))[: self.num_frames]
        fb = (fb - self.norm_mean) / (self.norm_std * 2)
        return fb.T.contiguous().numpy().astype(np.float32)                               # [mel, frames]


@dataclass(frozen=True)
class FeatureRecipe:
    """Custom data only: precomputed features [F, T] from .npy, zero-padded or cut to T columns."""
    freq: int
    frames: int
    name: str = "npy"
    kind: str = "precomputed"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.freq, self.frames)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[0] != self.freq:
            raise ClipError(f"features must be [{self.freq}, T], got {list(x.shape)}")
        x = x[:, : self.frames].astype(np.float32)
        return np.pad(x, ((0, 0), (0, self.frames - x.shape[1])))


RECIPES = {
    "cremad": StftRecipe("cremad", sr=22050, num_samples=66150, n_fft=512, hop=353),
    "vggsound": StftRecipe("vggsound", sr=16000, num_samples=160000, n_fft=256, hop=128),
    "spectrogram": ScipyRecipe(),
    "fbank": FbankRecipe(),
}


def recipe_params(recipe) -> dict:
    return {**asdict(recipe), "shape": list(recipe.shape)}


# ----------------------------------------------------------------------------- one clip (runs in a worker)

def clip_audio(clip: Clip, recipe) -> np.ndarray:
    if isinstance(recipe, FeatureRecipe):
        return recipe(np.load(clip.audio, allow_pickle=False))
    # The reference chains two resamplers for some datasets (ffmpeg to a 16 kHz wav, then
    # librosa.load at 22.05 kHz): load at load_sr first, then bring to sr.
    first_sr = recipe.load_sr or recipe.sr
    src = clip.audio or clip.visual
    try:
        y = load_wave(src, first_sr)
    except NoAudioTrack:
        if not (clip.audio_fallback and os.path.exists(clip.audio_fallback)):
            raise ClipError(f"no audio track in {src} and no {clip.audio_fallback or 'wav in --audio-dir'}") from None
        y = load_wave(clip.audio_fallback, first_sr)
    if first_sr != recipe.sr:
        import librosa
        y = librosa.resample(y, orig_sr=first_sr, target_sr=recipe.sr, res_type="soxr_hq")
    return recipe(y)


def prepare_clip(clip: Clip, recipe, frames: FrameSpec) -> tuple[np.ndarray, np.ndarray]:
    if clip.visual is None:
        raise ClipError("no visual input")
    return read_visual(clip.visual, frames), clip_audio(clip, recipe)


# Worker state is set once per process (initializer) instead of being pickled with every clip.
_WORK: dict = {}


def _init_worker(recipe, frames: FrameSpec) -> None:
    cv2.setNumThreads(1)          # the pool is the parallelism
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _WORK.update(recipe=recipe, frames=frames)


def _work(job: tuple[int, Clip]):
    """Returns (i, (frames, audio)) or (i, reason): a bad clip never stops the run."""
    i, clip = job
    try:
        return i, prepare_clip(clip, _WORK["recipe"], _WORK["frames"])
    except Exception as e:   # corrupt media raises all kinds of errors (cv2, av, soundfile, ValueError)
        reason = str(e) if isinstance(e, ClipError) else f"{type(e).__name__}: {e}"
        return i, " ".join(reason.split()) or type(e).__name__


# ----------------------------------------------------------------------------- the runner

class Runner:
    """A process pool shared by all splits of a run. workers=0 runs clips in this process."""

    def __init__(self, recipe, frames: FrameSpec, workers: int):
        self.recipe, self.frames, self.workers = recipe, frames, workers
        self._pool = None

    @staticmethod
    def _context():
        """Workers come from a fork server, never from a plain fork of this process: a fork of a
        process whose OpenCV or OpenMP thread pools are running can deadlock in the child (seen
        here: cv2.setNumThreads hung after an earlier cv2/torch call in the same process). The
        server imports the heavy modules once (librosa, scipy.signal, cv2) and forks clean workers."""
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["data_prep.common", "librosa.core.audio", "scipy.signal"])
        return ctx

    def _new_pool(self, n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(n, mp_context=self._context(), initializer=_init_worker,
                                   initargs=(self.recipe, self.frames))

    def results(self, jobs: list):
        """Yield (i, (frames, audio) or reason) for every job, in completion order. A worker that
        dies (a decoder segfault, the OOM killer) breaks the pool: the clips in flight are then
        retried one per fresh process, so the culprit is found and skipped, and the rest go on."""
        if self.workers <= 0:
            _init_worker(self.recipe, self.frames)
            yield from map(_work, jobs)
            return
        pending = deque(jobs)
        while pending:
            if self._pool is None:
                self._pool = self._new_pool(self.workers)
            try:
                yield from self._drain(self._pool, pending, window=4 * self.workers)  # bounded: results are big
            except _Broken as broken:    # `pending` still holds the clips not submitted yet
                self.close()
                self._check_workers_start()
                for job in broken.jobs:
                    with self._new_pool(1) as alone:
                        try:
                            yield from self._drain(alone, deque([job]), window=1)
                        except _Broken:
                            yield job[0], "the decoder crashed its worker process on this clip"

    def _check_workers_start(self) -> None:
        """A broken pool is blamed on a clip only if a fresh worker can run a trivial job; else no
        worker can start at all (e.g. a calling script without an `if __name__ == "__main__":` guard,
        which the fork server must re-import) and every clip would be skipped for nothing."""
        try:
            with self._new_pool(1) as probe:
                probe.submit(int).result()
        except BrokenProcessPool:
            raise UserError("preparation worker processes cannot start; if you call data_prep from your own "
                            "script, put the call under `if __name__ == \"__main__\":` (or use --workers 0)") from None

    @staticmethod
    def _drain(pool, queue: deque, window: int):
        inflight: dict = {}
        while queue or inflight:
            while queue and len(inflight) < window:
                job = queue.popleft()
                inflight[pool.submit(_work, job)] = job
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    raise _Broken(list(inflight.values())) from None
                del inflight[fut]
                yield res

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class _Broken(Exception):
    def __init__(self, jobs):
        self.jobs = jobs   # the clips in flight when the pool broke


def prepare_split(out: Path, split: str, clips: list[Clip], runner: Runner, *, jpeg: bool,
                  limit: int | None = None) -> tuple[dict | None, int]:
    """Write the clips of one split not written yet (at most `limit` of them). Returns the
    writer's summary (None when `limit` left clips to do) and the number of clips handled."""
    id_len = max([64] + [len(c.clip_id) for c in clips])
    writer = SplitWriter(out, split, len(clips), max_frames=runner.frames.max_frames, frame_hw=runner.frames.hw,
                         audio_shape=runner.recipe.shape, jpeg=jpeg, id_len=id_len)
    todo = writer.todo()
    budget = len(todo) if limit is None else max(0, limit)
    jobs = []
    for i in todo[:budget]:
        if clips[i].problem:       # missing file, ambiguous label...: no need to start a worker
            writer.skip(i, clips[i].clip_id, clips[i].problem)
        else:
            jobs.append((i, clips[i]))
    from tqdm import tqdm
    bar = tqdm(total=len(jobs), desc=f"{split:>5}", unit="clip", dynamic_ncols=True, file=sys.stderr,
               disable=None if len(jobs) > 0 else True)
    try:
        for i, res in runner.results(jobs):
            if not isinstance(res, str):
                try:
                    writer.write(i, clips[i].clip_id, clips[i].label, *res)
                except ValueError as e:     # the store's checks: NaN / float16 range / frame shape
                    res = str(e)
            if isinstance(res, str):
                writer.skip(i, clips[i].clip_id, res)
            bar.update()
    finally:
        bar.close()
        writer.flush()   # an interrupted run keeps everything finished so far
    if len(todo) > budget:
        return None, budget
    return writer.close(), len(todo)


# ----------------------------------------------------------------------------- command line

def base_parser(prog: str, description: str, *, max_frames: int, recipes: tuple[str, ...],
                raw_help: str | None, splits_help: str | None, audio_dir: bool = True,
                holdout: bool = True) -> argparse.ArgumentParser:
    """The options every dataset module shares; None/False leaves an option out."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if raw_help:
        p.add_argument("--raw", type=Path, required=True, metavar="DIR", help=raw_help)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder of the prepared dataset")
    if splits_help:
        p.add_argument("--splits", type=Path, default=None, metavar="DIR", help=splits_help)
    if audio_dir:
        p.add_argument("--audio-dir", type=Path, default=None, metavar="DIR",
                       help="<video stem>.wav files, used for videos without an audio track")
    p.add_argument("--audio-recipe", choices=recipes, default=recipes[0],
                   help="spectrogram recipe (default: %(default)s; see data_prep/README.md)")
    p.add_argument("--max-frames", type=int, default=max_frames, metavar="N",
                   help="frames stored per clip, 1 per second from the start (default: %(default)s)")
    p.add_argument("--frame-size", type=frame_size, default=(256, 256), metavar="S|HxW",
                   help="stored frame size, a little above the training crop (default: 256)")
    p.add_argument("--jpeg", action="store_true", help="store JPEG-encoded frames (several times smaller)")
    if holdout:
        p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                       help="share of train held out as val (default: %(default)s)")
        p.add_argument("--seed", type=int, default=0, help="seed of the val hold-out (default: %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="worker processes, 0 = in this process (default: all %(default)s cores)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="prepare at most N clips in this run, then stop (re-run to continue)")
    return p


def frame_size(text: str) -> tuple[int, int]:
    try:
        h, _, w = text.lower().partition("x")
        hw = (int(h), int(w or h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S or HxW (e.g. 256 or 256x320), got {text!r}") from None
    if min(hw) < 8:
        raise argparse.ArgumentTypeError(f"frame size must be at least 8 pixels, got {text!r}")
    return hw


def run_cli(main) -> None:
    """Entry point wrapper: user errors become one line on stderr and exit status 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished clips are kept; re-run the same command to continue", file=sys.stderr)
        sys.exit(130)


def _versions() -> dict:
    import importlib.metadata as md
    out = {"python": sys.version.split()[0]}
    for pkg in ("numpy", "opencv-python", "av", "librosa", "soxr", "scipy", "torch", "torchaudio", "soundfile"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _check_params(out: Path, params: dict) -> None:
    """A resumed run must use the parameters of the run it continues, or the rows would mix."""
    path = out / "params.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != params:
            diff = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
            raise UserError(f"{out} holds a preparation with other parameters ({', '.join(diff)}); "
                            f"use another --out or delete {out}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(params, indent=2))


def prepare(args, *, dataset: str, source: dict, class_names: list[str], splits: dict[str, list[Clip]], recipe,
            frames: FrameSpec, params: dict, extra: dict | None = None) -> dict | None:
    """Prepare every split, then write the manifest (last: its presence means 'prepared')."""
    out = Path(args.out)
    if not any(splits.values()):
        raise UserError(f"no clips to prepare for {dataset}: the split lists are empty")
    params = {"dataset": dataset, "audio": recipe_params(recipe), "frames": asdict(frames) | {"hw": list(frames.hw)},
              "jpeg": bool(args.jpeg), **params}
    _check_params(out, params)
    summaries = {}
    runner = Runner(recipe, frames, args.workers)
    budget = args.limit
    try:
        for split, clips in splits.items():
            summary, handled = prepare_split(out, split, clips, runner, jpeg=args.jpeg, limit=budget)
            if summary is None:
                print(f"stopped after --limit {args.limit} clips; re-run to continue", file=sys.stderr)
                return None
            budget = None if budget is None else budget - handled
            summary["class_counts"] = {class_names[k]: v for k, v in summary["counts"].items()}
            summaries[split] = summary
    finally:
        runner.close()
    manifest = {
        "format_version": 1,
        "dataset": dataset,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m data_prep." + dataset, *map(shlex.quote, sys.argv[1:])]),
        "source": {k: str(v) if v is not None else None for k, v in source.items()},
        "versions": _versions(),
        "params": params,
        "num_classes": len(class_names),
        "class_names": class_names,
        "audio_shape": list(recipe.shape),
        "max_frames": frames.max_frames,
        "frame_hw": list(frames.hw),
        "jpeg": bool(args.jpeg),
        "splits": summaries,
        **(extra or {}),
    }
    write_manifest(out, manifest)
    for split, s in summaries.items():
        print(f"{split}: {s['written']} clips written, {len(s['skipped'])} skipped", file=sys.stderr)
    print(f"wrote {out / 'manifest.json'}", file=sys.stderr)
    return manifest

