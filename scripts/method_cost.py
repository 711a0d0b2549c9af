"""Training time per sample of each balancing method relative to no modulation, measured in one
sweep run back to back on an otherwise idle machine (the methods table's own column comes from its
sweeps, which may have shared the machine with other work).

    python train.py -m experiment=methods dataset=toy seed=0 epochs=5 hydra.sweep.dir=runs/method_cost
    python scripts/method_cost.py runs/method_cost > results/method_cost.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from reproduce_table import git_commit, machine, seconds_per_sample


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python scripts/method_cost.py <multirun sweep dir of experiment=methods>", file=sys.stderr)
        return 2
    runs = {}
    for summary in sorted(Path(argv[0]).rglob("summary.json")):
        s = json.loads(summary.read_text())
        if s.get("status") == "ok":
            runs.setdefault(s["choices"].get("modulation", "?"), []).append(summary.parent)
    if "none" not in runs:
        print(f"error: no finished modulation=none run under {argv[0]}: it is the reference", file=sys.stderr)
        return 2
    base = seconds_per_sample(runs["none"])
    dataset = json.loads(next(Path(argv[0]).rglob("summary.json")).read_text())["dataset"]
    print(f"# Step cost of each method ({dataset})\n")
    print(f"Training time per sample relative to `modulation=none`, per run the median epoch of "
          f"1 / samples_per_second, runs back to back in one sweep (`{Path(argv[0]).name}`); stages outside the "
          f"epochs (UMT's teachers) not included. Commit {git_commit()}, {machine()}.\n")
    print("| modulation | runs | ms per sample | step cost |\n|---|---:|---:|---:|")
    for name, dirs in sorted(runs.items(), key=lambda kv: seconds_per_sample(kv[1]) or 0):
        sec = seconds_per_sample(dirs)
        print(f"| {name} | {len(dirs)} | {1000 * sec:.3f} | {sec / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
