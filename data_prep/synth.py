"""Tiny synthetic raw layouts of every dataset, for tests and speed checks (no download needed).

    python -m data_prep.synth cremad --out RAW_DIR [--clips 12] [--size 360x480] [--seconds 2.5] [--texture]

Each frame is a flat grey of level 8 * (frame index mod 32), so a test can read back which frames
were kept; audio is a tone whose pitch depends on the class, plus noise.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

FRAME_STEP = 8   # grey level per frame index


def frame_index_of(frame: np.ndarray) -> int:
    """Inverse of the grey code, mod 32 (lossy codecs move the level by a few units)."""
    return int(round(float(frame.mean()) / FRAME_STEP)) % 32


def tone(seconds: float, sr: int, freq: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    noise = np.random.default_rng(seed).normal(0, 0.02, t.size)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def _frames(n: int, hw: tuple[int, int], texture: bool = False):
    """Flat grey frames, or with texture a moving noise pattern (work for the decoder, as real
    footage gives; the grey code is then only approximate)."""
    noise = np.random.default_rng(0).integers(-40, 40, (*hw, 3), dtype=np.int16)
    for i in range(n):
        level = (FRAME_STEP * i) % 256
        if texture:
            yield np.clip(level + np.roll(noise, 2 * i, axis=1), 0, 255).astype(np.uint8)
        else:
            yield np.full((*hw, 3), level, np.uint8)


def write_video(path: Path, seconds: float, fps: float = 30, hw=(48, 64), wave=None, sr: int = 16000,
                texture: bool = False) -> Path:
    """Video-only files through OpenCV (.flv: Sorenson H.263 like CREMA-D; .mp4: MPEG-4 part 2);
    with `wave`, an mp4 with an AAC track muxed by PyAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * fps))
    if wave is None:
        # FLV1 is written under the flv muxer's own tag 2 (the fourcc "FLV1" works too, with a warning)
        fourcc = 2 if path.suffix == ".flv" else cv2.VideoWriter_fourcc(*"mp4v")
        w = cv2.VideoWriter(str(path), fourcc, fps, (hw[1], hw[0]))
        for f in _frames(n, hw, texture):
            w.write(f)
        w.release()
        return path
    import av
    from fractions import Fraction
    with av.open(str(path), "w") as box:
        v = box.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1001))
        v.width, v.height, v.pix_fmt = hw[1], hw[0], "yuv420p"
        a = box.add_stream("aac", rate=sr)
        a.layout = "mono"
        for f in _frames(n, hw, texture):
            box.mux(v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        box.mux(v.encode())
        step = a.codec_context.frame_size or 1024
        for s in range(0, len(wave), step):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[None, s:s + step]), format="fltp",
                                               layout="mono")
            chunk.sample_rate, chunk.pts = sr, s
            box.mux(a.encode(chunk))
        box.mux(a.encode())
    return path


def write_wav(path: Path, wave: np.ndarray, sr: int) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sr, subtype="PCM_16")
    return Path(path)


# ----------------------------------------------------------------------------- layouts

CREMAD_EMOTIONS = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]


def make_cremad(root: Path, n_actors: int = 4, n_clips: int | None = None, seconds: float = 2.5,
                hw=(48, 64), lists: bool = True, bom: bool = True, texture: bool = False,
                ids: list[str] | None = None) -> list[str]:
    """RAW/AudioWAV/*.wav (16 kHz) + RAW/VideoFlash/*.flv (30 fps), and train.csv/test.csv in the
    reference format (CRLF, optional BOM): one clip in four goes to test. `ids` replaces the
    generated clip names (e.g. names from the real lists)."""
    root = Path(root)
    sentences = ["DFA", "IEO", "ITH", "IWW", "TAI", "MTI", "IOM", "TIE", "WSI", "ITS", "IWL", "TSI"]
    if ids is None and n_clips is None:
        ids = [f"{1001 + a}_{s}_{e}_XX" for a in range(n_actors) for s in sentences[:2] for e in CREMAD_EMOTIONS]
    elif ids is None:   # actor, emotion, sentence and level vary independently of each other
        a, levels = n_actors, ["XX", "LO", "MD", "HI"]
        ids = ["_".join((str(1001 + k % a), sentences[k // (6 * a) % 12], CREMAD_EMOTIONS[k // a % 6],
                         levels[k // (72 * a) % 4])) for k in range(n_clips)]
    for k, cid in enumerate(ids):
        dur = seconds + 0.1 * (k % 5)
        pitch = 200 + 100 * CREMAD_EMOTIONS.index(cid.split("_")[2])
        write_wav(root / "AudioWAV" / f"{cid}.wav", tone(dur, 16000, pitch, k), 16000)
        write_video(root / "VideoFlash" / f"{cid}.flv", dur, 30, hw, texture=texture)
    if lists:
        rows = {"train": [c for k, c in enumerate(ids) if k % 4], "test": [c for k, c in enumerate(ids) if k % 4 == 0]}
        for split, r in rows.items():
            text = "".join(f"{c},{c.split('_')[2]}\r\n" for c in r)
            (root / f"{split}.csv").write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return ids


def make_av_clips(folder: Path, ids: list[str], labels: list[int], seconds: float, hw=(48, 64),
                  fps: float = 25, audio_dir: Path | None = None, per_class: list[str] | None = None) -> None:
    """mp4 clips with an AAC track; with audio_dir, video-only mp4s plus <id>.wav there instead."""
    for k, (cid, y) in enumerate(zip(ids, labels, strict=True)):
        wave = tone(seconds, 16000, 200 + 60 * y, k)
        sub = folder / per_class[y] if per_class else folder
        if audio_dir is None:
            write_video(sub / f"{cid}.mp4", seconds, fps, hw, wave=wave)
        else:
            write_video(sub / f"{cid}.mp4", seconds, fps, hw)
            write_wav(audio_dir / f"{cid}.wav", wave, 16000)


def make_ave(root: Path, categories=("Church bell", "Bark", "Banjo"), per_split=(4, 2, 2), seconds=3.0,
             hw=(48, 64), audio_dir: Path | None = None) -> dict:
    """RAW/AVE/<VideoID>.mp4 with an AAC track (with audio_dir: video only, <VideoID>.wav there), and
    the release's &-separated text files."""
    root = Path(root)
    rows = {}
    k = 0
    for split, n in zip(("trainSet", "valSet", "testSet"), per_split, strict=True):
        rows[split] = []
        for _ in range(n):
            cat = categories[k % len(categories)]
            rows[split].append(f"{cat}&vid{k:08d}xyz&good&0&10")
            k += 1
    all_rows = [r for v in rows.values() for r in v]
    root.mkdir(parents=True, exist_ok=True)
    header = "Category&VideoID&Quality&StartTime&EndTime\n"
    (root / "Annotations.txt").write_text(header + "".join(r + "\n" for r in all_rows))
    for split, r in rows.items():
        (root / f"{split}.txt").write_text("".join(x + "\n" for x in r))
    (root / "categories.txt").write_text("".join(c + "\n" for c in categories))
    ids = [r.split("&")[1] for r in all_rows]
    labels = [sorted(categories).index(r.split("&")[0]) for r in all_rows]
    make_av_clips(root / "AVE", ids, labels, seconds, hw, audio_dir=audio_dir)
    return rows


def make_kinetics_sounds(root: Path, fmt: str = "reference", classes=(0, 7, 12), n_train: int = 6, n_test: int = 3,
                         seconds: float = 3.0, hw=(48, 64), per_class_folders: bool = True,
                         audio_dir: Path | None = None) -> dict:
    """Clips named like the reference lists (train `<ytid>_<start:06d>_<end:06d>`, test `<ytid>_<n>`),
    in one folder per class, and my_train.txt / my_test.txt in `fmt` ('reference' or 'class,id')."""
    from data_prep.kinetics_sounds import KS_CLASSES
    root = Path(root)
    lists = {}
    for split, n in (("train", n_train), ("test", n_test)):
        ids = [f"yt{k:09d}_{10 * k:06d}_{10 * k + 10:06d}" if split == "train" else f"yt{k:09d}_{k % 4}"
               for k in range(n)]
        labels = [classes[k % len(classes)] for k in range(n)]
        lists[split] = list(zip(ids, labels, strict=True))
        make_av_clips(root / "videos", ids, labels, seconds, hw, audio_dir=audio_dir,
                      per_class=KS_CLASSES if per_class_folders else None)
        lines = [f"{i},10,{y}" if fmt == "reference" else f"{KS_CLASSES[y]},{i}" for i, y in lists[split]]
        (root / f"my_{split}.txt").write_text("".join(x + "\r\n" for x in lines))
    return lists


def make_vggsound(root: Path, labels=("bird chirping, tweeting", "dog barking", "playing sitar"),
                  n_train: int = 6, n_test: int = 3, seconds: float = 3.0, hw=(48, 64)):
    """RAW/video/<ytid>_<start:06d>.mp4 and vggsound.csv (quoted labels, no header)."""
    import csv
    root = Path(root)
    rows = [(f"v{k:010d}", 5 * k, labels[k % len(labels)], "train" if k < n_train else "test")
            for k in range(n_train + n_test)]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "vggsound.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    ids = [f"{yt}_{start:06d}" for yt, start, _, _ in rows]
    make_av_clips(root / "video", ids, [sorted(labels).index(r[2]) for r in rows], seconds, hw)
    return rows


def make_custom(root: Path, hw=(40, 56)) -> Path:
    """One clip of each input kind, three classes, train/val/test: a video with its own audio track,
    an image folder + wav, a .npy frame array + flac. Returns the CSV path."""
    root = Path(root)
    (root / "media").mkdir(parents=True, exist_ok=True)
    rows = []
    splits = ["train", "train", "train", "val", "test", "train", "val", "test", "train"]
    for k, split in enumerate(splits):
        label, cid = ("cat", "dog", "bird")[k % 3], f"c{k}"
        wave = tone(1.5, 22050, 300 + 100 * (k % 3), k)
        kind = k % 3
        if kind == 0:
            write_video(root / "media" / f"{cid}.mp4", 2.0, 25, hw, wave=tone(2.0, 16000, 300, k))
            rows.append((cid, label, split, "", f"media/{cid}.mp4"))
        elif kind == 1:
            (root / "media" / cid).mkdir(exist_ok=True)
            for t in range(3):
                cv2.imwrite(str(root / "media" / cid / f"{t:03d}.png"), np.full((*hw, 3), FRAME_STEP * t, np.uint8))
            write_wav(root / "media" / f"{cid}.wav", wave, 22050)
            rows.append((cid, label, split, f"media/{cid}.wav", f"media/{cid}"))
        else:
            frames = np.stack([np.full((*hw, 3), FRAME_STEP * t, np.uint8) for t in range(5)])
            np.save(root / "media" / f"{cid}_frames.npy", frames)
            sf.write(str(root / "media" / f"{cid}.flac"), wave, 22050)
            rows.append((cid, label, split, f"media/{cid}.flac", f"media/{cid}_frames.npy"))
    path = root / "clips.csv"
    path.write_text("clip_id,label,split,audio,visual\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", choices=("cremad",))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--size", default="360x480", help="HxW")
    p.add_argument("--seconds", type=float, default=2.5)
    p.add_argument("--texture", action="store_true", help="moving noise in the frames (realistic decode cost)")
    args = p.parse_args(argv)
    h, w = (int(x) for x in args.size.split("x"))
    make_cremad(args.out, n_actors=max(1, min(91, args.clips // 12)), n_clips=args.clips, seconds=args.seconds,
                hw=(h, w), texture=args.texture)
    print(f"wrote {args.clips} CREMA-D-like clips to {args.out}")


if __name__ == "__main__":
    main()
