"""avdigits: a small real audio-visual dataset, spoken digits paired with handwritten ones.

Audio: Free Spoken Digit Dataset (FSDD, 3000 recordings, 6 speakers, 8 kHz, CC BY-SA 4.0).
Visual: MNIST test images (10,000, 28x28), paired with each recording by digit (the
"audio-visual MNIST" idea). Ten classes, the digits 0-9.

Splits (FSDD's own convention extended by a val split; speakers appear in every split):
  test   recording index 0-4    (300 clips)
  val    recording index 5-9    (300 clips)
  train  recording index 10-49  (2400 clips)
Each split draws its images from its own disjoint, per-digit 70/15/15 share of MNIST (seeded),
without replacement, so no image is in two splits and none is used twice.

Stored per clip: audio = log-mel spectrogram [64 mels, 64 frames] of a 1.008 s window (clip
centred, zero-padded or centre-cropped; n_fft 256, hop 128, natural log of power + 1e-6);
visual = one 32x32 RGB frame (the digit padded by 2 px; the loader crops 28).

Degradations set the imbalance; they are applied once here, seeded, so the data is fixed:
  --audio-snr DB           white noise at this SNR (dB, vs the clip's power); default none
  --audio-noise-frac F     fraction of clips whose audio is replaced by noise of equal power
  --visual-noise STD       Gaussian pixel noise, std as a fraction of full scale
  --visual-blur SIGMA      Gaussian blur, in pixels
  --visual-occlude SIDE    a black square of this side (fraction of 28 px) at a random place
  --visual-noise-frac F    fraction of clips whose image is replaced by uniform noise
The defaults make audio the dominant modality, as in CREMA-D: the spoken digit is clean on 90%
of the clips, the handwritten one is noisy, blurred, occluded and missing on 20% of them; each
modality still carries information the other lacks.

    .venv/bin/python -m data_prep.avdigits --out data/avdigits [--fsdd DIR] [--mnist DIR] [--cache DIR]

Sources (find_sources): --fsdd / --mnist when given; else ../shared/data/{fsdd,mnist} next to the
project when that folder exists; else downloaded once into --cache (default: raw/ next to --out,
e.g. data/raw) and checked: the FSDD GitHub archive at commit FSDD_COMMIT (its 3000 recordings
must match FSDD_RECORDINGS_SHA256, the sha256 of their `sha256sum` listing) and the two MNIST
test-set idx.gz files (sha256 each). Downloads go to a .part file or .tmp folder that is renamed
once complete and checked, so an interrupted download never counts as done.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

import cv2
import librosa
import numpy as np
import soundfile as sf

from .common import file_sha256, start_output
from .store import SplitWriter, UserError, write_manifest

SR, N_SAMPLES, N_FFT, HOP, N_MELS = 8000, 8064, 256, 128, 64   # 8064 / 128 + 1 = 64 frames after the trim
FRAME = 32
SPLITS = {"train": range(10, 50), "val": range(5, 10), "test": range(0, 5)}  # FSDD recording index
MNIST_SHARE = {"train": 0.70, "val": 0.15, "test": 0.15}
NAME_RE = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"   # ../shared/data next to the project, if there
FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"   # v1.0.10, 2024-05-02
FSDD_URL = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{FSDD_COMMIT}.tar.gz"
FSDD_RECORDINGS_SHA256 = "1801eae019c063377d98f831d3f93574f259475df7332bb0e3d1b080fb5e6959"  # recordings_digest
MNIST_URL = "https://raw.githubusercontent.com/kelas/mnist/283b387221ab46655e600cfcc25d843bb14292b9/"
MNIST_SHA256 = {"t10k-images-idx3-ubyte.gz": "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b",
                "t10k-labels-idx1-ubyte.gz": "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c"}


# ----------------------------------------------------------------------------- finding or downloading the sources

def recordings_digest(folder: Path) -> str:
    """sha256 of the `sha256sum` listing (`<sha256>  <name>` lines, sorted by name) of the wavs."""
    names = sorted(p.name for p in Path(folder).glob("*.wav"))
    return hashlib.sha256("".join(f"{file_sha256(Path(folder) / n)}  {n}\n" for n in names).encode()).hexdigest()


def fetch(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Download `url` to `dest` through dest.part, renamed once complete (and matching `sha256`
    when given). A `dest` already there arrived that way and is kept."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, h = dest.with_name(dest.name + ".part"), hashlib.sha256()
    print(f"downloading {url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
            while block := r.read(1 << 20):
                h.update(block)
                f.write(block)
    except OSError as e:   # URLError and socket errors are OSErrors
        part.unlink(missing_ok=True)
        raise UserError(f"cannot download {url} ({e}); expected a network connection, or give the files "
                        f"with --fsdd / --mnist") from None
    if sha256 and h.hexdigest() != sha256:
        part.unlink()
        raise UserError(f"{url} has sha256 {h.hexdigest()}; expected {sha256} (download not kept)")
    os.replace(part, dest)
    return dest


def download_fsdd(cache: Path, url: str | None = None, digest: str | None = None) -> Path:
    """cache/fsdd/recordings/*.wav from the FSDD archive, checked file by file (recordings_digest)."""
    final, tmp = cache / "fsdd", cache / "fsdd.tmp"
    if (final / "recordings").is_dir():
        return final
    archive = fetch(url or FSDD_URL, cache / "fsdd.tar.gz")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "recordings").mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            for m in tar:
                parts = m.name.split("/")
                if m.isfile() and parts[-2:-1] == ["recordings"] and NAME_RE.match(parts[-1]):
                    (tmp / "recordings" / parts[-1]).write_bytes(tar.extractfile(m).read())
    except tarfile.TarError as e:
        archive.unlink()
        raise UserError(f"{archive} is not a readable tar.gz ({e}); expected the FSDD archive "
                        f"(deleted: re-run to download it again)") from None
    got, want = recordings_digest(tmp / "recordings"), digest or FSDD_RECORDINGS_SHA256
    if got != want:
        shutil.rmtree(tmp)
        archive.unlink()
        raise UserError(f"the recordings of {url or FSDD_URL} have listing sha256 {got}; expected {want} "
                        f"(FSDD at commit {FSDD_COMMIT}; download not kept)")
    os.replace(tmp, final)
    archive.unlink()
    return final


def download_mnist(cache: Path, url: str | None = None, sha256: dict | None = None) -> Path:
    """cache/mnist/t10k-{images,labels}-*.gz, each checked against its sha256."""
    for name, digest in (sha256 or MNIST_SHA256).items():
        fetch((url or MNIST_URL) + name, cache / "mnist" / name, digest)
    return cache / "mnist"


def find_sources(args) -> tuple[Path, Path]:
    """(fsdd, mnist): given; else ../shared/data next to the project; else downloaded into --cache."""
    cache = Path(args.cache) if args.cache else Path(args.out).parent / "raw"
    fsdd = args.fsdd or (SHARED / "fsdd" if (SHARED / "fsdd" / "recordings").is_dir() else download_fsdd(cache))
    mnist = args.mnist or (SHARED / "mnist" if (SHARED / "mnist").is_dir() else download_mnist(cache))
    if not Path(fsdd).is_dir():
        raise UserError(f"FSDD folder {fsdd} not found: give it with --fsdd")
    if not Path(mnist).is_dir():
        raise UserError(f"MNIST folder {mnist} not found: give it with --mnist")
    print(f"FSDD from {fsdd}, MNIST from {mnist}", file=sys.stderr)
    return Path(fsdd), Path(mnist)


# ----------------------------------------------------------------------------- reading the sources

def list_fsdd(fsdd: Path) -> list[tuple[str, int, str, int]]:
    """-> [(file name, digit, speaker, index)], sorted. `fsdd` is the FSDD folder or its recordings/."""
    rec = fsdd / "recordings" if (fsdd / "recordings").is_dir() else fsdd
    items = sorted((m.group(0), int(m.group(1)), m.group(2), int(m.group(3)))
                   for p in rec.glob("*.wav") if (m := NAME_RE.match(p.name)))
    if not items:
        raise UserError(f"no FSDD recordings (<digit>_<speaker>_<n>.wav) in {rec}")
    return items


def load_mnist(mnist: Path) -> tuple[np.ndarray, np.ndarray]:
    """-> images uint8 [N, 28, 28], labels int64 [N] from the idx files (gzipped or not)."""
    def read(stem: str, magic: int) -> np.ndarray:
        for name, opener in ((stem + ".gz", gzip.open), (stem, open)):
            if (mnist / name).exists():
                with opener(mnist / name, "rb") as f:
                    data = f.read()
                break
        else:
            raise UserError(f"{mnist / stem}(.gz) not found: give the folder of the MNIST idx files with --mnist")
        if int.from_bytes(data[:4], "big") != magic:
            raise UserError(f"{mnist / stem} is not an MNIST idx file")
        ndim = data[3]
        dims = [int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim)]
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    images = read("t10k-images-idx3-ubyte", 2051)
    labels = read("t10k-labels-idx1-ubyte", 2049).astype(np.int64)
    return images, labels


def mnist_pools(labels: np.ndarray, rng: np.random.Generator) -> dict[str, dict[int, np.ndarray]]:
    """Disjoint per-split, per-digit pools of image indices (70/15/15 of each digit)."""
    pools = {s: {} for s in MNIST_SHARE}
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(labels == d))
        a = int(len(idx) * MNIST_SHARE["train"])
        b = a + int(len(idx) * MNIST_SHARE["val"])
        pools["train"][d], pools["val"][d], pools["test"][d] = idx[:a], idx[a:b], idx[b:]
    return pools


# ----------------------------------------------------------------------------- features

def log_mel(y: np.ndarray) -> np.ndarray:
    """waveform [N_SAMPLES] -> log-mel [64, 64] float32."""
    mel = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, fmax=SR / 2)
    return np.log(mel[:, :64] + 1e-6).astype(np.float32)  # [64, 65] -> drop the last (padding) frame


def fit_window(y: np.ndarray) -> np.ndarray:
    """Centre the clip in N_SAMPLES: zero-pad short clips, centre-crop long ones."""
    if len(y) >= N_SAMPLES:
        s = (len(y) - N_SAMPLES) // 2
        return y[s:s + N_SAMPLES]
    out = np.zeros(N_SAMPLES, dtype=np.float32)
    s = (N_SAMPLES - len(y)) // 2
    out[s:s + len(y)] = y
    return out


def audio_features(y: np.ndarray, args, rng: np.random.Generator) -> np.ndarray:
    power = float(np.mean(y ** 2)) + 1e-12  # of the clip itself, before padding
    if rng.random() < args.audio_noise_frac:
        return log_mel(rng.normal(0, np.sqrt(power), N_SAMPLES).astype(np.float32))
    y = fit_window(y.astype(np.float32))
    if args.audio_snr is not None:
        y = y + rng.normal(0, np.sqrt(power / 10 ** (args.audio_snr / 10)), N_SAMPLES).astype(np.float32)
    return log_mel(y)


def visual_frame(img: np.ndarray, args, rng: np.random.Generator) -> np.ndarray:
    """MNIST image uint8 [28, 28] -> degraded frame uint8 [1, 32, 32, 3]."""
    if rng.random() < args.visual_noise_frac:
        x = rng.uniform(0, 1, (FRAME, FRAME))
    else:
        x = np.pad(img.astype(np.float64) / 255, (FRAME - 28) // 2)              # [32, 32] in 0..1
        if args.visual_occlude > 0:
            side = int(round(args.visual_occlude * 28))
            y0, x0 = rng.integers(2, 2 + 28 - side + 1, size=2)
            x[y0:y0 + side, x0:x0 + side] = 0
        if args.visual_blur > 0:
            x = cv2.GaussianBlur(x, (0, 0), args.visual_blur)
        if args.visual_noise > 0:
            x = x + rng.normal(0, args.visual_noise, x.shape)
    x = (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(x[None, :, :, None], 3, axis=3)                            # gray -> RGB


# ----------------------------------------------------------------------------- main

def prepare(args) -> dict:
    (fsdd, mnist), out = find_sources(args), Path(args.out)
    items = list_fsdd(fsdd)
    images, img_labels = load_mnist(mnist)
    pools = mnist_pools(img_labels, np.random.default_rng(args.seed))
    params = {"dataset": "avdigits",
              **{k: v for k, v in vars(args).items() if k not in ("fsdd", "mnist", "out", "cache", "overwrite")}}
    start_output(out, params, overwrite=args.overwrite)
    summaries = {}
    for k, (split, rec_idx) in enumerate(SPLITS.items()):
        rows = [it for it in items if it[3] in rec_idx]
        if args.limit:
            rows = rows[::max(1, len(rows) // args.limit)][:args.limit]
        if not rows:
            raise UserError(f"avdigits split '{split}' is empty: no FSDD recording with index {rec_idx.start}-"
                            f"{rec_idx.stop - 1} in {fsdd}; expected the 3000 recordings of the FSDD release")
        rng = np.random.default_rng([args.seed, k])
        # pair each clip with an unused image of its digit from this split's pool
        take = {d: iter(rng.permutation(p)) for d, p in pools[split].items()}
        pair = [next(take[digit]) for _, digit, _, _ in rows]
        # every clip's degradation draws from its own seeded stream, so a resumed run is identical
        w = SplitWriter(out, split, len(rows), max_frames=1, frame_hw=(FRAME, FRAME), audio_shape=(N_MELS, 64))
        rec = fsdd / "recordings" if (fsdd / "recordings").is_dir() else fsdd
        for i in w.todo():
            name, digit, _, _ = rows[i]
            r = np.random.default_rng([args.seed, k, i])
            y, sr = sf.read(rec / name, dtype="float32")
            if sr != SR:
                y = librosa.resample(y, orig_sr=sr, target_sr=SR)
            clip_id = f"{Path(name).stem}+mnist{pair[i]}"
            w.write(i, clip_id, digit, visual_frame(images[pair[i]], args, r), audio_features(y, args, r))
        summaries[split] = w.close()
        print(f"{split}: {summaries[split]['written']} clips")
    manifest = {
        "name": "avdigits", "class_names": [str(d) for d in range(10)], "splits": summaries,
        "sources": {"audio": "Free Spoken Digit Dataset (CC BY-SA 4.0)", "visual": "MNIST test set"},
        "params": params,
        "audio": {"sr": SR, "samples": N_SAMPLES, "n_fft": N_FFT, "hop": HOP, "n_mels": N_MELS, "log": "ln(power + 1e-6)"},
    }
    write_manifest(out, manifest)  # last: its presence marks the dataset as prepared
    return manifest


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fsdd", type=Path, default=None,
                   help="FSDD folder (or its recordings/); default: shared/data/fsdd next to the project if "
                        "there, else downloaded")
    p.add_argument("--mnist", type=Path, default=None,
                   help="folder of the t10k-images/labels idx files; default: shared/data/mnist next to the "
                        "project if there, else downloaded")
    p.add_argument("--cache", type=Path, default=None, help="where downloads go (default: raw/ next to --out)")
    p.add_argument("--out", type=Path, default=Path("data/avdigits"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--audio-snr", type=float, default=None, help="dB; default: no added noise")
    p.add_argument("--audio-noise-frac", type=float, default=0.1)
    p.add_argument("--visual-noise", type=float, default=0.3)
    p.add_argument("--visual-blur", type=float, default=1.0)
    p.add_argument("--visual-occlude", type=float, default=0.4)
    p.add_argument("--visual-noise-frac", type=float, default=0.2)
    p.add_argument("--limit", type=int, default=0, help="at most this many clips per split (smoke tests)")
    p.add_argument("--overwrite", "--force", action="store_true",
                   help="delete the preparation already in --out first (needed to change its parameters)")
    args = p.parse_args(argv)
    for k in ("audio_noise_frac", "visual_noise_frac", "visual_occlude"):
        if not 0 <= getattr(args, k) <= 1:
            p.error(f"--{k.replace('_', '-')} must be in [0, 1]")
    return args


def main(argv=None) -> int:
    try:
        prepare(parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
