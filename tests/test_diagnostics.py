"""Diagnostics after training: missing-modality accuracy, and linear probes on the frozen encoders."""
import pytest
import torch

from avbalance.data.toy import build_toy
from avbalance.diagnostics import linear_probe, missing_modality
from avbalance.evaluate import evaluate
from avbalance.models import build_model
from avbalance.rundir import load_checkpoint
from avbalance.trainer import train

from conftest import make_cfg, shared_unless_mutating

CPU = torch.device("cpu")
CHANCE = 1 / 6  # toy has 6 balanced classes
PROBE_KEYS = {f"probe/{s}/{k}_{m}" for s in ("val", "test") for k in ("acc", "f1") for m in ("audio", "visual")}


def model_and_data(cfg, ckpt=None):
    """As train() builds them (data, seed, model), with `ckpt`'s weights when given."""
    data = build_toy(cfg.dataset, seed=cfg.seed, batch_size=cfg.batch_size, device=CPU)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.fusion, data.num_classes)
    if ckpt is not None:
        model.load_state_dict(load_checkpoint(ckpt)["model"])
    return model, data


@pytest.fixture(scope=shared_unless_mutating)
def trained(tmp_path_factory):
    """One short joint run on toy with both streams learnable at a small size (about a second)."""
    cfg = make_cfg("modulation=none", "epochs=1", "model.width=16", "dataset.spec_shape=[32,24]", "dataset.image_size=24",
                   "dataset.visual_snr=2", "dataset.n_train=256", "dataset.n_val=128", "dataset.n_test=128")
    run_dir = tmp_path_factory.mktemp("run")
    train(cfg, run_dir)
    return cfg, run_dir / "ckpt" / "best.pt"


@pytest.mark.parametrize("kept", ["audio", "visual"])
def test_missing_modality_of_a_model_that_reads_one_input(trained, kept):
    """Fused logits that depend on `kept` only: without it the prediction is one class for every
    sample (that class's frequency); without the other input, nothing changes.
    Guards: zeroing the wrong input, zeroing features instead of inputs, keys swapped."""
    model, data = model_and_data(*trained)
    fc, da = model.head.fc, model.encoders["audio"].out_dim
    other = slice(da, None) if kept == "audio" else slice(0, da)
    with torch.no_grad():
        fc.weight[:, other].zero_()  # concat head: the other modality's half of W set to zero
    dropped = "visual" if kept == "audio" else "audio"
    full = evaluate(model, data, "test", CPU)
    r = missing_modality(model, data, "test", CPU)
    assert set(r) == {"acc_without_audio", "acc_without_visual", "f1_without_audio", "f1_without_visual"}
    assert r[f"acc_without_{dropped}"] == full["acc"] and r[f"f1_without_{dropped}"] == full["f1"]
    _, preds = evaluate(model, data, "test", CPU, zero=kept, predictions=True)
    assert preds["pred"].unique().numel() == 1  # a constant predictor
    assert r[f"acc_without_{kept}"] == pytest.approx((preds["label"] == preds["pred"][0]).float().mean().item())
    assert abs(r[f"acc_without_{kept}"] - CHANCE) < 0.05


def test_linear_probe_beats_chance_on_both_encoders(trained):
    model, data = model_and_data(*trained)
    r = linear_probe(model, data, CPU, epochs=15, lr=3e-2, batch_size=64)  # 60 steps per probe
    assert set(r) == PROBE_KEYS
    for key in PROBE_KEYS:
        if "/acc_" in key:
            assert r[key] > CHANCE + 0.1, (key, r[key])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_linear_probe_leaves_the_model_its_mode_and_the_global_rng_alone(mode):
    """Guards: encoders updated by the probe's optimiser, BatchNorm statistics updated by a
    train-mode feature pass, the mode not restored, probes drawn from the global RNG."""
    model, data = model_and_data(make_cfg())
    model.train(mode == "train")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    r = linear_probe(model, data, CPU, epochs=3, seed=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training == (mode == "train")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert linear_probe(model, data, CPU, epochs=3, seed=1) == r  # seeded: the same probe again


def test_linear_probe_of_a_unimodal_model_has_only_its_modality():
    model, data = model_and_data(make_cfg("model.modalities=visual"))
    assert set(linear_probe(model, data, CPU, epochs=2)) == {k for k in PROBE_KEYS if k.endswith("_visual")}


def test_linear_probe_without_a_test_split_reports_the_selection_split():
    model, data = model_and_data(make_cfg())
    data.split_names = ["train", "val"]
    assert set(linear_probe(model, data, CPU, epochs=1)) == {k for k in PROBE_KEYS if k.startswith("probe/val/")}


def test_the_probe_loops_make_no_syncing_op(monkeypatch):
    """Guards: a per-epoch `.item()` to pick the best epoch, boolean-mask batches, bincount per step."""
    from torch.utils._python_dispatch import _disable_current_modes

    from avbalance import diagnostics
    from test_core_claims import SyncRecorder
    adam_step = torch.optim.Adam.step

    def unrecorded_step(self, *a, **kw):  # Adam reads its step count, a CPU tensor on every device: no device sync
        with _disable_current_modes():
            return adam_step(self, *a, **kw)
    monkeypatch.setattr(torch.optim.Adam, "step", unrecorded_step)
    model, data = model_and_data(make_cfg())
    recorder = SyncRecorder()
    with recorder:
        feats, y = diagnostics._features(model.eval(), data, "train", CPU, "fp32", ["audio"])
        diagnostics._fit_probe(feats["audio"], y, feats["audio"], y, 6, 3, 1e-3, 32, torch.Generator().manual_seed(0))
    assert recorder.ops == []
