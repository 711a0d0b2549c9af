"""The command line as a user meets it: resume from the run's own config, Ctrl-C, Hydra's override
grammar, sweeps that outlive a failed run, --help. Subprocesses where the behaviour is the process's."""
import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from avbalance.cli import precheck
from avbalance.errors import ConfigError
from avbalance.trainer import train

from conftest import ROOT, TIMINGS, TINY, make_cfg
from summarize_runs import main as summarize_main

SMALL = [o for o in TINY if not o.startswith("device")]


def cli(*args, cwd, timeout=300):
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    return p.returncode, p.stdout, [ln for ln in p.stderr.splitlines() if ln.strip()]


def rows(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # ~30 s of train.py subprocesses; keeps make test under 5 minutes on 2 cores
def test_resume_uses_the_runs_own_config_and_refuses_contradictions(tmp_path):
    run = tmp_path / "run"
    rc, _, err = cli("modulation=ogm", "fusion=sum", "epochs=2", "seed=3", *SMALL, f"hydra.run.dir={run}", cwd=tmp_path)
    assert rc == 0, err
    overrides = (run / ".hydra" / "overrides.yaml").read_text()
    first = json.loads((run / "summary.json").read_text())

    # no overrides: the saved config (ogm, sum, seed 3, 2 epochs), not today's defaults (ogm_ge, concat, seed 0)
    rc, _, err = cli("resume=true", f"hydra.run.dir={run}", cwd=tmp_path)
    assert rc == 0, err
    again = json.loads((run / "summary.json").read_text())
    assert again["choices"]["modulation"] == "ogm" and again["seed"] == 3 and again["test/acc"] == first["test/acc"]
    assert len(rows(run)) == 2

    # contradicting overrides: one line naming the keys; nothing of the run is rewritten
    rc, _, err = cli("resume=true", f"hydra.run.dir={run}", "modulation=none", "seed=4", "fusion=sum", cwd=tmp_path)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: resume=true: modulation, seed would change"), err
    assert (run / ".hydra" / "overrides.yaml").read_text() == overrides
    assert json.loads((run / "summary.json").read_text()) == again

    # safe keys: epochs 2 -> 3 continues from the checkpoint; speed settings may change with it
    before = rows(run)
    rc, _, err = cli("resume=true", f"hydra.run.dir={run}", "epochs=3", "eval_batch_size=32", "speed.compile=false", cwd=tmp_path)
    assert rc == 0, err
    assert [r["epoch"] for r in rows(run)] == [0, 1, 2] and rows(run)[:2] == before
    cfg = yaml.safe_load((run / "config_resolved.yaml").read_text())
    assert (cfg["epochs"], cfg["modulation"]["name"], cfg["fusion"]["name"], cfg["seed"]) == (3, "ogm", "sum", 3)
    assert cfg["eval_batch_size"] == 32
    assert (run / ".hydra" / "overrides.yaml").read_text() == overrides
    assert len(json.loads((run / "meta.json").read_text())["resumes"]) == 2


def test_resume_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="needs the run to continue; add hydra.run.dir="):
        precheck(["resume=true"])
    with pytest.raises(ConfigError, match="is not a run directory"):
        precheck(["resume=true", f"hydra.run.dir={tmp_path / 'nowhere'}"])
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    with pytest.raises(ConfigError) as e:
        precheck(["resume=true", f"hydra.run.dir={tmp_path}"])
    assert "has no checkpoint yet" in str(e.value) and "hydra.run.dir" not in str(e.value)
    with pytest.raises(ConfigError, match="continues one run"):
        precheck(["-m", "resume=true", f"hydra.run.dir={tmp_path}"])


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_resume_repairs_the_last_log_lines(tmp_path, damage):
    """A crash while writing metrics.jsonl / steps.csv (truncated line) or between the checkpoint
    and the log write (missing line) does not stop a resume, and loses no epoch."""
    overrides = ["epochs=3", "modulation=ogm_ge"]
    train(make_cfg(*overrides), tmp_path / "full")

    def stop_after_1(epoch, row):
        if epoch == 1:
            raise Interrupt
    with pytest.raises(Interrupt):
        train(make_cfg(*overrides), tmp_path / "cut", callbacks=[stop_after_1])
    for name in ("metrics.jsonl", "steps.csv"):
        path = tmp_path / "cut" / name
        lines = path.read_text().splitlines()
        last = lines[-1][: len(lines[-1]) // 2] if damage == "truncated" else ""
        path.write_text("\n".join(lines[:-1]) + "\n" + last)
    train(make_cfg(*overrides, "resume=true"), tmp_path / "cut")

    def strip(run):
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows(run)]
    assert strip(tmp_path / "cut") == strip(tmp_path / "full")
    assert (tmp_path / "cut" / "steps.csv").read_text() == (tmp_path / "full" / "steps.csv").read_text()


def test_ctrl_c_prints_one_line_with_the_resume_command(tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "epochs=200", "modulation=ogm", f"hydra.run.dir={run}"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # a shell's background job inherits SIGINT ignored, and Python keeps it so
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    err = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 130 and len(err) == 1, err
    assert err[0].startswith("interrupted: in epoch ") and f"resume=true hydra.run.dir={run}" in err[0]
    done = len(rows(run))
    rc, _, err = cli("resume=true", f"hydra.run.dir={run}", f"epochs={done + 1}", cwd=tmp_path)
    assert rc == 0, err
    assert [r["epoch"] for r in rows(run)] == list(range(done + 1))


GRAMMAR = [
    ["-m", "modulation=shuffle(none,ogm)"], ["-m", "fusion=sort(sum,concat)"], ["fusion='concat'"], ['fusion="sum"'],
    ["-m", "seed=range(0,3)"], ["-m", "modulation=choice(none,ogm_ge)"], ["-m", "fusion=glob(c*)"],
    ["-m", "optim.lr=interval(0.001,0.1)"],  # a sweeper's (e.g. Optuna's); Hydra's basic sweeper judges it
    ["-m", "seed=0,1", "modulation.alpha=0.1,0.8"], ["+modulation.extra=1"], ["++seed=2"], ["~dataset_modulation"],
    ["dataset=cremad", "dataset.audio_crop=null"], ["logger=wandb", "logger.entity=null"], ["seed=0,1"],
]


@pytest.mark.parametrize("overrides", GRAMMAR, ids=" ".join)
def test_every_form_of_hydras_grammar_passes_the_precheck(overrides):
    precheck(overrides)


@pytest.mark.parametrize("overrides, expected", [
    (["-m", "modulation=shuffle(none,ogm_gee)"], "modulation='ogm_gee' is not a modulation option"),
    (["-m", "seed=0,1", "modulation.alpha=0.1,abc"], "modulation.alpha='abc' is not allowed; expected a number (in the sweep cell"),
    (["fusion='attention'"], "fusion='attention' is not a fusion option; expected one of ['concat', 'film', 'gated', 'sum']"),
    (["seed=[1"], "cannot parse the overrides"),
])
def test_bad_overrides_in_any_form_are_one_line(overrides, expected):
    with pytest.raises(ConfigError) as e:
        precheck(overrides)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value), str(e.value)


def test_a_sweep_runs_hydra_grammar_end_to_end(tmp_path):
    rc, _, err = cli("-m", "modulation=shuffle(none,ogm)", "fusion=sort(sum,concat)", "epochs=1", *SMALL,
                     f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert rc == 0, err
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/summary.json")]
    assert sorted((s["choices"]["modulation"], s["choices"]["fusion"]) for s in summaries) == [
        ("none", "concat"), ("none", "sum"), ("ogm", "concat"), ("ogm", "sum")]


def test_a_sweep_outlives_a_failed_run(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    rc, _, err = cli("-m", "optim.lr=0.02,1e30,0.05", "epochs=1", *SMALL, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert rc == 1
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert len(summaries) == 3
    failed = summaries.pop("1_toy_concat_ogm_ge_s0")
    assert failed["status"] == "failed" and failed["reason"].startswith("non-finite training loss in epoch 0")
    assert "optim.lr=1e+30" in failed["overrides"]  # Hydra writes the float back this way
    assert all(s["status"] == "ok" and 0 <= s["test/acc"] <= 1 for s in summaries.values())
    assert err[-1].startswith(f"error: 1 of 3 runs failed in {sweep}: 1_toy_concat_ogm_ge_s0 (non-finite")

    assert summarize_main([str(sweep)]) == 0
    out, report = capsys.readouterr()
    assert "skipped 1 failed run(s): 1_toy_concat_ogm_ge_s0" in report
    assert "| optim.lr | n |" in out and "±" not in out  # one run per row: no spread shown


def test_a_sweep_cell_on_an_unprepared_dataset_fails_alone(tmp_path):
    sweep = tmp_path / "sweep"
    rc, _, err = cli("-m", "dataset=toy,cremad", "epochs=1", f"data_root={tmp_path}", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert rc == 1
    assert json.loads((sweep / "0_toy_concat_ogm_ge_s0" / "summary.json").read_text())["status"] == "ok"
    failed = json.loads((sweep / "1_cremad_concat_ogm_ge_s0" / "summary.json").read_text())
    assert failed["status"] == "failed" and "python -m data_prep.cremad" in failed["reason"]


def test_help_describes_the_project():
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0
    for needle in ("avbalance: balanced audio-visual learning", "modulation: inforeg, mmpareto, mslr, multitask, none, ogm, ogm_ge, opm, pmr, umt",
                   "fusion: concat, film, gated, sum", "resume=true hydra.run.dir=RUN_DIR", "alpha: 1.5"):
        assert needle in p.stdout, needle
