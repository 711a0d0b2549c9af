"""AVE (Tian et al., ECCV 2018): 4,143 event segments in 10 s videos, 28 categories.

    python -m data_prep.ave --raw RAW_DIR --out DATA_DIR [--splits DIR] [--audio-recipe fbank]

Raw layout (the AVE_Dataset release): RAW/AVE/<VideoID>.mp4 and, in --splits (default --raw),
trainSet.txt, valSet.txt, testSet.txt with `Category&VideoID&Quality&StartTime&EndTime` lines
(else the lists bundled in data_prep/splits/ave).
The official train/val/test splits are kept. A clip is the whole 10 s video (as in OGM-GE).
Class index: categories sorted by name (the reference AVDataset does sorted(classes).index(...)).
A video listed twice in one split with different categories is ambiguous for one-label
classification and is skipped (the reference's AVDataset drops such repeated ids as well).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from data_prep.cli import base_parser, run_cli
from data_prep.common import Clip, file_sha256, find_lists, prepare, read_lines, require
from data_prep.decode import FrameSpec
from data_prep.recipes import RECIPES
from data_prep.store import UserError

LISTS = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}


def read_ave_list(path: Path) -> list[tuple[str, str]]:
    """(video_id, category) per `&`-separated row; a header row (Annotations.txt) is skipped."""
    rows = []
    for n, line in enumerate(read_lines(path), 1):
        parts = line.split("&")
        if len(parts) != 5 or not parts[0] or not parts[1]:
            raise UserError(f"{path} line {n}: expected `Category&VideoID&Quality&StartTime&EndTime`, got {line!r}")
        if n == 1 and parts[:2] == ["Category", "VideoID"]:
            continue
        rows.append((parts[1], parts[0]))
    return rows


def group_by_video(rows: list[tuple[str, str]]) -> dict[str, list[str]]:
    """video_id -> its distinct categories, in order of first appearance (dict keeps list order)."""
    cats: dict[str, list[str]] = defaultdict(list)
    for vid, cat in rows:
        if cat not in cats[vid]:
            cats[vid].append(cat)
    return cats


def main(argv=None) -> None:
    p = base_parser("python -m data_prep.ave", __doc__, max_frames=10,
                    recipes=("spectrogram", "fbank"),
                    raw_help="the AVE_Dataset folder holding AVE/*.mp4",
                    splits_help="folder with trainSet.txt, valSet.txt, testSet.txt (default: --raw if it holds them, "
                                "else the bundled data_prep/splits/ave)", holdout=False)
    args = p.parse_args(argv)

    raw = require(args.raw, "AVE raw folder")
    video_dir = require(raw / "AVE", "AVE video folder", "AVE/<VideoID>.mp4 of the AVE_Dataset release")
    split_dir = find_lists(args.splits, raw, "ave", list(LISTS.values()))
    paths = {s: require(split_dir / name, f"AVE {s} list", "the AVE_Dataset split files; pass --splits DIR")
             for s, name in LISTS.items()}
    rows = {s: read_ave_list(path) for s, path in paths.items()}
    class_names = sorted({cat for r in rows.values() for _, cat in r})

    def clip(vid: str, cats: list[str], list_name: str) -> Clip:
        path = video_dir / f"{vid}.mp4"
        problem = None
        if len(cats) > 1:
            problem = f"listed with {len(cats)} categories in {list_name} ({', '.join(cats)}): ambiguous label"
        elif not path.exists():
            problem = f"missing AVE/{vid}.mp4"
        return Clip(vid, class_names.index(cats[-1]), visual=str(path),
                    audio_fallback=str(args.audio_dir / f"{vid}.wav") if args.audio_dir else None, problem=problem)

    splits = {s: [clip(vid, cats, LISTS[s]) for vid, cats in group_by_video(r).items()] for s, r in rows.items()}
    params = {"lists_sha256": {s: file_sha256(path) for s, path in paths.items()}}
    prepare(args, dataset="ave", source={"raw": raw, "splits": split_dir, "audio_dir": args.audio_dir},
            class_names=class_names, splits=splits, recipe=RECIPES[args.audio_recipe],
            frames=FrameSpec(args.max_frames, args.frame_size, at="middle"), params=params)


if __name__ == "__main__":
    run_cli(main)
