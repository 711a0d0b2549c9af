"""The figures of a scripts/gpu_checks.sh run as Markdown tables, for results/benchmarks.md.

    python scripts/gpu_report.py RESULTS_DIR [--out report.md]

RESULTS_DIR: the folder gpu_checks.sh fills (its archive $OUT/gpu_checks.tar.gz unpacked): steps.tsv,
the benchmark JSON files (bench_train.py --json), the train.py runs' metrics (*.jsonl) and the logs.
Every table says which file it comes from; a step that did not run (or failed) is listed, not guessed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def steps(d: Path) -> list[str]:
    rows = [ln.split("\t") for ln in (d / "steps.tsv").read_text().splitlines() if ln.strip()] \
        if (d / "steps.tsv").exists() else []
    out = ["## Steps (steps.tsv)", "", "| step | exit code | seconds |", "|---|---|---:|"]
    out += [f"| {r[0]} | {r[1]} | {r[2] if len(r) > 2 else ''} |" for r in rows]
    return out + [""]


def environment(d: Path) -> list[str]:
    for name in sorted(d.glob("*.json")):
        rep = _json(name)
        env = rep.get("environment") if isinstance(rep, dict) else None
        if env:
            return ["## Environment", "", f"{env.get('device')}, torch {env.get('torch')}, commit {env.get('commit')} "
                    f"(from {name.name})", ""]
    return []


def bench_tables(d: Path) -> list[str]:
    reports = [(path, rep) for path in sorted(d.glob("*.json")) if isinstance(rep := _json(path), dict) and "runs" in rep]
    phases = list(reports[0][1]["runs"][0]["phases_ms"]) if reports else []  # bench_train.py's, in its order
    out = ["## Training step (bench_train.py)", "",
           "| file | modulation | samples/s | step ms | " + " | ".join(phases) + " | eval/s by batch | peak MiB |",
           "|---|---|---:|---:|" + "---:|" * len(phases) + "---|---:|"]
    notes = []
    for path, rep in reports:
        for r in rep["runs"]:
            evals = ", ".join(f"{k}: {v:,.0f}" for k, v in r.get("eval_samples_per_second_by_batch", {}).items())
            out.append(f"| {path.stem} | {r['modulation']} | {r['samples_per_second']:,.0f} | {r['step_ms']:.2f} | "
                       + " | ".join(f"{r['phases_ms'][p]:.2f}" for p in phases)
                       + f" | {evals} | {r['peak_memory_bytes'] / 2**20:,.0f} |")
        if "overhead" in rep:
            o = rep["overhead"]
            notes.append(f"- {path.stem}: {rep['runs'][1]['modulation']} vs none step time {100 * o['step_time']:+.1f}% (per repeat: "
                         + ", ".join(f"{100 * x:+.1f}%" for x in o.get("step_time_each_repeat", [])) + f"), modulation phase "
                         f"{100 * o['modulation_share']:.1f}% of the step")
        if len(rep.get("all_runs", [])) > len(rep["runs"]):
            by = {}
            for r in rep["all_runs"]:
                by.setdefault(r["modulation"], []).append(r["samples_per_second"])
            notes.append(f"- {path.stem}: every repeat, samples/s: "
                         + "; ".join(f"{m} " + " / ".join(f"{x:,.0f}" for x in v) for m, v in by.items()))
    return out + [""] + notes + [""]


def packed_tables(d: Path) -> list[str]:
    out = []
    for path in sorted(d.glob("*.json")):
        rep = _json(path)
        if isinstance(rep, dict) and "packed" in rep:
            for r in rep["packed"]:
                out.append(f"| {path.stem} | {rep['processes']} | {r['modulation']} | {r['samples_per_second']:,.0f} | "
                           + ", ".join(f"{x:,.0f}" for x in r["samples_per_second_each"]) + " | "
                           + ", ".join(f"{b / 2**20:,.0f}" for b in r["peak_memory_bytes_each"]) + " |")
    head = ["## Packed processes (bench_train.py --packed)", "",
            "| file | processes | modulation | samples/s together | each | peak MiB each |", "|---|---:|---|---:|---|---|"]
    return head + out + [""] if out else []


def profiles(d: Path) -> list[str]:
    out = []
    for path in sorted(d.glob("*.json")):
        rep = _json(path)
        for r in rep.get("runs", []) if isinstance(rep, dict) else []:
            pr = r.get("profile")
            if not pr:
                continue
            busy = pr["device_busy_ms_per_step"]
            out += [f"### {path.stem}, {r['modulation']}", "",
                    f"{pr['wall_ms_per_step']:.2f} ms per step wall"
                    + (f", device busy {busy:.2f} ms ({100 * busy / pr['wall_ms_per_step']:.0f}%)" if busy is not None else "")
                    + f"; {pr['kernels_per_step']:.0f} kernels and {pr['aten_ops_per_step']:.0f} ATen operators per step.", "",
                    "| ms per step | calls per step | kernel (or operator) |", "|---:|---:|---|"]
            out += [f"| {t['ms_per_step']:.3f} | {t['calls_per_step']:.1f} | `{t['name']}` |" for t in pr["top"]]
            out.append("")
    return ["## Profiles (bench_train.py --profile)", ""] + out if out else []


def ge_micro(d: Path) -> list[str]:
    for path in sorted(d.glob("*.json")):
        rep = _json(path)
        micro = rep.get("ge_micro") if isinstance(rep, dict) else None
        if micro:
            out = [f"## GE alone (bench_train.py --ge-micro, {path.name}): {micro['elements']:,} conv-gradient elements", "",
                   "| form | ms per step | bytes allocated per step | bytes kept | ATen operators |", "|---|---:|---:|---:|---:|"]
            out += [f"| {k} | {v['ms_per_step']:.3f} | {v['bytes_allocated_per_step']:,} | {v['persistent_bytes']:,} | "
                    f"{v.get('aten_ops_per_step', '')} |" for k, v in micro.items() if isinstance(v, dict)]
            return out + [""]
    return []


def _json_line(line: str) -> dict | None:
    """A metrics.jsonl line, or None for an empty or cut one (a run killed while writing)."""
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None


def e2e(d: Path) -> list[str]:
    out = []
    for path in sorted(d.glob("*.jsonl")):
        rows = [r for r in map(_json_line, path.read_text().splitlines()) if r and "samples_per_second" in r]
        cells = " | ".join(f"{r['samples_per_second']:,.0f} / {r.get('val_samples_per_second', float('nan')):,.0f}"
                           for r in rows)
        out.append(f"| {path.stem} | {cells} |")
    if not out:
        return []
    n = max(line.count("|") for line in out) - 2
    head = ["## train.py from the store (metrics.jsonl): train / val samples/s by epoch", "",
            "| run | " + " | ".join(f"epoch {i}" for i in range(n)) + " |", "|---|" + "---|" * n]
    return head + out + [""]


def tests(d: Path) -> list[str]:
    log = d / "tests_cuda.log"
    if not log.exists():
        return []
    tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-1:]
    return ["## CUDA tests (tests_cuda.log)", "", *[f"`{ln}`" for ln in tail], ""]


def report(d: Path) -> str:
    parts = environment(d) + steps(d) + bench_tables(d) + packed_tables(d) + ge_micro(d) + e2e(d) + tests(d) + profiles(d)
    return "\n".join(["# gpu_checks.sh results", ""] + parts)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if not args.results.is_dir():
        p.error(f"{args.results}: no such folder (expected the results folder of scripts/gpu_checks.sh)")
    text = report(args.results)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return text


if __name__ == "__main__":
    main()
