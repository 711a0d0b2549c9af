"""Spectrogram recipes: a recipe turns a mono waveform (loaded at `load_sr`, then brought to `sr`)
into a float32 [F, T]. Each reproduces one reference pipeline (see data_prep/README.md)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from data_prep.decode import ClipError, tile_to


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
