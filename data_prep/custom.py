"""Your own two-stream data, listed in a CSV manifest.

    python -m data_prep.custom --manifest CSV --out DATA_DIR [--audio-recipe fbank] [--max-frames 10]

CSV (header required): clip_id,label,split,audio,visual
  audio   an audio file (wav, flac, ogg, mp3, or any file with an audio track), a .npy feature
          array [F, T] (then every row must be .npy; stored as they are, T padded with zeros or
          cut to --audio-frames), or empty: the audio track of the visual video
  visual  a video file (frames at 1 fps), a folder of images (sorted by name), or a .npy array of
          frames [T, H, W, 3] uint8; folders and arrays with more than --max-frames frames keep
          --max-frames spread evenly
Paths are relative to the CSV's folder. Class names are the labels sorted (numerically when all
labels are integers). Each split name becomes one split (the loader expects train, val, test).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from data_prep.cli import base_parser, run_cli
from data_prep.common import Clip, file_sha256, prepare, require
from data_prep.decode import FrameSpec
from data_prep.recipes import RECIPES, FeatureRecipe
from data_prep.store import UserError

COLUMNS = ("clip_id", "label", "split", "audio", "visual")
SPLIT_ORDER = ("train", "val", "test")


def read_manifest_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: header must name the columns {','.join(COLUMNS)} (missing {', '.join(missing)})")
        rows = []
        for n, row in enumerate(reader, 2):
            row = {c: (row[c] or "").strip() for c in COLUMNS}
            empty = [c for c in ("clip_id", "label", "split", "visual") if not row[c]]
            if empty:
                raise UserError(f"{path} line {n}: empty {', '.join(empty)}")
            if not re.fullmatch(r"[A-Za-z0-9_-]+", row["split"]):
                raise UserError(f"{path} line {n}: split must be a simple name like train/val/test, "
                                f"got {row['split']!r}")
            row["line"] = n
            rows.append(row)
    if not rows:
        raise UserError(f"{path} lists no clips")
    return rows


def sorted_labels(labels) -> list[str]:
    labels = set(labels)
    if all(re.fullmatch(r"-?\d+", x) for x in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def feature_recipe(paths: list[Path], frames: int | None) -> FeatureRecipe:
    """One [F, T] shape for all .npy features: F must agree, T defaults to the longest clip."""
    shapes = {}
    for p in paths:
        if p.exists():
            shapes[p] = np.load(p, mmap_mode="r", allow_pickle=False).shape
    if not shapes:
        raise UserError("none of the .npy audio features listed in the manifest exists")
    bad = [f"{p.name} {list(s)}" for p, s in shapes.items() if len(s) != 2]
    freqs = {s[0] for s in shapes.values() if len(s) == 2}
    if bad or len(freqs) != 1:
        raise UserError("audio .npy features must all be 2-D [F, T] with one F; found "
                        + ", ".join(bad or sorted({f"F={f}" for f in freqs})))
    return FeatureRecipe(freq=freqs.pop(), frames=frames or max(s[1] for s in shapes.values()))


def main(argv=None) -> None:
    p = base_parser("python -m data_prep.custom", __doc__, max_frames=10,
                    recipes=tuple(RECIPES), raw_help=None, splits_help=None, audio_dir=False, holdout=False)
    p.add_argument("--manifest", type=Path, required=True, metavar="CSV",
                   help="CSV with clip_id,label,split,audio,visual")
    p.add_argument("--frame-at", choices=("first", "middle"), default="first",
                   help="which frame of each second a video keeps (default: %(default)s)")
    p.add_argument("--audio-frames", type=int, default=None, metavar="T",
                   help=".npy features: columns kept per clip (default: the longest clip)")
    p.set_defaults(audio_recipe=None)   # None: fbank for audio files; .npy features are stored as they are
    next(a for a in p._actions if a.dest == "audio_recipe").help = "recipe for audio files (default: fbank)"
    args = p.parse_args(argv)

    csv_path = require(args.manifest, "custom manifest CSV", "columns clip_id,label,split,audio,visual")
    base = csv_path.parent
    rows = read_manifest_csv(csv_path)
    class_names = sorted_labels(r["label"] for r in rows)

    resolve = lambda x: base / x if x else None   # noqa: E731  (absolute paths stay absolute)
    npy = [r["audio"].lower().endswith(".npy") for r in rows]
    if any(npy) and not all(npy):
        raise UserError(f"{csv_path}: audio mixes .npy features and audio files; use one kind for all rows")
    if all(npy):
        if args.audio_recipe:
            raise UserError("--audio-recipe applies to audio files; the manifest lists .npy features "
                            "(stored as they are)")
        recipe = feature_recipe([resolve(r["audio"]) for r in rows], args.audio_frames)
    else:
        recipe = RECIPES[args.audio_recipe or "fbank"]

    order = {s: k for k, s in enumerate(SPLIT_ORDER)}
    split_names = sorted({r["split"] for r in rows}, key=lambda s: (order.get(s, len(order)), s))
    splits: dict[str, list[Clip]] = {s: [] for s in split_names}
    seen: set[tuple[str, str]] = set()
    for r in rows:
        if (r["split"], r["clip_id"]) in seen:
            raise UserError(f"{csv_path} line {r['line']}: clip_id {r['clip_id']!r} appears twice "
                            f"in split {r['split']}")
        seen.add((r["split"], r["clip_id"]))
        audio, visual = resolve(r["audio"]), resolve(r["visual"])
        missing = [str(x) for x in (audio, visual) if x is not None and not x.exists()]
        splits[r["split"]].append(Clip(r["clip_id"], class_names.index(r["label"]), visual=str(visual),
                                       audio=str(audio) if audio else None,
                                       problem=f"missing {' and '.join(missing)}" if missing else None))

    params = {"manifest_sha256": file_sha256(csv_path)}
    prepare(args, dataset="custom", source={"manifest": csv_path}, class_names=class_names, splits=splits,
            recipe=recipe, frames=FrameSpec(args.max_frames, args.frame_size, at=args.frame_at), params=params)


if __name__ == "__main__":
    run_cli(main)
