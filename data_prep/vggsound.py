"""VGGSound (Chen et al., ICASSP 2020): about 200k 10 s YouTube clips, 309 classes.

    python -m data_prep.vggsound --raw RAW_DIR --out DATA_DIR [--splits DIR]

Raw layout: RAW/video/<ytid>_<start:06d>.mp4 and the public vggsound.csv (in --splits, default
--raw): `ytid,start_seconds,label,train|test` rows, no header, labels may be quoted.
Class index: label names sorted alphabetically. (The reference numbers classes by first
appearance among its kept train rows, which depends on which clips were downloaded; sorting
gives the same index for everyone.) Val is a seeded, class-stratified 10% of train.
The full 10 s spectrogram (129 x 1251) is stored; the loader crops 626 columns (5 s).
"""
from __future__ import annotations

import csv
from pathlib import Path

from data_prep.cli import base_parser, run_cli
from data_prep.common import Clip, file_sha256, find_lists, hold_out_val, index_files, prepare, require
from data_prep.decode import VIDEO_EXTS, FrameSpec
from data_prep.recipes import RECIPES
from data_prep.store import UserError


def read_vggsound_csv(path: Path) -> list[tuple[str, str, str]]:
    """(clip_id, label, split) with clip_id = <ytid>_<start:06d>, the file stem of the release."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) != 4 or not row[1].strip().isdigit() or row[3].strip() not in ("train", "test"):
                raise UserError(f"{path} line {n}: expected `ytid,start_seconds,label,train|test`, "
                                f"got {','.join(row)!r}")
            ytid, start, label, split = (x.strip() for x in row)
            rows.append((f"{ytid}_{int(start):06d}", label, split))
    return rows


def main(argv=None) -> None:
    p = base_parser("python -m data_prep.vggsound", __doc__, max_frames=10,
                    recipes=("vggsound", "fbank"),
                    raw_help="the VGGSound folder holding video/<ytid>_<start:06d>.mp4",
                    splits_help="folder with vggsound.csv (default: --raw; not bundled)")
    args = p.parse_args(argv)

    raw = require(args.raw, "VGGSound raw folder")
    video_dir = require(raw / "video", "VGGSound video folder", "video/<ytid>_<start:06d>.mp4")
    split_dir = find_lists(args.splits, raw, "vggsound", ["vggsound.csv"])
    csv_path = require(split_dir / "vggsound.csv", "VGGSound list",
                       "the public vggsound.csv, `ytid,start_seconds,label,train|test`, not bundled; pass --splits DIR")
    rows = read_vggsound_csv(csv_path)
    class_names = sorted({label for _, label, _ in rows})
    videos = index_files(video_dir, VIDEO_EXTS)

    def clip(cid: str, label: str) -> Clip:
        path = videos.get(cid)
        return Clip(cid, class_names.index(label), visual=str(path) if path else None,
                    audio_fallback=str(args.audio_dir / f"{cid}.wav") if args.audio_dir else None,
                    problem=None if path else f"missing video/{cid}.mp4")

    train = [(cid, label) for cid, label, s in rows if s == "train"]
    test = [(cid, label) for cid, label, s in rows if s == "test"]
    train, val = hold_out_val(train, [class_names.index(label) for _, label in train], args.val_fraction, args.seed)
    splits = {name: [clip(*r) for r in rows] for name, rows in (("train", train), ("val", val), ("test", test))}
    params = {"val_fraction": args.val_fraction, "seed": args.seed, "list_sha256": file_sha256(csv_path)}
    prepare(args, dataset="vggsound", source={"raw": raw, "splits": split_dir, "audio_dir": args.audio_dir},
            class_names=class_names, splits=splits, recipe=RECIPES[args.audio_recipe],
            frames=FrameSpec(args.max_frames, args.frame_size, at="first"), params=params)


if __name__ == "__main__":
    run_cli(main)
