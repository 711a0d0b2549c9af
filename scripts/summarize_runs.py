"""Mean ± std over seeds of the runs under a directory (each run's summary.json and config).

    python train.py -m modulation=none,ogm_ge seed=0,1,2 hydra.sweep.dir=runs/toy_effect
    python scripts/summarize_runs.py runs/toy_effect

Runs are grouped by their whole resolved config except the seed (and keys that do not change
the numbers: device, workers, logger, paths), so a sweep over any value (an alpha, a fusion) gets
one row per value. Failed and unfinished runs are skipped and counted; n = 1 shows no spread.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

KEYS = ("test/acc", "test/acc_audio", "test/acc_visual")
IGNORED = ("seed", "device", "num_workers", "resume", "data_root", "logger.", "dataset.root", "dataset.prep_command")


def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, val in node.items() for k, v in flatten(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else node}


def run_config(run: Path, summary: dict) -> dict:
    path = run / "config_resolved.yaml"
    cfg = flatten(yaml.safe_load(path.read_text())) if path.exists() else {f"choices.{k}": v for k, v in summary.get("choices", {}).items()}
    return {k: v for k, v in cfg.items() if not k.startswith(IGNORED)}


def summarize(root: Path, keys=KEYS) -> tuple[list[dict], dict[str, list[Path]]]:
    """Rows of (mean, std) per configuration, and the runs skipped: {"failed": [...], "unfinished": [...]}."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    summaries = {p.parent: json.loads(p.read_text()) for p in sorted(root.rglob("summary.json"))}
    started = {p.parent for p in root.rglob("config_resolved.yaml")}
    skipped = {"failed": sorted(r for r, s in summaries.items() if s.get("status", "ok") != "ok"),
               "unfinished": sorted(started - set(summaries))}
    for run, s in summaries.items():
        if s.get("status", "ok") == "ok":
            groups[tuple(sorted(run_config(run, s).items(), key=lambda kv: kv[0]))].append(s)
    rows = []
    for config, runs in groups.items():
        row = {"config": dict(config), "n": len(runs), "seeds": sorted(r["seed"] for r in runs)}
        for k in keys:
            vals = [r[k] for r in runs if k in r]
            if vals:
                row[k] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else None)
        rows.append(row)
    return rows, skipped


def cell(value: tuple) -> str:
    mean, std = value
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"  # one run has no spread


def table(rows: list[dict], keys=KEYS) -> str:
    """Markdown: the config keys that differ between rows, n, then mean ± std per metric."""
    all_keys = sorted({k for r in rows for k in r["config"]})
    varying = [k for k in all_keys if len({str(r["config"].get(k)) for r in rows}) > 1] or ["dataset.name"]
    head = [k.removesuffix(".name") for k in varying] + ["n"] + [k.replace("test/", "test ") for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["config"].get(k, "—")) for k in varying] + [str(r["n"])]
        lines.append("| " + " | ".join(cells + [cell(r[k]) if k in r else "—" for k in keys]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="a run or sweep directory")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory (expected a run or sweep directory)", file=sys.stderr)
        return 2
    rows, skipped = summarize(args.root)
    for why, runs in skipped.items():
        if runs:
            print(f"skipped {len(runs)} {why} run(s): {', '.join(str(r.relative_to(args.root)) for r in runs)}", file=sys.stderr)
    if not rows:
        print(f"error: no finished run (summary.json with status ok) under {args.root}", file=sys.stderr)
        return 2
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
