"""scripts/reproduce_table.py: tables from fabricated run directories (grouping, the paper join and the
difference, missing cells, unprepared datasets, n = 1, selected vs last epoch), the table specs and the
paper's CSVs, one-line CLI errors, and the pipeline end to end (one tiny row fast; the whole --smoke slow)."""
import csv
import json
import re
import subprocess

import pytest
import yaml

import reproduce_table as rt
from avbalance.cli import Composer

SPEC = {"title": "T", "family": "ogm_ge", "overrides": [],
        "metrics": [{"key": "test/acc", "label": "acc"}, {"key": "test/acc_visual", "label": "acc_visual"},
                    {"key": "test/map", "label": "mAP", "datasets": ["kinetics_sounds"]}],
        "rows": [{"label": "concat", "overrides": []}, {"label": "concat + OGM-GE", "overrides": []}]}


def fake_run(runs, table, protocol, dataset, label, seed, status="ok", alpha=0.8, **metrics):
    d = rt.sweep_dir(runs, table, protocol, dataset, label) / f"s{seed}"
    d.mkdir(parents=True)
    (d / "config_resolved.yaml").write_text(yaml.safe_dump(
        {"seed": seed, "data_root": f"/x/{seed}", "dataset": {"name": dataset}, "modulation": {"name": "ogm_ge", "alpha": alpha}}))
    s = {"status": status, "seed": seed, "dataset": dataset, "selection_split": "val", **metrics}
    if status != "ok":
        s["reason"] = "modulation.alpha=-1 must be >= 0"
    (d / "summary.json").write_text(json.dumps(s))
    return d


def md_line(text, start):
    return next(ln for ln in text.splitlines() if ln.startswith(start))


def test_step_cost_is_time_per_sample_relative_to_the_baseline_row(tmp_path):
    runs = tmp_path / "runs"
    spec = {"title": "t", "family": "methods", "seeds": [0, 1], "overrides": [], "cost_baseline": "joint",
            "metrics": [{"key": "test/acc", "label": "acc"}],
            "rows": [{"label": "joint", "overrides": []}, {"label": "slow", "overrides": []}, {"label": "untimed", "overrides": []}]}
    # per run the median epoch's 1/samples_per_second (an epoch slowed by other work does not count),
    # then the mean over runs: joint (1/100 + 1/50) / 2 = 0.015 s; slow 0.03 s -> 2.00x
    timings = {"joint": [[100, 100, 5], [50, 50, 50]], "slow": [[50, 50, 1000], [25, 25]]}
    for label, per_run in timings.items():
        for seed, sps in enumerate(per_run):
            d = fake_run(runs, "methods", "fair", "toy", label, seed, **{"test/acc": 0.5})
            (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "samples_per_second": v}) + "\n" for e, v in enumerate(sps)))
    fake_run(runs, "methods", "fair", "toy", "untimed", 0, **{"test/acc": 0.5})  # no metrics.jsonl
    records = rt.build_rows(spec, "methods", "fair", ["toy"], runs, str(tmp_path / "data"))
    md, csv_path, _ = rt.write_table(spec, "methods", "fair", records, tmp_path / "out", "cmd", "test machine")
    text = md.read_text()
    assert md_line(text, "| dataset | row |").endswith("| step cost |")
    assert md_line(text, "| toy | joint |").endswith("| 1.00x |") and md_line(text, "| toy | slow |").endswith("| 2.00x |")
    assert md_line(text, "| toy | untimed |").endswith("| — |")
    cost = [r for r in csv.DictReader(csv_path.open()) if r["metric"] == "step_cost"]
    assert [(r["row"], float(r["mean"])) for r in cost] == [("joint", 1.0), ("slow", 2.0)]
    assert "step cost: training time per sample relative to `joint`" in text


def test_table_cells_paper_join_and_missing(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    for seed, (acc, last) in enumerate([(0.5, 0.4), (0.6, 0.5), (0.7, 0.6)]):
        fake_run(runs, "main", "fair", "toy", "concat", seed, **{"test/acc": acc, "last_test/acc": last, "test/acc_visual": 0.2})
    fake_run(runs, "main", "fair", "toy", "concat", 3, status="failed")
    fake_run(runs, "main", "fair", "toy", "concat + OGM-GE", 0, **{"test/acc": 0.8, "last_test/acc": 0.75})
    fake_run(runs, "main", "fair", "cremad", "concat + OGM-GE", 0, **{"test/acc": 0.65, "test/map": 0.5})
    spec = rt.load_spec("main")
    datasets = ["toy", "cremad", "kinetics_sounds", "ave"]
    records = rt.build_rows(spec, "main", "fair", datasets, runs, str(tmp_path / "data"))
    md, csv_path, png = rt.write_table(spec, "main", "fair", records, out, "python scripts/reproduce_table.py", "test machine")
    assert png.stat().st_size > 0
    text = md.read_text()
    selected, last = text.split("## Test at the last epoch")
    assert "epoch selected on the val split" in text and "test machine" in text
    # mean ± sample std in %, n; the failed run is skipped and named
    assert md_line(selected, "| toy | concat |") == "| toy | concat | 3 | 60.0 ± 10.0 | — | — | — | 20.0 ± 0.0 | — | — | — | — |"
    assert md_line(last, "| toy | concat |").startswith("| toy | concat | 3 | 50.0 ± 10.0 |")
    assert "toy / concat: s3 failed: modulation.alpha=-1 must be >= 0" in text
    assert md_line(selected, "| toy | concat + OGM-GE |").startswith("| toy | concat + OGM-GE | 1 | 80.0 | — | — |")  # n = 1: no ±
    assert md_line(selected, "| toy | audio-only |") == "| toy | audio-only | 0 |" + " — |" * 9  # no run yet
    # the paper's number beside it and reproduced - paper; mAP only where the spec reports it
    assert md_line(selected, "| cremad | concat + OGM-GE |").startswith("| cremad | concat + OGM-GE | 1 | 65.0 | 61.9† | +3.1 |")  # † its note: which table 61.9 is from
    assert md_line(selected, "| cremad | concat + OGM-GE |").endswith("| — |")
    # unprepared datasets: the row names the command; the paper's numbers are still listed, unverified ones marked
    assert f"| kinetics_sounds | not prepared: .venv/bin/python -m data_prep.kinetics_sounds --raw RAW_DIR --out {tmp_path / 'data'}/kinetics_sounds |" in text
    assert md_line(selected, "| kinetics_sounds | concat |").startswith("| kinetics_sounds | concat | 0 | — | 59.8 | — |")
    assert md_line(selected, "| ave | concat |").startswith("| ave | concat | 0 | — | 72.0†† | — |")
    assert "- † OGM-GE_CVPR2022 issue #34 cites 61.25" in text and "- †† unverified: may be an event-localisation figure" in text
    assert "| cremad | not prepared" not in text  # runs exist: they are shown

    rows = list(csv.DictReader(csv_path.open()))
    cell = next(r for r in rows if (r["dataset"], r["row"], r["epoch"], r["metric"]) == ("cremad", "concat + OGM-GE", "selected", "test/acc"))
    assert (cell["n"], float(cell["mean"]), cell["std"], cell["paper"], float(cell["diff"])) == ("1", 65.0, "", "61.9", pytest.approx(3.1))
    assert "Peng et al." in cell["paper_source"]
    assert any(r["dataset"] == "kinetics_sounds" and r["note"].startswith("not prepared: ") for r in rows)


def test_runs_grouped_by_differing_settings(tmp_path):
    for seed, alpha, acc in [(0, 0.1, 0.5), (1, 0.1, 0.7), (0, 0.8, 0.9)]:
        fake_run(tmp_path, "alpha", "fair", "toy", "concat", f"{seed}_a{alpha}".replace(".", ""), alpha=alpha, **{"test/acc": acc})
    records = rt.build_rows(SPEC, "alpha", "fair", ["toy"], tmp_path, "data")
    by_label = {r["label"]: r for r in records}
    assert set(by_label) == {"concat (modulation.alpha=0.1)", "concat (modulation.alpha=0.8)", "concat + OGM-GE"}
    assert by_label["concat (modulation.alpha=0.1)"]["cells"]["test/acc", False][:2] == (pytest.approx(60.0), pytest.approx(14.1421, abs=1e-3))
    assert by_label["concat (modulation.alpha=0.8)"]["cells"]["test/acc", False] == (pytest.approx(90.0), None, 1)
    assert rt.fmt(by_label["concat (modulation.alpha=0.8)"]["cells"]["test/acc", False]) == "90.0"
    assert ("test/map", False) not in by_label["concat + OGM-GE"]["cells"]  # toy is not in the metric's datasets


def test_paper_protocol_reads_the_selection_record():
    s = {"selection_split": "test", "best": {"val/acc": 0.61}, "last": {"val/acc": 0.58}}
    assert (rt.metric(s, "test/acc", False), rt.metric(s, "test/acc", True)) == (0.61, 0.58)
    assert rt.metric({"selection_split": "val", "best": {"val/acc": 0.6}}, "test/acc", False) is None
    assert rt.metric({"test/acc": 0.7, "last_test/acc": 0.6}, "test/acc", True) == 0.6


def test_specs_compose_and_paper_csvs_match_them():
    """Every row of every table composes as its sweep will (its first dataset, under protocol=paper where
    the table allows it; the main table also as --smoke runs it), and every typed paper number names a
    row, dataset and metric of its table and has a source."""
    with Composer() as compose:
        for table in rt.names(rt.TABLES_DIR):
            spec = rt.load_spec(table)
            assert {"title", "family", "datasets", "seeds", "metrics", "rows"} <= set(spec), table
            protocol = next(p for p in rt.PROTOCOLS if p in spec.get("protocols", rt.PROTOCOLS))
            cells = [(spec["datasets"][0], protocol, [])] + ([("toy", "fair", rt.SMOKE + rt.SMOKE_TOY)] if table == "main" else [])
            for row in spec["rows"]:
                for dataset, protocol, extra in cells:
                    cfg = compose([f"experiment={spec['family']}", f"dataset={dataset}", f"protocol={protocol}",
                                   *spec["overrides"], *row["overrides"], *extra])
                    assert (cfg.protocol.name, cfg.dataset.name) == (protocol, dataset)
            paper = list(csv.DictReader((rt.PAPER_DIR / f"{table}.csv").open()))
            labels, keys = {r["label"] for r in spec["rows"]}, {m["key"] for m in spec["metrics"]}
            for p in paper:
                assert p["row"] in labels and p["dataset"] in spec["datasets"] and p["metric"] in keys, (table, p)
                assert float(p["value"]) and p["source"].strip(), (table, p)
            assert len({(p["row"], p["dataset"], p["metric"]) for p in paper}) == len(paper)


@pytest.mark.parametrize("argv, message", [
    (["--tables", "main,nope"], "error: argument --tables: unknown table 'nope'; expected a comma-separated list of"),
    (["--datasets", "toy,foo"], "error: argument --datasets: unknown dataset 'foo'"),
    (["--protocols", "honest"], "error: argument --protocols: unknown protocol 'honest'"),
    (["--seeds", "0,x"], "error: argument --seeds: '0,x' is not a list of seeds"),
])
def test_bad_arguments_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        rt.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(message) and err.count("\n") == 1


def test_dry_run_prints_the_commands(tmp_path, capsys):
    argv = ["--dry-run", "--tables", "ogm_ge", "--datasets", "toy,cremad", "--seeds", "0,1",
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--data-root", str(tmp_path / "data")]
    assert rt.main(argv) == 0
    out = capsys.readouterr().out
    assert f"ogm_ge · paper · cremad: not prepared: .venv/bin/python -m data_prep.cremad --raw RAW_DIR --out {tmp_path / 'data'}/cremad" in out
    assert ("  .venv/bin/python train.py -m experiment=ogm_ge dataset=toy protocol=fair "
            f"data_root={tmp_path / 'data'} modulation=ogm seed=0,1 skip_done=true "
            f"hydra.sweep.dir={tmp_path / 'runs'}/ogm_ge/fair/toy/ogm 'hydra.sweep.subdir=s${{seed}}'") in out
    assert "ogm_ge · fair · cremad" in out and "ogm_ge · paper · toy" not in out  # toy: fair only by default
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_rows_end_to_end_skip_finished_runs_and_report_failures(tmp_path, monkeypatch, capsys):
    """A two-row table through train.py: one row trains, one is refused by train.py (exit 1 here, its error
    line shown, the table still written); called again without the refused row, nothing runs."""
    spec = {"title": "tiny", "family": "ogm_ge", "datasets": ["toy"], "seeds": [0], "overrides": [],
            "metrics": [{"key": "test/acc", "label": "acc"}],
            "rows": [{"label": "joint", "overrides": ["modulation=none"]},
                     {"label": "bad", "overrides": ["modulation=ogm_ge", "modulation.alpha=abc"]}]}
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "tiny.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(rt, "TABLES_DIR", tmp_path / "tables")
    argv = ["--smoke", "--tables", "tiny", "--seeds", "0", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert rt.main(argv) == 1
    out, err = capsys.readouterr()
    assert "[1/2] tiny · fair · toy · joint: done" in out
    assert "[2/2] tiny · fair · toy · bad: train.py exited with 2: error: modulation.alpha='abc' is not allowed" in out
    assert "error: runs failed in 1 row(s): tiny/fair/toy/bad" in err
    text = (tmp_path / "out" / "tiny_fair.md").read_text()
    assert md_line(text, "| toy | joint | 1 |") and "| toy | bad | 0 | — |" in text
    assert "- toy / bad: error: modulation.alpha='abc' is not allowed" in text
    assert (tmp_path / "out" / "tiny_fair.png").exists() and (tmp_path / "out" / "tiny_fair.csv").exists()
    (tmp_path / "tables" / "tiny.yaml").write_text(yaml.safe_dump({**spec, "rows": spec["rows"][:1]}))
    assert rt.main(argv) == 0
    assert "[1/1] tiny · fair · toy · joint: 1 runs finished before, not run again" in capsys.readouterr().out


@pytest.mark.slow
def test_smoke_end_to_end(tmp_path, capsys):
    """`make reproduce-table SMOKE=1` (here with an unprepared dataset too): sweeps, tables, figure; again: nothing runs."""
    argv = ["--smoke", "--datasets", "toy,cremad", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--data-root", str(tmp_path / "data")]
    assert rt.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count(": done (") == 4 and "main · paper · cremad: not prepared" in out
    fair = (tmp_path / "out" / "main_fair.md").read_text()
    for label in ("audio-only", "visual-only", "concat", "concat + OGM-GE"):
        assert md_line(fair, f"| toy | {label} | 2 | ").count(" ± ") >= 2
    assert "| cremad | not prepared: " in fair and "| cremad | concat + OGM-GE | 0 | — | 61.9† |" in fair
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=rt.ROOT, capture_output=True, text=True).stdout.strip()
    assert re.search(rf"; the runs ran on cpu \([^)]*\), at commit {head}\*? \(\* with uncommitted changes\)\.", fair), fair[:600]
    assert (tmp_path / "out" / "main_paper.md").exists() and (tmp_path / "out" / "main_fair.png").stat().st_size > 0
    assert rt.main(argv) == 0
    assert capsys.readouterr().out.count("2 runs finished before, not run again") == 4


def test_method_cost_relative_to_none_and_its_errors(tmp_path, capsys):
    import method_cost
    for i, (name, sps) in enumerate([("none", [100, 100, 1]), ("mmpareto", [50, 50, 50]), ("ogm", [80, 80])]):
        d = tmp_path / "sweep" / str(i)
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"status": "ok", "dataset": "toy", "choices": {"modulation": name}}))
        (d / "metrics.jsonl").write_text("".join(json.dumps({"samples_per_second": v}) + "\n" for v in sps))
    assert method_cost.main([str(tmp_path / "sweep")]) == 0
    out = capsys.readouterr().out
    assert "| none | 1 | 10.000 | 1.00x |" in out and "| ogm | 1 | 12.500 | 1.25x |" in out and "| mmpareto | 1 | 20.000 | 2.00x |" in out
    (tmp_path / "sweep" / "0" / "summary.json").write_text(json.dumps({"status": "failed"}))
    assert method_cost.main([str(tmp_path / "sweep")]) == 2
    assert "no finished modulation=none run" in capsys.readouterr().err
    assert method_cost.main([str(tmp_path / "missing")]) == 2


def test_launcher_choice_reaches_every_row_command(tmp_path, capsys):
    argv = ["--dry-run", "--tables", "ogm_ge", "--datasets", "toy", "--seeds", "0,1", "--launcher", "slurm",
            "--launcher-args", "hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=2",
            "--runs-dir", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data")]
    assert rt.main(argv) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  .venv/bin/python train.py -m")]
    assert len(lines) == 3  # none, OGM, OGM-GE
    assert all("hydra/launcher=slurm hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=2 seed=0,1" in ln for ln in lines)
    with pytest.raises(SystemExit):
        rt.main(["--launcher", "mpi", "--dry-run"])
    assert "invalid choice: 'mpi'" in capsys.readouterr().err
