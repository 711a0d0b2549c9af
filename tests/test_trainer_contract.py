"""What one training run writes, value by value, against what its steps and evaluations produced
(recorded while it ran): metrics.jsonl rows, steps.csv, the learning rate per epoch, the selected
epoch and best.pt, last.pt's record, summary.json, the epoch log line; and the trainer's helpers."""
import contextlib
import json
import logging
import math
import sys

import pytest
import torch
from omegaconf import OmegaConf

import avbalance.trainer as trainer_module
from avbalance.errors import ConfigError
from avbalance.meter import DeviceMeter
from avbalance.rundir import load_checkpoint
from avbalance.methods.base import Method
from avbalance.trainer import _rng_state, _set_rng_state, _steps_csv, format_summary, train

from conftest import make_cfg, shared_unless_mutating

LR, GAMMA = 0.05, 0.5
# dataset.epochs, not epochs: `epochs: ${dataset.epochs}` stays an interpolation, so that what
# the run writes can be checked to be resolved
OVERRIDES = ("dataset.epochs=3", "modulation=ogm", "modulation.alpha=0.8", f"optim.lr={LR}", "optim.step_size=1",
             f"optim.gamma={GAMMA}", "seed=1")
TRACE = Method.trace  # OGM logs the baseline's trace: ratio and the two coefficients
RIGGED_VAL_ACC = [0.5, 0.5, 0.25]  # a tie: the first epoch reaching the best accuracy is selected


class RecordingMeter(DeviceMeter):
    steps: list = []

    def add(self, logs):
        RecordingMeter.steps.append({k: float(v) for k, v in logs.items()})
        super().add(logs)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def log_lines():
    """The messages of the `avbalance` logger at INFO, as a list."""
    handler, logger = _Lines(), logging.getLogger("avbalance")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


class FakeTime:
    """perf_counter advancing 0.5 s a call. The loop reads it at the epoch's start, after the
    training steps and after the evaluation: 0.5 s of training, 0.5 s of evaluation, 1 s per epoch."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        self.now += 0.5
        return self.now


class RecordingLogger:
    def __init__(self, cfg, run_dir, config):
        self.built, self.logged, self.finished = (cfg, run_dir, config), [], 0

    def log(self, row, step):
        self.logged.append((step, row))

    def finish(self):
        self.finished += 1


@pytest.fixture(scope=shared_unless_mutating)
def run(tmp_path_factory):
    """One 3-epoch run (2 steps an epoch), with its steps, evaluations, log lines, experiment-logger
    calls and plot inputs recorded, a fake clock, and the validation accuracy rigged for a tie."""
    run_dir = tmp_path_factory.mktemp("run")
    evaluations, loggers, plots = [], [], []
    real_evaluate, real_plot = trainer_module.evaluate, trainer_module.plot_run

    def recording_evaluate(model, data, split, device, precision="fp32", **kw):
        result = real_evaluate(model, data, split, device, precision, **kw)
        if split == "val":
            result["acc"] = RIGGED_VAL_ACC[sum(1 for e in evaluations if e[0] == "val")]
        evaluations.append((split, result, {k: v.clone() for k, v in model.state_dict().items()}))
        return result

    def recording_logger(cfg, run_dir, config):
        loggers.append(RecordingLogger(cfg, run_dir, config))
        return loggers[-1]

    def recording_plot(rows, steps, path, trace):
        plots.append(([dict(r) for r in rows], [tuple(s) for s in steps], path, trace))
        real_plot(rows, steps, path, trace)
    RecordingMeter.steps = []
    cfg = make_cfg(*OVERRIDES)
    with pytest.MonkeyPatch.context() as mp, log_lines() as lines:
        mp.setattr(trainer_module, "DeviceMeter", RecordingMeter)
        mp.setattr(trainer_module, "evaluate", recording_evaluate)
        mp.setattr(trainer_module, "time", FakeTime())
        mp.setattr(trainer_module, "build_logger", recording_logger)
        mp.setattr(trainer_module, "plot_run", recording_plot)
        summary = train(cfg, run_dir, choices={"fusion": "concat", "modulation": "ogm"})
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"dir": run_dir, "cfg": cfg, "summary": summary, "rows": rows, "steps": list(RecordingMeter.steps),
            "evals": evaluations, "lines": lines, "loggers": loggers, "plots": plots}


def steps_of(run, epoch):
    return run["steps"][2 * epoch: 2 * epoch + 2]


def val_evals(run):
    return [e for e in run["evals"] if e[0] == "val"]


def test_rows_hold_the_epochs_step_means_and_evaluation(run):
    rows = run["rows"]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and len(run["steps"]) == 6
    for epoch, row in enumerate(rows):
        steps = steps_of(run, epoch)
        for key in ("train/loss", "train/loss_audio", "train/loss_visual", "train/acc"):
            assert row[key] == pytest.approx(sum(s[key] for s in steps) / 2, rel=1e-6), key
        for key in TRACE:
            assert row[f"{key}_mean"] == pytest.approx(sum(s[key] for s in steps) / 2, rel=1e-6), key
            assert key not in row
        val = val_evals(run)[epoch][1]
        assert {k[4:]: v for k, v in row.items() if k.startswith("val/")} == val
        assert row["lr"] == pytest.approx(LR * GAMMA ** epoch)  # the rate the epoch trained with
        assert row["epoch_seconds"] == 1.0 and row["samples_per_second"] == 128 / 0.5  # the fake clock
        assert row["val_samples_per_second"] == run["cfg"].dataset.n_val / 0.5  # every val row, in 0.5 s
    assert min(rows[0]["mod/coeff_audio_mean"], rows[0]["mod/coeff_visual_mean"]) < 1.0


def test_steps_csv_is_the_per_step_trace(run):
    lines = (run["dir"] / "steps.csv").read_text().splitlines()
    assert lines[0] == "epoch,step,ratio,coeff_audio,coeff_visual"
    got = [tuple(float(x) for x in ln.split(",")) for ln in lines[1:]]
    want = [(e, i, s["mod/ratio"], s["mod/coeff_audio"], s["mod/coeff_visual"])
            for e in range(3) for i, s in enumerate(steps_of(run, e))]
    assert got == want  # the logged float32 values, written with repr: exact
    assert [ln.split(",")[:2] for ln in lines[1:]] == [[str(e), str(i)] for e in range(3) for i in range(2)]


def test_the_first_best_epoch_is_selected_and_saved(run):
    accs = [e[1]["acc"] for e in val_evals(run)]
    assert accs == RIGGED_VAL_ACC
    selected = 0
    summary = run["summary"]
    assert summary["selected_epoch"] == selected and summary["selection_split"] == "val"
    assert summary["best"] == {f"val/{k}": v for k, v in val_evals(run)[selected][1].items()}
    best = load_checkpoint(run["dir"] / "ckpt" / "best.pt")
    assert best["epoch"] == selected
    assert best["best"] == {"epoch": selected, "acc": accs[selected], "metrics": summary["best"]}
    weights = val_evals(run)[selected][2]
    assert set(best["model"]) == set(weights) and all(torch.equal(best["model"][k], weights[k]) for k in weights)


def test_last_checkpoint_record(run):
    last = load_checkpoint(run["dir"] / "ckpt" / "last.pt")
    assert last["epoch"] == 2
    assert last["best"]["epoch"] == run["summary"]["selected_epoch"]
    assert last["log"]["row"] == run["rows"][-1]
    want = [[2, i, s["mod/ratio"], s["mod/coeff_audio"], s["mod/coeff_visual"]] for i, s in enumerate(steps_of(run, 2))]
    assert [list(r) for r in last["log"]["steps"]] == want
    assert set(last["rng"]) == {"torch"}
    assert last["scheduler"]["last_epoch"] == 3
    assert [g["lr"] for g in last["optimizer"]["param_groups"]] == pytest.approx([LR * GAMMA ** 3] * 3)
    assert set(last["method"]) == {"generator"}
    final_weights = val_evals(run)[2][2]
    assert all(torch.equal(last["model"][k], final_weights[k]) for k in final_weights)


def test_summary(run):
    s, rows = run["summary"], run["rows"]
    assert s["status"] == "ok" and s["protocol"] == "fair"
    assert s["last"] == rows[-1] and s["choices"] == {"fusion": "concat", "modulation": "ogm"}
    assert (s["seed"], s["epochs"], s["dataset"]) == (1, 3, "toy")
    tests = [e for e in run["evals"] if e[0] == "test"]
    assert len(tests) == 2  # the last weights, then the selected ones
    assert {k: s[f"last_test/{k}"] for k in tests[0][1]} == tests[0][1]
    assert {k: s[f"test/{k}"] for k in tests[1][1]} == tests[1][1]
    assert all(torch.equal(tests[0][2][k], val_evals(run)[2][2][k]) for k in tests[0][2])
    best = load_checkpoint(run["dir"] / "ckpt" / "best.pt")["model"]
    assert all(torch.equal(tests[1][2][k], best[k]) for k in best)
    assert json.loads((run["dir"] / "summary.json").read_text()) == s
    assert (run["dir"] / "curves.png").stat().st_size > 0


def test_run_directory_records_the_config_and_the_choices(run):
    assert "${" in OmegaConf.to_yaml(run["cfg"])  # the config has an interpolation ...
    written = (run["dir"] / "config_resolved.yaml").read_text()  # ... and the run writes it resolved
    assert written == OmegaConf.to_yaml(run["cfg"], resolve=True) and "\nepochs: 3\n" in written
    meta = json.loads((run["dir"] / "meta.json").read_text())
    assert meta["choices"] == {"fusion": "concat", "modulation": "ogm"} and meta["seed"] == 1
    assert meta["device"]["type"] == "cpu"


def test_one_log_line_per_epoch(run):
    lines = [ln for ln in run["lines"] if ln.startswith("epoch ")]
    assert len(lines) == 3
    for epoch, (line, row) in enumerate(zip(lines, run["rows"])):
        assert line == (f"epoch {epoch}  loss {row['train/loss']:.4f}  val acc {row['val/acc']:.4f} "
                        f"(audio {row['val/acc_audio']:.4f}, visual {row['val/acc_visual']:.4f})  "
                        f"k_a {row['mod/coeff_audio_mean']:.3f} k_v {row['mod/coeff_visual_mean']:.3f}  "
                        f"{row['samples_per_second']:.0f} samples/s")


def test_the_experiment_logger_gets_each_row_and_is_finished_once(run):
    (logger,) = run["loggers"]
    cfg, run_dir, config = logger.built
    assert cfg == run["cfg"].logger and run_dir == run["dir"]
    assert config == OmegaConf.to_container(run["cfg"], resolve=True) and config["epochs"] == 3  # resolved
    assert logger.logged == [(e, row) for e, row in enumerate(run["rows"])]
    assert logger.finished == 1


def test_the_plot_gets_every_epoch_and_every_step(run):
    (rows, steps, path, trace), = run["plots"]
    assert rows == run["rows"] and path == run["dir"] / "curves.png" and trace == TRACE
    assert [s[:2] for s in steps] == [(e, i) for e in range(3) for i in range(2)]
    assert [s[2:] for s in steps] == [(s["mod/ratio"], s["mod/coeff_audio"], s["mod/coeff_visual"]) for s in run["steps"]]


def test_the_selected_checkpoint_is_measured_with_each_input_missing(run):
    from avbalance.evaluate import evaluate
    from avbalance.data.toy import build_toy
    from avbalance.models import build_model
    cfg, s = run["cfg"], run["summary"]
    data = build_toy(cfg.dataset, seed=cfg.seed, batch_size=cfg.batch_size, device=torch.device("cpu"))
    model = build_model(cfg.model, cfg.fusion, data.num_classes)
    model.load_state_dict(load_checkpoint(run["dir"] / "ckpt" / "best.pt")["model"])
    for m in ("audio", "visual"):
        r = evaluate(model, data, "test", torch.device("cpu"), zero=m)
        assert (s[f"test/acc_without_{m}"], s[f"test/f1_without_{m}"]) == (r["acc"], r["f1"])
    assert not any(k.startswith("probe/") for k in s)  # probe.enabled=false


def test_a_run_is_quiet_on_stderr_when_it_is_not_a_terminal(tmp_path, capsys):
    train(make_cfg("epochs=1", "modulation=none", "dataset.n_train=64"), tmp_path)
    assert capsys.readouterr().err == ""


def test_the_progress_bar_counts_each_epochs_batches_on_stderr_and_goes_away(tmp_path, monkeypatch):
    # a terminal user sees "epoch N" with the epoch's batch count; the bar is cleared at the epoch's
    # end (leave=False) and never written to stdout, which scripts may parse
    bars = []

    def recording_tqdm(iterable, **kw):
        bars.append(kw)
        return iterable
    monkeypatch.setattr(trainer_module, "tqdm", recording_tqdm)
    train(make_cfg("epochs=2", "modulation=none"), tmp_path)  # TINY: 128 train clips, batch 64
    assert [b["desc"] for b in bars] == ["epoch 0", "epoch 1"]
    assert all(b["total"] == 2 and b["leave"] is False and b["file"] is sys.stderr and b["disable"] is None for b in bars)


class RecordingMethod:
    """Wraps the baseline (modulation=none) and records every hook call of the loop."""

    @staticmethod
    def make(calls):
        from avbalance.methods.base import Method

        class Recorder(Method):
            def on_epoch_start(self, epoch, ctx):
                calls.append(("start", epoch, ctx, self.device, self.seed))

            def transform_features(self, feats, batch, epoch):
                calls.append(("features", epoch, batch))
                return {"audio": torch.zeros_like(feats["audio"]), "visual": feats["visual"]}  # audio silenced

            def loss(self, out, batch, epoch):
                calls.append(("loss", epoch, batch, out))
                return super().loss(out, batch, epoch)

            def backward(self, loss):
                calls.append(("backward", loss))
                super().backward(loss)

            def after_backward(self, model, out, batch, epoch):
                calls.append(("after", epoch, batch, out, model))
                return super().after_backward(model, out, batch, epoch)

            def on_epoch_end(self, epoch, ctx):
                calls.append(("end", epoch, ctx))
        return Recorder


def test_the_loop_calls_every_method_hook_in_order_with_its_arguments(tmp_path, monkeypatch):
    from avbalance.registry import METHODS
    calls = []
    METHODS.names()  # loads the registry
    monkeypatch.setitem(METHODS._entries, "none", RecordingMethod.make(calls))
    train(make_cfg("epochs=2", "modulation=none", "dataset.n_train=64"), tmp_path)  # one step an epoch
    assert [c[:2] for c in calls if c[0] != "backward"] == [
        ("start", 0), ("features", 0), ("loss", 0), ("after", 0), ("end", 0),
        ("start", 1), ("features", 1), ("loss", 1), ("after", 1), ("end", 1)]
    assert [c[0] for c in calls].count("backward") == 2
    start, feats, loss, backward, after, end = calls[:6]
    assert start[3] == torch.device("cpu") and start[4] == 0  # the method gets the run's device and seed
    assert backward[0] == "backward" and backward[1].requires_grad and backward[1].dim() == 0
    assert set(start[2]) == {"model", "data", "optimizer", "run_dir"} and set(end[2]) == {"model", "data", "optimizer", "run_dir", "val"}
    assert start[2]["run_dir"] == tmp_path
    for ctx in (start[2], end[2]):
        assert ctx["model"] is after[4] and isinstance(ctx["optimizer"], torch.optim.SGD)
        assert {id(p) for g in ctx["optimizer"].param_groups for p in g["params"]} == {id(p) for p in after[4].parameters()}
        assert ctx["data"].num_classes == 6
    assert feats[2] is loss[2] is after[2] and loss[3] is after[3]
    out = loss[3]
    # the features the method returned are the ones the head saw: audio silenced -> one audio logit row
    assert torch.allclose(out.logits_audio, out.logits_audio[:1].expand_as(out.logits_audio))


def _poison(monkeypatch, when):
    """Adds NaN to the loss at the (epoch, step)s in `when`: a constant, so the gradients stay finite."""
    from avbalance.methods.base import Method
    original, count = Method.loss, {"epoch": -1, "step": 0}

    def poisoned(self, out, batch, epoch):
        count["step"] = count["step"] + 1 if epoch == count["epoch"] else 0
        count["epoch"] = epoch
        loss, logs = original(self, out, batch, epoch)
        return (loss + float("nan") if (epoch, count["step"]) in when else loss), logs
    monkeypatch.setattr(Method, "loss", poisoned)


def test_a_non_finite_first_step_stops_the_run_at_the_end_of_its_epoch(tmp_path, monkeypatch):
    from avbalance.errors import NonFiniteLossError
    _poison(monkeypatch, {(0, 0)})  # the second step of epoch 0 is finite again
    with pytest.raises(NonFiniteLossError) as info:
        train(make_cfg("epochs=2", "modulation=none"), tmp_path)
    assert str(info.value) == ("non-finite training loss in epoch 0; run stopped, no checkpoint was saved "
                               "(try a lower optim.lr or precision=fp32)")
    assert not (tmp_path / "ckpt" / "last.pt").exists()


def test_a_non_finite_later_epoch_names_the_kept_checkpoint(tmp_path, monkeypatch):
    from avbalance.errors import NonFiniteLossError
    _poison(monkeypatch, {(1, 0)})
    with pytest.raises(NonFiniteLossError) as info:
        train(make_cfg("epochs=2", "modulation=none", "dataset.n_train=64"), tmp_path)
    assert str(info.value) == (f"non-finite training loss in epoch 1; run stopped, last good checkpoint kept in "
                               f"{tmp_path / 'ckpt'} (try a lower optim.lr or precision=fp32)")


def test_resume_follows_a_best_pt_newer_than_the_last_checkpoints_record(tmp_path, monkeypatch):
    """A crash between writing best.pt and last.pt: on resume the best record follows best.pt."""
    import shutil
    real_evaluate, accs = trainer_module.evaluate, []

    def rigged(model, data, split, device, precision="fp32", **kw):
        result = real_evaluate(model, data, split, device, precision, **kw)
        if split == "val":
            result["acc"] = accs.pop(0)
        return result
    monkeypatch.setattr(trainer_module, "evaluate", rigged)
    overrides = ("epochs=3", "modulation=none", "dataset.n_train=64")
    ckpt = tmp_path / "ckpt"

    class Stop(Exception):
        pass

    def keep_epoch_0_then_stop(epoch, row):
        if epoch == 0:
            shutil.copy(ckpt / "last.pt", tmp_path / "last_epoch0.pt")
        if epoch == 1:
            raise Stop
    accs[:] = [0.1, 0.2]
    with pytest.raises(Stop):
        train(make_cfg(*overrides), tmp_path, callbacks=[keep_epoch_0_then_stop])
    shutil.copy(tmp_path / "last_epoch0.pt", ckpt / "last.pt")  # best.pt (epoch 1) is newer than last.pt (epoch 0)
    accs[:] = [0.15, 0.05]  # the re-run epoch 1 scores below best.pt's 0.2
    with log_lines() as lines:
        summary = train(make_cfg(*overrides, "resume=true"), tmp_path)
    assert f"resumed from {ckpt / 'last.pt'} at epoch 1" in lines
    assert summary["selected_epoch"] == 1 and summary["best"]["val/acc"] == 0.2
    assert load_checkpoint(ckpt / "best.pt")["best"]["acc"] == 0.2


def test_paper_protocol_reports_the_selected_test_epoch_from_its_own_rows(tmp_path):
    summary = train(make_cfg("protocol=paper", "epochs=2", "modulation=none", "dataset.n_train=64",
                             "dataset.n_val=64", "optim.lr=0.05"), tmp_path)
    assert summary["selection_split"] == "test" and summary["protocol"] == "paper"
    best, last = summary["best"], summary["last"]
    for k in ("acc", "f1", "acc_audio", "f1_audio", "acc_visual", "f1_visual", "loss", "map"):
        assert summary[f"test/{k}"] == best[f"val/{k}"] and summary[f"last_test/{k}"] == last[f"val/{k}"]
    assert "test/acc_without_audio" in summary
    assert "TEST set" in format_summary(summary)


def test_callbacks_see_each_epochs_row_after_its_checkpoint(tmp_path):
    seen = []

    def callback(epoch, row):
        seen.append((epoch, row["epoch"], load_checkpoint(tmp_path / "ckpt" / "last.pt")["epoch"]))
    train(make_cfg("epochs=2", "modulation=none", "dataset.n_train=64"), tmp_path, callbacks=[callback, lambda e, r: seen.append(e)])
    assert seen == [(0, 0, 0), 0, (1, 1, 1), 1]


# ----------------------------------------------------------------------------- helpers


def test_format_summary_by_hand():
    summary = {"selection_split": "val", "selected_epoch": 7,
               "best": {"val/acc": 0.5, "val/acc_audio": 0.25, "val/acc_visual": 0.125},
               "test/acc": 0.75, "test/acc_audio": 0.5, "test/acc_visual": 1.0}
    assert format_summary(summary) == (
        "                           fused   audio  visual\n"
        "val (epoch 7)             0.5000  0.2500  0.1250\n"
        "test (selected epoch)     0.7500  0.5000  1.0000")
    no_test = {k: v for k, v in summary.items() if not k.startswith("test/")}
    assert format_summary(no_test).splitlines()[1:] == ["val (epoch 7)             0.5000  0.2500  0.1250"]
    on_test = dict(no_test, selection_split="test")
    assert format_summary(on_test).splitlines()[2].startswith("(epoch selected on the TEST set")


def test_steps_csv_on_a_fresh_start_drops_old_rows(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("epoch,step,ratio,coeff_audio,coeff_visual\n0,0,1.0,1.0,1.0\n")
    assert _steps_csv(path, 0) == []
    assert path.read_text() == "epoch,step,ratio,coeff_audio,coeff_visual\n"
    assert _steps_csv(tmp_path / "new.csv", 0) == [] and (tmp_path / "new.csv").exists()


def test_steps_csv_on_resume_keeps_earlier_epochs_and_takes_the_checkpoints_own(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("epoch,step,ratio,coeff_audio,coeff_visual\n"
                    "0,0,1.5,0.5,1.0\n0,1,1.25,0.75,1.0\n"
                    "1,0,2.0,0.25,1.0\n1,1,0.5\n"          # epoch 1: a row cut short by a crash
                    "x,1,1.0,1.0,1.0\n"                     # unreadable
                    "2,0,9.0,9.0,9.0\n")                    # past the checkpoint
    rows = _steps_csv(path, 2, last_steps=[[1, 0, 2.0, 0.25, 1.0], [1, 1, 3.0, 0.5, 1.0]])
    assert rows == [(0, 0, 1.5, 0.5, 1.0), (0, 1, 1.25, 0.75, 1.0), (1, 0, 2.0, 0.25, 1.0), (1, 1, 3.0, 0.5, 1.0)]
    assert path.read_text() == ("epoch,step,ratio,coeff_audio,coeff_visual\n"
                                "0,0,1.5,0.5,1.0\n0,1,1.25,0.75,1.0\n1,0,2.0,0.25,1.0\n1,1,3.0,0.5,1.0\n")
    # without the checkpoint's rows, the readable rows before start_epoch are kept as they are
    path.write_text("epoch,step,ratio,coeff_audio,coeff_visual\n0,0,1.5,0.5,1.0\n1,0,2.0,0.25,1.0\n")
    assert _steps_csv(path, 1) == [(0, 0, 1.5, 0.5, 1.0)]
    assert isinstance(_steps_csv(path, 1)[0][0], int)


def test_rng_state_round_trip_on_cpu():
    cpu = torch.device("cpu")
    state = _rng_state(cpu)
    assert set(state) == {"torch"}
    first = torch.rand(5)
    torch.rand(3)
    _set_rng_state(state, cpu)
    assert torch.equal(torch.rand(5), first)
    _set_rng_state({"torch": state["torch"], "cuda": None}, cpu)  # a CUDA state is ignored on the CPU
    assert torch.equal(torch.rand(5), first)
    assert not math.isnan(first.sum().item())


def test_steps_csv_keeps_readable_rows_after_an_unreadable_one(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("epoch,step,ratio,coeff_audio,coeff_visual\n0,0,1.5,0.5,1.0\n0,1,oops\n1,0,2.0,0.25,1.0\n")
    assert _steps_csv(path, 2) == [(0, 0, 1.5, 0.5, 1.0), (1, 0, 2.0, 0.25, 1.0)]


def test_steps_csv_on_resume_without_the_file_starts_from_the_checkpoint(tmp_path):
    rows = _steps_csv(tmp_path / "steps.csv", 3, last_steps=[[2, 0, 1.0, 0.5, 1.0]])
    assert rows == [(2, 0, 1.0, 0.5, 1.0)]
    assert (tmp_path / "steps.csv").read_text() == "epoch,step,ratio,coeff_audio,coeff_visual\n2,0,1.0,0.5,1.0\n"


class OnTheGPU:
    """A checkpoint's tensor that map_location moved to a GPU (a stand-in: set_state takes only CPU byte
    tensors, and `.cpu()` is what brings it back)."""

    def __init__(self, t):
        self.t = t

    def cpu(self):
        return self.t


def test_rng_state_of_a_cuda_device_also_holds_the_device_generator(monkeypatch):
    """Checked on any machine: torch.cuda's RNG functions are stood in for."""
    calls = []
    cuda_state = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: cuda_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((state, device)))
    gpu = torch.device("cuda", 1)
    state = _rng_state(gpu)
    assert set(state) == {"torch", "cuda"} and state["cuda"] is cuda_state
    assert torch.equal(state["torch"], torch.get_rng_state())
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    saved = torch.get_rng_state()
    torch.rand(7)
    # loaded onto the GPU (trainer: map_location=device): both states go back to the CPU first
    _set_rng_state({"torch": OnTheGPU(saved), "cuda": OnTheGPU(cuda_state)}, gpu)
    assert torch.equal(torch.rand(3), expected) and len(calls) == 1 and calls[0][0] is cuda_state and calls[0][1] == gpu
    calls.clear()
    _set_rng_state(state, gpu)
    assert calls == [(cuda_state, gpu)]
    _set_rng_state({"torch": state["torch"]}, gpu)  # a checkpoint written on the CPU, resumed on a GPU
    assert len(calls) == 1
    _set_rng_state(state, torch.device("cpu"))  # and the other way round
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["ogm_ge", "opm"])
def test_a_methods_generator_state_comes_back_from_a_checkpoint_loaded_onto_a_gpu(name):
    from avbalance.models import build_model
    from avbalance.registry import METHODS
    c = make_cfg(f"modulation={name}")
    make = lambda: METHODS.get(name)(c.modulation, build_model(c.model, c.fusion, 3), device=torch.device("cpu"), seed=0)  # noqa: E731
    saving = make()
    state = saving.state_dict()
    expected = torch.rand(4, generator=saving.generator)
    loading = make()
    torch.rand(9, generator=loading.generator)  # elsewhere in its stream
    loading.load_state_dict({**state, "generator": OnTheGPU(state["generator"])})
    assert torch.equal(torch.rand(4, generator=loading.generator), expected)


def test_a_run_directory_is_created_with_its_parents(tmp_path):
    run_dir = tmp_path / "runs" / "toy" / "one"
    train(make_cfg("epochs=1", "modulation=none", "dataset.n_train=64"), run_dir)
    assert (run_dir / "summary.json").exists()


def test_the_dataset_is_built_from_the_runs_settings(tmp_path, monkeypatch):
    from avbalance.registry import DATASETS
    DATASETS.names()
    real, seen = DATASETS.get("toy"), []

    def recording(cfg, **kw):
        seen.append((cfg, kw))
        data = real(cfg, **kw)
        real_batches = data.train_batches

        def train_batches(*args, **kwargs):
            seen.append(("train_batches", args, kwargs))
            return real_batches(*args, **kwargs)
        data.train_batches = train_batches
        return data
    monkeypatch.setitem(DATASETS._entries, "toy", recording)
    cfg = make_cfg("epochs=2", "modulation=none", "dataset.n_train=64", "seed=4", "batch_size=32", "eval_batch_size=48",
                   "num_workers=1", "speed.preload=eval")
    train(cfg, tmp_path)
    (dataset_cfg, kw), *batches = seen
    assert dataset_cfg == cfg.dataset
    assert kw == {"seed": 4, "batch_size": 32, "eval_batch_size": 48, "num_workers": 1, "preload": "eval",
                  "device": torch.device("cpu")}
    cpu = torch.device("cpu")  # the loop asks for each epoch's batches on the run's device
    assert batches == [("train_batches", (0, cpu), {}), ("train_batches", (1, cpu), {})]


def test_a_train_split_of_one_clip_trains(tmp_path):
    summary = train(make_cfg("epochs=1", "modulation=none", "dataset.n_train=1"), tmp_path)
    assert summary["last"]["samples_per_second"] > 0 and summary["status"] == "ok"


def test_linear_probes_use_the_runs_probe_settings_on_the_selected_weights(tmp_path):
    from avbalance.data.toy import build_toy
    from avbalance.diagnostics import linear_probe
    from avbalance.models import build_model
    cfg = make_cfg("epochs=1", "modulation=none", "dataset.n_train=64", "seed=3", "probe.enabled=true",
                   "probe.epochs=2", "probe.lr=0.02")
    summary = train(cfg, tmp_path)
    data = build_toy(cfg.dataset, seed=3, batch_size=cfg.batch_size, device=torch.device("cpu"))
    model = build_model(cfg.model, cfg.fusion, data.num_classes)
    model.load_state_dict(load_checkpoint(tmp_path / "ckpt" / "best.pt")["model"])
    want = linear_probe(model, data, torch.device("cpu"), epochs=2, lr=0.02, seed=3)
    assert want and {k: summary[k] for k in want} == want


def test_resume_from_a_checkpoint_without_its_log_record(tmp_path):
    """A last.pt without the "log" record (written before it existed): the rows come from the files."""
    from avbalance.rundir import save_checkpoint

    class Stop(Exception):
        pass

    def stop_after_0(epoch, row):
        raise Stop
    overrides = ("epochs=2", "modulation=none", "dataset.n_train=64")
    with pytest.raises(Stop):
        train(make_cfg(*overrides), tmp_path, callbacks=[stop_after_0])
    state = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    del state["log"]
    save_checkpoint(tmp_path / "ckpt" / "last.pt", state)
    train(make_cfg(*overrides, "resume=true"), tmp_path)
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]


def test_ckpt_every_writes_last_pt_every_n_epochs_and_a_resume_repeats_the_epochs_after_it(tmp_path):
    class Stop(Exception):
        pass

    saved = []

    def record(epoch, row):  # which epoch last.pt holds after each epoch
        p = tmp_path / "run" / "ckpt" / "last.pt"
        saved.append(load_checkpoint(p)["epoch"] if p.exists() else None)
        if epoch == 2 and len(saved) == 3:
            raise Stop  # a crash after epoch 2: last.pt holds epoch 1
    overrides = ("epochs=4", "ckpt_every=2", "dataset.n_train=64")
    with pytest.raises(Stop):
        train(make_cfg(*overrides), tmp_path / "run", callbacks=[record])
    assert saved == [None, 1, 1]
    summary = train(make_cfg(*overrides, "resume=true"), tmp_path / "run", callbacks=[record])
    assert saved == [None, 1, 1, 1, 3]  # resumed at epoch 2 (repeated), the last epoch always written
    full = train(make_cfg(*overrides), tmp_path / "full")
    rows = lambda d: [json.loads(ln) for ln in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["epoch"] for r in rows("run")] == [0, 1, 2, 3]
    assert [r["val/acc"] for r in rows("run")] == [r["val/acc"] for r in rows("full")]
    assert summary["test/acc"] == full["test/acc"]
    with pytest.raises(ConfigError, match=r"ckpt_every=0 must be a positive integer"):
        train(make_cfg("ckpt_every=0"), tmp_path / "bad")
