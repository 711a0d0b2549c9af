"""Reproduce the paper's tables: one Hydra sweep per table row, then mean ± std over seeds beside the paper.

    python scripts/reproduce_table.py                            # every table, each on its own datasets
    python scripts/reproduce_table.py --tables main --datasets toy,avdigits
    python scripts/reproduce_table.py --smoke                    # the whole pipeline, tiny toy settings (~1 min)
    python scripts/reproduce_table.py --dry-run                  # print the commands, run nothing

For each table (tables/<table>.yaml) x protocol x dataset x row, one multirun:

    train.py -m experiment=<family> dataset=<d> protocol=<p> <row overrides> seed=0,1,2 skip_done=true
        hydra.sweep.dir=<runs>/<table>/<protocol>/<dataset>/<row> hydra.sweep.subdir=s${seed}

Finished runs (summary.json with status ok) are not run again, so a second call continues where the
first stopped (delete a row's sweep directory to run it again with other settings). Then <out>/<table>_<protocol>.md, .csv and .png: test metrics in % at the selected and at
the last epoch, mean ± sample std over seeds and n (runs grouped as scripts/summarize_runs.py does: by
their whole config except the seed), the paper's number (results/paper/<table>.csv, with its source)
and reproduced - paper. A dataset that is not prepared is a row naming its prepare command.

Protocols (--protocols): by default `fair` (epoch selected on val) for toy, avdigits and custom, which
the paper has no numbers for, and both `paper` (the reference's: epoch selected on the test set) and
`fair` for the paper's datasets. Exit status 1 when a run failed (the tables are still written).
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

from summarize_runs import run_config

ROOT = Path(__file__).resolve().parents[1]
TABLES_DIR, DATASET_DIR, PAPER_DIR = ROOT / "tables", ROOT / "configs" / "dataset", ROOT / "results" / "paper"
PAPER_DATASETS = ("cremad", "kinetics_sounds", "vggsound", "ave")
PROTOCOLS = ("paper", "fair")
SMOKE = ["epochs=2", "device=cpu"]  # --smoke, every dataset; toy also gets SMOKE_TOY
SMOKE_TOY = ["dataset.n_train=128", "dataset.n_val=64", "dataset.n_test=64", "dataset.spec_shape=[16,12]",
             "dataset.image_size=12", "model.width=4"]
CSV_FIELDS = ["dataset", "row", "epoch", "metric", "n", "mean", "std", "paper", "diff", "paper_source", "note"]
SELECTION = {"test": "epoch selected on the test set (the reference's protocol)",
             "val": "epoch selected on the val split; test measured once, on the selected checkpoint"}


# --- specs, datasets, commands ---------------------------------------------------------------------
def names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_spec(table: str) -> dict:
    spec = yaml.safe_load((TABLES_DIR / f"{table}.yaml").read_text())
    spec.setdefault("overrides", [])
    return spec


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9.+-]+", "_", re.sub(r"\s*\+\s*", "+", label.lower())).strip("_")


def prep_status(dataset: str, data_root: str) -> str | None:
    """None if the dataset can be trained on, else 'not prepared: <the command that prepares it>'."""
    cfg = yaml.safe_load((DATASET_DIR / f"{dataset}.yaml").read_text())
    if cfg.get("loader") == "toy" or (Path(data_root) / dataset / "manifest.json").exists():
        return None
    return "not prepared: " + str(cfg.get("prep_command", f"see data_prep/README.md ({dataset})")).replace("${data_root}", data_root)


def default_protocols(dataset: str) -> list[str]:
    return list(PROTOCOLS) if dataset in PAPER_DATASETS else ["fair"]


def sweep_dir(runs: Path, table: str, protocol: str, dataset: str, label: str) -> Path:
    return runs / table / protocol / dataset / slug(label)


def command(spec: dict, dataset: str, protocol: str, row: dict, seeds: list[int], out: Path, extra: list[str], data_root: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "-m", f"experiment={spec['family']}", f"dataset={dataset}",
            f"protocol={protocol}", f"data_root={data_root}", *spec["overrides"], *row["overrides"], *extra,
            f"seed={','.join(map(str, seeds))}", "skip_done=true", f"hydra.sweep.dir={out}", "hydra.sweep.subdir=s${seed}"]


def shown(cmd: list[str]) -> str:
    """The command as a user would type it (no absolute paths of this machine)."""
    return shlex.join([".venv/bin/python", "train.py", *cmd[2:]])


def done(out: Path, seeds: list[int]) -> bool:
    def ok(p: Path) -> bool:
        return p.exists() and json.loads(p.read_text()).get("status") == "ok"
    return all(ok(out / f"s{s}" / "summary.json") for s in seeds)


def run_row(cmd: list[str], out: Path, quiet: bool) -> tuple[int, str]:
    """Run one row's sweep (its output streamed, or into <sweep dir>/reproduce.log when quiet)."""
    if not quiet:
        return subprocess.run(cmd).returncode, ""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "reproduce.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    lines = [ln for ln in (out / "reproduce.log").read_text().splitlines() if ln.startswith("error")]
    return rc, lines[-1] if lines else ""


# --- from run directories to cells ----------------------------------------------------------------
def metric(summary: dict, key: str, last: bool):
    """A test metric of one run at the selected (or last) epoch. Under protocol=paper the selection
    split is test, so the selected epoch's test numbers may be the `best` (or `last`) val/* record."""
    k = key.replace("test/", "last_test/", 1) if last else key
    if k in summary:
        return summary[k]
    if summary.get("selection_split") == "test" and key.startswith("test/"):
        return summary.get("last" if last else "best", {}).get("val/" + key.removeprefix("test/"))
    return None


def collect(row_dir: Path) -> tuple[list[dict], list[str]]:
    """Finished runs grouped by config except the seed (as summarize_runs), and notes on the others."""
    groups: dict[tuple, list] = defaultdict(list)
    notes = []
    if not row_dir.is_dir():
        return [], notes
    for path in sorted(row_dir.rglob("summary.json")):
        s = json.loads(path.read_text())
        if s.get("status", "ok") != "ok":
            notes.append(f"{path.parent.name} failed: {s.get('reason', '?')}")
            continue
        cfg = run_config(path.parent, s)
        groups[tuple(sorted(cfg.items(), key=lambda kv: kv[0]))].append((s, path.parent))
    unfinished = {p.parent for p in row_dir.rglob("config_resolved.yaml")} - {p.parent for p in row_dir.rglob("summary.json")}
    notes += [f"{p.name} unfinished (no summary.json)" for p in sorted(unfinished)]
    log = row_dir / "reproduce.log"  # --quiet: train.py's own error when it ran nothing (e.g. a refused override)
    if not groups and not notes and log.exists():
        notes += [ln for ln in log.read_text().splitlines() if ln.startswith("error")][-1:]
    return [{"config": dict(k), "runs": [s for s, _ in v], "dirs": [d for _, d in v]} for k, v in groups.items()], notes


def stats(values: list) -> tuple | None:
    """(mean, sample std or None for one value, n) in %, or None when no run has the metric."""
    vals = [100 * v for v in values if v is not None]
    if not vals:
        return None
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals)


def load_paper(table: str) -> dict:
    path = PAPER_DIR / f"{table}.csv"
    if not path.exists():
        return {}
    return {(r["row"], r["dataset"], r["metric"]): r for r in csv.DictReader(path.open()) if r.get("value", "").strip()}


def build_rows(spec: dict, table: str, protocol: str, datasets: list[str], runs: Path, data_root: str) -> list[dict]:
    """One record per (dataset, row group): label, n, notes and per (metric, epoch) the stats."""
    paper, records = load_paper(table), []
    for d in datasets:
        status = prep_status(d, data_root) if d in names(DATASET_DIR) else f"unknown dataset {d}"
        have_runs = any(any(sweep_dir(runs, table, protocol, d, r["label"]).glob("*/summary.json")) for r in spec["rows"])
        if status and not have_runs:
            records.append({"dataset": d, "label": status, "n": None, "cells": {}, "paper_row": None, "notes": []})
        for row in spec["rows"]:
            groups, notes = collect(sweep_dir(runs, table, protocol, d, row["label"]))
            has_paper = any(k[:2] == (row["label"], d) for k in paper)
            if not groups and status and not has_paper:
                continue  # an unprepared dataset: only the rows the paper has a number for
            varying = [k for k in sorted({k for g in groups for k in g["config"]})
                       if len({str(g["config"].get(k)) for g in groups}) > 1]
            for g in groups or [{"config": {}, "runs": [], "dirs": []}]:
                setting = ", ".join(f"{k.removesuffix('.name')}={g['config'].get(k)}" for k in varying)
                label = row["label"] + (f" ({setting})" if setting else "")
                cells = {}
                for m in spec["metrics"]:
                    if (m.get("datasets") and d not in m["datasets"]) or m["key"] in row.get("skip", []):
                        continue
                    for last in (False, True):
                        cells[m["key"], last] = stats([metric(s, m["key"], last) for s in g["runs"]])
                records.append({"dataset": d, "label": label, "paper_row": row["label"], "n": len(g["runs"]),
                                "cells": cells, "notes": notes, "runs": g["runs"], "dirs": g["dirs"],
                                "seconds_per_sample": seconds_per_sample(g["dirs"])})
    if base := spec.get("cost_baseline"):  # each row's time per training sample / the baseline row's
        for r in records:
            b = next((x for x in records if x["dataset"] == r["dataset"] and x.get("paper_row") == base), None)
            if r.get("seconds_per_sample") and b and b.get("seconds_per_sample"):
                r["cost"] = r["seconds_per_sample"] / b["seconds_per_sample"]
    return records


def seconds_per_sample(dirs: list[Path]) -> float | None:
    """Training time per sample: for each run the median over its epochs of 1 / samples_per_second
    (metrics.jsonl; the median keeps an epoch slowed by other work on the machine from dominating),
    then the mean over runs. None without timings."""
    per_run = []
    for d in dirs:
        path = d / "metrics.jsonl"
        rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
        times = [1 / r["samples_per_second"] for r in rows if r.get("samples_per_second")]
        if times:
            per_run.append(statistics.median(times))
    return statistics.mean(per_run) if per_run else None


# --- writing ------------------------------------------------------------------------------------------
def fmt(c) -> str:
    if c is None:
        return "—"
    mean, std, _ = c
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.system()} {platform.machine()}, {cpu}, {gpu}, torch {torch.__version__}"


def git_commit() -> str:
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + (" (with uncommitted changes outside results/)" if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results") else "")


def joined(r: dict, m: dict, last: bool, paper: dict) -> tuple:
    """One cell: the reproduced (mean, std, n) or None, the paper's CSV line or None, reproduced - paper."""
    c = r["cells"].get((m["key"], last))
    p = paper.get((r["paper_row"], r["dataset"], m["key"]))
    return c, p, c[0] - float(p["value"]) if c and p else None


def header(spec: dict, table: str, protocol: str, records: list[dict], cmdline: str, where: str) -> list[str]:
    splits = sorted({s.get("selection_split") for r in records for s in r.get("runs", [])} - {None})
    split_text = "; ".join(f"`{s}`: {SELECTION.get(s, 'epoch selected on ' + s)}" for s in splits) or \
        SELECTION["test" if protocol == "paper" else "val"] + "; no finished run yet"
    metas = [json.loads((d / "meta.json").read_text()) for r in records for d in r.get("dirs", []) if (d / "meta.json").exists()]
    devices = sorted({f"{m['device']['type']} ({m['device']['name']})" for m in metas if "device" in m})
    commits = sorted({(m["git"]["commit"] or "unknown")[:7] + ("*" if m["git"].get("dirty") else "") for m in metas if m.get("git")})
    ran = (f"; the runs ran on {', '.join(devices)}" if devices else "") + \
        (f", at commit{'s' if len(commits) > 1 else ''} {', '.join(commits)} (* with uncommitted changes)" if commits else "")
    return [f"# {spec['title']}: protocol `{protocol}`", "",
            f"Made by `{cmdline}` at commit {git_commit()}, on {where}{ran}.",
            f"Protocol `{protocol}`, {split_text}.", "",
            f"Test metrics in %, mean ± sample std over seeds (n runs; one run: no ±). `paper`: results/paper/{table}.csv "
            "(each number's source is there; — = not given or not checked). Δ = reproduced − paper."
            + (" The paper selected its epoch on the test set, so under this protocol Δ also holds the gap between "
               "selecting on val and on test." if protocol == "fair" else "")]


def write_table(spec: dict, table: str, protocol: str, records: list[dict], out: Path, cmdline: str, where: str) -> list[Path]:
    """<out>/<table>_<protocol>.md (selected and last epoch), .csv (one line per cell) and .png."""
    paper, metrics = load_paper(table), spec["metrics"]
    compared = {k[2] for k in paper}  # metrics the paper has a number for get paper and Δ columns
    lines, rows_csv, footnotes = header(spec, table, protocol, records, cmdline, where), [], {}
    for last in (False, True):
        epoch = "last" if last else "selected"
        cost = bool(spec.get("cost_baseline"))
        head = ["dataset", "row", "n"] + [h for m in metrics for h in [m["label"]] + (
            [f"paper {m['label']}", f"Δ {m['label']}"] if m["key"] in compared else [])] + (["step cost"] if cost else [])
        lines += ["", f"## Test at the {epoch} epoch", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in records:
            if r["n"] is None:  # not prepared
                lines.append("| " + " | ".join([r["dataset"], r["label"]] + ["—"] * (len(head) - 2)) + " |")
                rows_csv += [] if last else [{"dataset": r["dataset"], "note": r["label"]}]
                continue
            cells = [r["dataset"], r["label"], str(r["n"])]
            for m in metrics:
                c, p, diff = joined(r, m, last, paper)
                cells.append(fmt(c) + (f" (n={c[2]})" if c and c[2] != r["n"] else ""))
                if m["key"] in compared:
                    mark = "†" * footnotes.setdefault(p["note"], len(footnotes) + 1) if p and p.get("note") else ""
                    cells += [f"{float(p['value']):.1f}{mark}" if p else "—", f"{diff:+.1f}" if diff is not None else "—"]
                if c or p:
                    rows_csv.append({"dataset": r["dataset"], "row": r["label"], "epoch": epoch, "metric": m["key"],
                                     "n": c[2] if c else 0, "mean": round(c[0], 4) if c else "",
                                     "std": round(c[1], 4) if c and c[1] is not None else "", "paper": p["value"] if p else "",
                                     "diff": round(diff, 4) if diff is not None else "", "paper_source": p["source"] if p else "",
                                     "note": "; ".join(filter(None, [p and p.get("note"), *r["notes"]]))})
            if cost:
                cells.append(f"{r['cost']:.2f}x" if r.get("cost") else "—")
                if not last and r.get("cost"):
                    rows_csv.append({"dataset": r["dataset"], "row": r["label"], "epoch": "all", "metric": "step_cost",
                                     "n": r["n"], "mean": round(r["cost"], 4)})
            lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {'†' * i} {n}" for n, i in footnotes.items()]
    if spec.get("cost_baseline"):
        notes.append(f"- step cost: training time per sample relative to `{spec['cost_baseline']}` on the same dataset, "
                     "from the runs' own epoch timings (per run the median epoch, then the mean over runs); a method's "
                     "stages outside the epochs (UMT's teacher training) are not in it.")
    notes += [f"- {r['dataset']} / {r['label']}: {n}" for r in records if r["n"] is not None for n in r["notes"]]
    if missing := [m["label"] for m in metrics if m["key"] not in compared]:
        notes.append(f"- The paper's numbers for {', '.join(missing)}: not given here or not checked.")
    if restricted := [f"{m['label']} ({', '.join(m['datasets'])})" for m in metrics if m.get("datasets")]:
        notes.append(f"- Reported only for: {'; '.join(restricted)}.")
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path, png = (out / f"{table}_{protocol}.{ext}" for ext in ("md", "csv", "png"))
    md.write_text("\n".join(lines + ["", "Notes:", *notes]) + "\n")
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["table", "protocol", *CSV_FIELDS])
        w.writeheader()
        w.writerows({"table": table, "protocol": protocol, **row} for row in rows_csv)
    plot(spec, protocol, records, paper, png)
    return [md, csv_path, png]


def plot(spec: dict, protocol: str, records: list[dict], paper: dict, path: Path) -> None:
    """Grouped bars: the first metric at the selected epoch, one group per dataset, one bar per row,
    error bars = std over seeds; the paper's numbers as black markers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label = spec["metrics"][0]["key"], spec["metrics"][0]["label"]
    data = [r for r in records if r["n"] is not None]
    datasets = list(dict.fromkeys(r["dataset"] for r in data))
    plotted = [r for r in data if r["cells"].get((key, False)) or paper.get((r["paper_row"], r["dataset"], key))]
    labels = list(dict.fromkeys(r["label"] for r in plotted))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.35 * len(labels) * max(len(datasets), 1)), 3.6))
    width = 0.8 / max(len(labels), 1)
    for j, lab in enumerate(labels):
        xs, ys, es, px, py = [], [], [], [], []
        for i, d in enumerate(datasets):
            r = next((r for r in data if r["dataset"] == d and r["label"] == lab), None)
            if r is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            c = r["cells"].get((key, False))
            if c:
                xs.append(x), ys.append(c[0]), es.append(c[1] or 0.0)
            p = paper.get((r["paper_row"], d, key))
            if p:
                px.append(x), py.append(float(p["value"]))
        if xs:
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=lab, color=colors[j % len(colors)])
        ax.plot(px, py, "kx", markersize=7)
    if any(paper.get((r["paper_row"], r["dataset"], key)) for r in data):
        ax.plot([], [], "kx", label="paper")
    if not any(r["cells"].get((key, False)) for r in data):
        ax.text(0.5, 0.5, "no finished run yet", ha="center", va="center", transform=ax.transAxes)
    ran = {r["dataset"] for r in data if any(r["cells"].values())}
    ax.set_xticks(range(len(datasets)), [d if d in ran else f"{d}\n(no runs)" for d in datasets])
    ax.set_xlim(-0.5, len(datasets) - 0.5)
    ax.set_ylim(bottom=0)
    ax.set_ylabel(f"test {label} (%)")
    ax.set_title(f"{spec['title']}\nprotocol {protocol}, selected epoch, mean ± std over seeds", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- command line ---------------------------------------------------------------------------------------
def make_plan(args, runs: Path) -> list[tuple]:
    """(table, spec, protocol, datasets to run, datasets to show: those and any with runs on disk)."""
    plan = []
    for table in args.tables or (["main"] if args.smoke else names(TABLES_DIR)):
        spec = load_spec(table)
        datasets = args.datasets or (["toy"] if args.smoke else spec["datasets"])
        for protocol in spec.get("protocols", PROTOCOLS):  # e.g. optim: protocol=paper pins the reference's SGD
            ds = [d for d in datasets if protocol in (args.protocols or default_protocols(d))]
            on_disk = sorted(p.name for p in (runs / table / protocol).glob("*") if p.is_dir() and p.name not in ds)
            if ds or on_disk:
                plan.append((table, spec, protocol, ds, ds + on_disk))
    return plan


def run_plan(plan: list[tuple], args, runs: Path, quiet: bool) -> list[str]:
    """Run (or, with --dry-run, print) every row's sweep, one progress line per row; the rows that failed."""
    jobs = [(table, spec, protocol, d) for table, spec, protocol, ds, _ in plan for d in ds]
    n_rows, i, failed = sum(len(spec["rows"]) for _, spec, _, _ in jobs), 0, []
    for table, spec, protocol, d in jobs:
        if status := prep_status(d, args.data_root):
            i += len(spec["rows"])
            print(f"[{i}/{n_rows}] {table} · {protocol} · {d}: {status}", flush=True)
            continue
        seeds = args.seeds or ([0, 1] if args.smoke else spec["seeds"])
        extra = (SMOKE + (SMOKE_TOY if d == "toy" else [])) if args.smoke else []
        if args.launcher != "basic":  # each row's seeds as parallel jobs (configs/hydra/launcher/)
            extra = extra + [f"hydra/launcher={args.launcher}", *shlex.split(args.launcher_args or "")]
        for row in spec["rows"]:
            i += 1
            head = f"[{i}/{n_rows}] {table} · {protocol} · {d} · {row['label']}:"
            target = sweep_dir(runs, table, protocol, d, row["label"])
            cmd = command(spec, d, protocol, row, seeds, target, extra, args.data_root)
            if args.dry_run:
                print(f"{head}\n  {shown(cmd)}")
            elif done(target, seeds):
                print(f"{head} {len(seeds)} runs finished before, not run again", flush=True)
            else:
                print(f"{head} seeds {','.join(map(str, seeds))} ...", flush=True)
                t0 = time.perf_counter()
                rc, err = run_row(cmd, target, quiet)
                state = "done" if rc == 0 else f"train.py exited with {rc}" + (f": {err}" if err else "") \
                    + (f" (log: {target / 'reproduce.log'})" if quiet else "")
                print(f"{head} {state} ({time.perf_counter() - t0:.0f} s)", flush=True)
                failed += [f"{table}/{protocol}/{d}/{row['label']}"] if rc else []
    return failed


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"error: {message}\n")


def choice_list(allowed: list[str], what: str):
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        items = allowed if items == ["all"] else items
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(map(repr, bad)) or repr(text)}; expected a comma-separated list of {allowed} (or all)")
        return items
    return parse


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of seeds; expected comma-separated integers, e.g. 0,1,2")
    return seeds


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    tables = names(TABLES_DIR)
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", type=choice_list(tables, "table"), help=f"comma-separated or all (default all: {','.join(tables)}; --smoke: main)")
    ap.add_argument("--datasets", type=choice_list(names(DATASET_DIR), "dataset"), help="default: each table's own list (--smoke: toy)")
    ap.add_argument("--protocols", type=choice_list(list(PROTOCOLS), "protocol"), help="default: fair for toy/avdigits/custom, paper,fair for the paper's datasets")
    ap.add_argument("--seeds", type=seed_list, help="default: each table's seeds (--smoke: 0,1)")
    ap.add_argument("--runs-dir", type=Path, help="sweeps go to <runs-dir>/<table>/<protocol>/<dataset>/<row> (default runs/tables; --smoke: runs/tables_smoke)")
    ap.add_argument("--out", type=Path, help="where the tables go (default results; --smoke: <runs-dir>/results)")
    ap.add_argument("--data-root", default="data", help="where the prepared datasets are (default data)")
    ap.add_argument("--smoke", action="store_true", help="tiny settings (the main table, toy, 2 epochs, 2 seeds, quiet): the whole pipeline in about a minute")
    ap.add_argument("--quiet", action="store_true", help="each row's training output into <sweep dir>/reproduce.log")
    ap.add_argument("--launcher", choices=["basic", "pack", "slurm"], default="basic",
                    help="how each row's seeds run: basic (one after the other), pack (joblib: at once on this machine), "
                         "slurm (submitit: one SLURM job each)")
    ap.add_argument("--launcher-args", help='overrides for the launcher, e.g. "hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=2"')
    ap.add_argument("--dry-run", action="store_true", help="print the commands and the datasets that are not prepared, run nothing")
    args = ap.parse_args(argv)
    runs = args.runs_dir or Path("runs/tables_smoke" if args.smoke else "runs/tables")
    out = args.out or (runs / "results" if args.smoke else Path("results"))
    quiet = args.quiet or args.smoke
    cmdline = shlex.join(["python", "scripts/reproduce_table.py", *argv])

    plan, t0 = make_plan(args, runs), time.perf_counter()
    failed = run_plan(plan, args, runs, quiet)
    if args.dry_run:
        return 0
    where = machine()
    for table, spec, protocol, _, datasets in plan:
        records = build_rows(spec, table, protocol, datasets, runs, args.data_root)
        paths = write_table(spec, table, protocol, records, out, cmdline, where)
        print(f"wrote {', '.join(map(str, paths))}")
    print(f"{len(plan)} table(s) in {time.perf_counter() - t0:.0f} s")
    if failed:
        print(f"error: runs failed in {len(failed)} row(s): {'; '.join(failed)} (the tables hold what finished)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
