"""Mean +- std over seeds of the runs under a directory (reads each run's summary.json).

    python train.py -m modulation=none,ogm_ge seed=0,1,2 hydra.sweep.dir=runs/toy_effect
    python scripts/summarize_runs.py runs/toy_effect
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

KEYS = ("test/acc", "test/acc_audio", "test/acc_visual")


def summarize(root: Path, keys=KEYS) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in sorted(root.rglob("summary.json")):
        s = json.loads(path.read_text())
        choices = tuple(sorted((k, v) for k, v in s.get("choices", {}).items()))
        groups[(s.get("dataset"), choices)].append(s)
    rows = []
    for (dataset, choices), runs in groups.items():
        row = {"dataset": dataset, **dict(choices), "n": len(runs), "seeds": sorted(r["seed"] for r in runs)}
        for k in keys:
            vals = [r[k] for r in runs if k in r]
            if vals:
                row[k] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="a run or sweep directory")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory (expected a run or sweep directory)", file=sys.stderr)
        return 2
    rows = summarize(args.root)
    if not rows:
        print(f"error: no summary.json under {args.root}", file=sys.stderr)
        return 2
    varying = [k for k in rows[0] if k not in ("n", "seeds", *KEYS) and not k.startswith("dataset_") and len({str(r.get(k)) for r in rows}) > 1] or ["dataset"]
    print("| " + " | ".join(varying + ["n"] + [k.replace("test/", "test ") for k in KEYS]) + " |")
    print("|" + "---|" * (len(varying) + 1 + len(KEYS)))
    for r in rows:
        cells = [str(r.get(k)) for k in varying] + [str(r["n"])]
        cells += [f"{r[k][0]:.4f} ± {r[k][1]:.4f}" if k in r else "—" for k in KEYS]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
