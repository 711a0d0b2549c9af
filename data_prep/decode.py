"""Decoding of one clip's media: video, image folder or frame array to uint8 RGB frames at 1 fps,
and any audio file or container track to a mono float32 waveform (what librosa.load gives).
Errors that concern one clip raise ClipError: the clip is skipped with that reason."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".flv", ".m4v")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SOUNDFILE_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


class ClipError(Exception):
    """One clip cannot be prepared; it is skipped and listed in the manifest with this reason."""


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
