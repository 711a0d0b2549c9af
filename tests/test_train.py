"""End-to-end runs on tiny toy data: every fusion x modulation, determinism, run directory, resume."""
import json

import pytest
import torch

from avbalance.errors import NonFiniteLossError
from avbalance.registry import FUSIONS, METHODS
from avbalance.rundir import load_checkpoint
from avbalance.trainer import format_summary, train

from conftest import TIMINGS, make_cfg


@pytest.mark.parametrize("fusion", FUSIONS.names())
@pytest.mark.parametrize("modulation", METHODS.names())
def test_two_step_run_of_each_fusion_and_modulation(tmp_path, fusion, modulation):
    # 128 train samples at batch 64 = 2 steps
    cfg = make_cfg(f"fusion={fusion}", f"modulation={modulation}", "epochs=1")
    summary = train(cfg, tmp_path)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert torch.isfinite(torch.tensor(row["train/loss"]))
    assert 0.0 <= summary["test/acc"] <= 1.0


def test_run_directory_contents(tmp_path):
    cfg = make_cfg("epochs=3", "modulation=ogm_ge", "modulation.end_epoch=1", "modulation.alpha=0.8")
    summary = train(cfg, tmp_path, choices={"fusion": "concat", "modulation": "ogm_ge"})
    for name in ("config_resolved.yaml", "meta.json", "metrics.jsonl", "summary.json", "steps.csv", "curves.png",
                 "ckpt/last.pt", "ckpt/best.pt"):
        assert (tmp_path / name).exists(), name
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    required = {"epoch", "train/loss", "val/acc", "val/acc_audio", "val/acc_visual", "val/f1", "mod/ratio_mean",
                "mod/coeff_audio_mean", "mod/coeff_visual_mean", "lr", *TIMINGS}
    assert required <= set(rows[0])
    # coefficients are logged as applied: 1 after the window (epoch 2)
    assert rows[2]["mod/coeff_audio_mean"] == 1.0 and rows[2]["mod/coeff_visual_mean"] == 1.0
    assert min(rows[0]["mod/coeff_audio_mean"], rows[0]["mod/coeff_visual_mean"]) < 1.0
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert {"git", "versions", "device", "choices", "seed"} <= set(meta) and "dirty" in meta["git"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary
    assert saved["selection_split"] == "val" and saved["selected_epoch"] in (0, 1, 2)
    assert saved["best"]["val/acc"] == max(r["val/acc"] for r in rows)
    assert {"test/acc", "test/acc_audio", "test/acc_visual", "test/f1"} <= set(saved)
    assert saved["choices"] == {"fusion": "concat", "modulation": "ogm_ge"}
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(tmp_path / "ckpt" / name)  # weights_only=True
        assert "model" in state
    steps = (tmp_path / "steps.csv").read_text().splitlines()
    assert steps[0] == "epoch,step,ratio,coeff_audio,coeff_visual" and len(steps) == 1 + 3 * 2
    assert "fused" in format_summary(summary)


def _losses(tmp_path, *overrides):
    train(make_cfg("epochs=2", *overrides), tmp_path)
    return [json.loads(ln)["train/loss"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_same_seed_same_losses_and_other_seed_differs(tmp_path):
    a = _losses(tmp_path / "a", "seed=3")
    b = _losses(tmp_path / "b", "seed=3")
    c = _losses(tmp_path / "c", "seed=4")
    assert a == b
    assert a != c


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("modulation", ["ogm_ge", "none"])
def test_resume_matches_uninterrupted_run(tmp_path, modulation):
    overrides = ["epochs=4", f"modulation={modulation}", "optim.step_size=2"]
    full = train(make_cfg(*overrides), tmp_path / "full")

    def stop_after_1(epoch, row):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(make_cfg(*overrides), tmp_path / "cut", callbacks=[stop_after_1])
    resumed = train(make_cfg(*overrides, "resume=true"), tmp_path / "cut")

    def strip(path):  # timings differ between runs, everything else must not
        rows = [json.loads(ln) for ln in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]
    assert strip(tmp_path / "cut" / "metrics.jsonl") == strip(tmp_path / "full" / "metrics.jsonl")
    assert (tmp_path / "cut" / "steps.csv").read_text() == (tmp_path / "full" / "steps.csv").read_text()
    assert {k: v for k, v in resumed.items() if k != "last"} == {k: v for k, v in full.items() if k != "last"}
    a = load_checkpoint(tmp_path / "full" / "ckpt" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "ckpt" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_run_steps_with_its_own_optimizer_flags(tmp_path, monkeypatch):
    """The saving run's optimizer was fused (a stand-in for a run on another device or with other speed
    settings); the resumed run builds its own without: its state is restored, its flags stay its own
    (on CUDA the flag that matters is capturable: speed.cuda_graph's capture fails without it)."""
    import avbalance.trainer as trainer_module
    real, built = trainer_module.build_optimizer, []

    def build(*a, **kw):
        built.append(real(*a, **(kw | {"fused": fused})))
        return built[-1]
    monkeypatch.setattr(trainer_module, "build_optimizer", build)
    overrides = ["epochs=2", "modulation=ogm_ge", "optim=adam"]

    def stop_after_0(epoch, row):
        if epoch == 0:
            raise Interrupt
    fused = True
    with pytest.raises(Interrupt):
        train(make_cfg(*overrides), tmp_path, callbacks=[stop_after_0])
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["optimizer"]["param_groups"][0]["fused"] is True
    fused = False
    train(make_cfg(*overrides, "resume=true"), tmp_path)
    assert not any(g["fused"] for g in built[-1].param_groups)
    assert all(float(s["step"]) == 2 * 2 for s in built[-1].state.values())  # 2 steps per epoch, 2 epochs


def test_resume_without_checkpoint_is_an_error(tmp_path):
    from avbalance.errors import ConfigError
    with pytest.raises(ConfigError, match="last.pt"):
        train(make_cfg("resume=true"), tmp_path)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from avbalance.methods.base import Method
    original = Method.loss

    def poisoned(self, out, batch, epoch):
        loss, logs = original(self, out, batch, epoch)
        return (loss * float("nan") if epoch == 1 else loss), logs
    monkeypatch.setattr(Method, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        train(make_cfg("epochs=3", "modulation=none"), tmp_path)
    state = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_wandb_logger_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    train(make_cfg("epochs=1", "logger=wandb"), tmp_path / "run")
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_an_empty_train_split_stops_in_one_line(tmp_path, monkeypatch):
    from avbalance.data.toy import ToyData
    from avbalance.errors import DataNotPreparedError
    monkeypatch.setattr(ToyData, "train_batches", lambda self, epoch, device: iter(()))
    with pytest.raises(DataNotPreparedError, match="the train split of dataset 'toy' gave no batch"):
        train(make_cfg("epochs=1"), tmp_path)
