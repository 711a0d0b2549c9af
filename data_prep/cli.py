"""The command line every dataset module shares: its options, the frame-size type, and run_cli,
which turns a UserError into one line `error: ...` and exit status 2."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from data_prep.store import UserError

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
    p.add_argument("--overwrite", action="store_true",
                   help="delete the preparation already in --out first (needed to change its parameters)")
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
