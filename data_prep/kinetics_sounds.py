"""Kinetics-Sounds: 31 classes of Kinetics with a strong audio-visual link.

    python -m data_prep.kinetics_sounds --raw RAW_DIR --out DATA_DIR [--splits DIR] [--audio-recipe fbank]

Raw layout: a folder of video clips, flat or one folder per class, named <video_id>.mp4 (any of
.mp4 .mkv .webm .avi .mov .flv .m4v). Split lists my_train.txt / my_test.txt (in --splits, default
--raw, else the bundled OGM-GE lists in data_prep/splits/kinetics_sounds), in either format:
  reference   `video_id,10,label_index` (the OGM-GE files; label_index = position in KS_CLASSES)
  class,id    `class_name,video_id` (what the reference AVDataset reads; classes sorted by name)
Val is a seeded, class-stratified 10% of train.
"""
from __future__ import annotations

from pathlib import Path

from data_prep.cli import base_parser, run_cli
from data_prep.common import (Clip, file_sha256, find_lists, hold_out_val, index_files, prepare, read_lines,
                              require)
from data_prep.decode import VIDEO_EXTS, FrameSpec
from data_prep.recipes import RECIPES
from data_prep.store import UserError

# Alphabetical: the reference's label indices 0..30 (checked against BML_TPAMI2024's KS.json).
KS_CLASSES = [
    "blowing_nose", "blowing_out_candles", "bowling", "chopping_wood", "dribbling_basketball", "laughing",
    "mowing_lawn", "playing_accordion", "playing_bagpipes", "playing_bass_guitar", "playing_clarinet",
    "playing_drums", "playing_guitar", "playing_harmonica", "playing_keyboard", "playing_organ", "playing_piano",
    "playing_saxophone", "playing_trombone", "playing_trumpet", "playing_violin", "playing_xylophone",
    "ripping_paper", "shoveling_snow", "shuffling_cards", "singing", "stomping_grapes", "tap_dancing",
    "tapping_guitar", "tapping_pen", "tickling",
]


def read_ks_list(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """Returns (format, [(video_id, class_name)]); format is 'reference' or 'class,id'."""
    rows, fmt = [], None
    for n, line in enumerate(read_lines(path), 1):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[2].isdigit() and int(parts[2]) < len(KS_CLASSES):
            row_fmt, row = "reference", (parts[0], KS_CLASSES[int(parts[2])])
        elif len(parts) == 2 and all(parts):
            row_fmt, row = "class,id", (parts[1], parts[0])
        else:
            raise UserError(f"{path} line {n}: expected `video_id,10,label_index` (index 0..30) "
                            f"or `class_name,video_id`, got {line!r}")
        if fmt not in (None, row_fmt):
            raise UserError(f"{path} line {n}: mixes the {fmt} and {row_fmt} list formats")
        fmt = row_fmt
        rows.append(row)
    return fmt, rows


def main(argv=None) -> None:
    p = base_parser("python -m data_prep.kinetics_sounds", __doc__, max_frames=10,
                    recipes=("spectrogram", "fbank"),
                    raw_help="folder of Kinetics-Sounds clips (flat or one folder per class)",
                    splits_help="folder with my_train.txt and my_test.txt (default: --raw if it holds them, "
                                "else the bundled data_prep/splits/kinetics_sounds)")
    args = p.parse_args(argv)

    raw = require(args.raw, "Kinetics-Sounds raw folder")
    split_dir = find_lists(args.splits, raw, "kinetics_sounds", ["my_train.txt", "my_test.txt"])
    hint = "`video_id,10,label_index` or `class_name,video_id` lines; pass --splits DIR"
    paths = {s: require(split_dir / f"my_{s}.txt", f"Kinetics-Sounds {s} list", hint) for s in ("train", "test")}
    (fmt_train, train), (fmt_test, test) = (read_ks_list(paths[s]) for s in ("train", "test"))
    if fmt_train != fmt_test:
        raise UserError(f"{paths['train']} is in the {fmt_train} format but {paths['test']} in the {fmt_test} format")
    class_names = KS_CLASSES if fmt_train == "reference" else sorted({c for _, c in train + test})

    videos = index_files(raw, VIDEO_EXTS)
    if not videos:
        raise UserError(f"no video files ({' '.join(VIDEO_EXTS)}) found under {raw}")

    def clip(vid: str, cls: str) -> Clip:
        path = videos.get(vid)
        return Clip(vid, class_names.index(cls), visual=str(path) if path else None,
                    audio_fallback=str(args.audio_dir / f"{vid}.wav") if args.audio_dir else None,
                    problem=None if path else f"no video file {vid}.* under {raw}")

    train, val = hold_out_val(train, [class_names.index(c) for _, c in train], args.val_fraction, args.seed)
    splits = {name: [clip(*r) for r in rows] for name, rows in (("train", train), ("val", val), ("test", test))}
    params = {"list_format": fmt_train, "val_fraction": args.val_fraction, "seed": args.seed,
              "lists_sha256": {s: file_sha256(path) for s, path in paths.items()}}
    prepare(args, dataset="kinetics_sounds", source={"raw": raw, "splits": split_dir, "audio_dir": args.audio_dir},
            class_names=class_names, splits=splits, recipe=RECIPES[args.audio_recipe],
            frames=FrameSpec(args.max_frames, args.frame_size, at="middle"), params=params)


if __name__ == "__main__":
    run_cli(main)
