"""CREMA-D (Cao et al. 2014): 7,442 clips of 91 actors, six emotions.

    python -m data_prep.cremad --raw RAW_DIR --out DATA_DIR [--splits DIR] [--split-mode reference]

Raw layout (the public release): RAW/AudioWAV/<clip>.wav (16 kHz) and RAW/VideoFlash/<clip>.flv
(480x360, 30 fps); clip names are <actor>_<sentence>_<emotion>_<level>, e.g. 1001_DFA_ANG_XX.

Splits:
  reference             the OGM-GE lists train.csv / test.csv (`<clip>,<EMO>`); 10% of the train
                        list's actors (seeded) become val, so the fair protocol selects epochs on
                        val and never on test. Test stays the reference's (not speaker-independent).
  speaker_independent   actors split train/val/test (70/10/20 by default), no actor in two splits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.cli import base_parser, run_cli
from data_prep.common import (Clip, file_sha256, find_lists, holdout_names, index_files, prepare, read_lines,
                              require)
from data_prep.decode import FrameSpec
from data_prep.recipes import RECIPES
from data_prep.store import UserError

EMOTIONS = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]   # label = position (the reference's mapping)


def actor(clip_id: str) -> str:
    return clip_id.split("_")[0]


def read_split_list(path: Path) -> list[tuple[str, str]]:
    """`<clip>,<EMO>` lines (the reference files: CRLF, with or without a UTF-8 BOM)."""
    rows = []
    for n, line in enumerate(read_lines(path), 1):
        clip, _, emo = line.partition(",")
        if emo.strip() not in EMOTIONS or not clip.strip():
            raise UserError(f"{path} line {n}: expected `<clip>,<EMO>` with EMO in {'/'.join(EMOTIONS)}, got {line!r}")
        rows.append((clip.strip(), emo.strip()))
    return rows


def reference_splits(lists: dict[str, list], val_fraction: float, seed: int):
    """train/test from the lists; the clips of a seeded 10% of the train actors move to val."""
    val_actors = set(holdout_names((actor(c) for c, _ in lists["train"]), val_fraction, seed))
    return {
        "train": [r for r in lists["train"] if actor(r[0]) not in val_actors],
        "val": [r for r in lists["train"] if actor(r[0]) in val_actors],
        "test": lists["test"],
    }


def speaker_independent_splits(rows: list, val_fraction: float, test_fraction: float, seed: int):
    """Actors shuffled with the seed: the first test_fraction go to test, the next val_fraction to val."""
    actors = sorted({actor(c) for c, _ in rows})
    order = np.random.default_rng(seed).permutation(actors).tolist()
    n_test, n_val = round(test_fraction * len(actors)), round(val_fraction * len(actors))
    part = {a: "test" for a in order[:n_test]} | {a: "val" for a in order[n_test:n_test + n_val]}
    return {s: [r for r in rows if part.get(actor(r[0]), "train") == s] for s in ("train", "val", "test")}


def to_clips(rows: list, raw: Path, have_wav: set, have_flv: set) -> list[Clip]:
    clips = []
    for clip_id, emo in rows:
        missing = [f"{d}/{clip_id}{ext}" for d, ext, have in (("AudioWAV", ".wav", have_wav),
                                                              ("VideoFlash", ".flv", have_flv))
                   if clip_id not in have]
        clips.append(Clip(clip_id, EMOTIONS.index(emo), visual=str(raw / "VideoFlash" / f"{clip_id}.flv"),
                          audio=str(raw / "AudioWAV" / f"{clip_id}.wav"),
                          problem=f"missing {' and '.join(missing)}" if missing else None))
    return clips


def main(argv=None) -> None:
    p = base_parser("python -m data_prep.cremad", __doc__, max_frames=4,
                    recipes=("cremad", "fbank"),
                    raw_help="the CREMA-D release folder holding AudioWAV/ and VideoFlash/",
                    splits_help="folder with the reference lists train.csv and test.csv (default: --raw if it "
                                "holds them, else the bundled data_prep/splits/cremad)",
                    audio_dir=False)
    p.add_argument("--split-mode", choices=("reference", "speaker_independent"), default="reference",
                   help="see above (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.2, metavar="F",
                   help="speaker_independent: share of actors in test (default: %(default)s)")
    args = p.parse_args(argv)

    raw = args.raw
    require(raw, "CREMA-D raw folder")
    have_wav = set(index_files(require(raw / "AudioWAV", "CREMA-D audio folder", "AudioWAV/*.wav of the release"),
                               (".wav",)))
    have_flv = set(index_files(require(raw / "VideoFlash", "CREMA-D video folder", "VideoFlash/*.flv of the release"),
                               (".flv",)))
    # speaker_independent: lists only from --splits or --raw; without them every wav (never the bundled lists)
    split_dir = find_lists(args.splits, raw, "cremad", ["train.csv", "test.csv"],
                           bundled=args.split_mode == "reference")
    list_paths = {s: split_dir / f"{s}.csv" for s in ("train", "test")}
    hint = "the OGM-GE data/CREMAD lists; pass --splits DIR"

    if args.split_mode == "reference":
        lists = {s: read_split_list(require(path, f"CREMA-D {s} list", hint)) for s, path in list_paths.items()}
        rows = reference_splits(lists, args.val_fraction, args.seed)
    else:
        if all(path.exists() for path in list_paths.values()):
            pool = [r for path in list_paths.values() for r in read_split_list(path)]
        else:   # no lists: every clip of the release, emotion from the clip name
            pool = [(c, c.split("_")[2]) for c in sorted(have_wav) if c.count("_") == 3 and c.split("_")[2] in EMOTIONS]
        rows = speaker_independent_splits(pool, args.val_fraction, args.test_fraction, args.seed)

    splits = {s: to_clips(r, raw, have_wav, have_flv) for s, r in rows.items()}
    actors = {s: sorted({actor(c) for c, _ in r}) for s, r in rows.items()}
    params = {"split_mode": args.split_mode, "val_fraction": args.val_fraction, "seed": args.seed,
              "lists_sha256": {s: file_sha256(path) for s, path in list_paths.items() if path.exists()}}
    if args.split_mode == "speaker_independent":
        params["test_fraction"] = args.test_fraction
    prepare(args, dataset="cremad", source={"raw": raw, "splits": split_dir}, class_names=EMOTIONS, splits=splits,
            recipe=RECIPES[args.audio_recipe], frames=FrameSpec(args.max_frames, args.frame_size, at="first"),
            params=params, extra={"actors": actors})


if __name__ == "__main__":
    run_cli(main)
