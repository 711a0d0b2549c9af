"""The core's claims, checked at the level a user sees them, against values computed here.

Each test names the one-line bug it is there to catch (applied once, locally, it fails the test).
"""
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import avbalance.trainer as trainer_module
from avbalance.data.toy import ToyData, build_toy
from avbalance.evaluate import evaluate
from avbalance.models import build_model
from avbalance.registry import METHODS
from avbalance.rundir import load_checkpoint
from avbalance.trainer import train

from conftest import make_cfg

CPU = torch.device("cpu")


def fresh_model_and_data(cfg):
    """The model and data train() starts from: the data first, then the seed, then the model."""
    data = build_toy(cfg.dataset, seed=cfg.seed, batch_size=cfg.batch_size, device=CPU)
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, cfg.fusion, data.num_classes), data


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_the_update_is_k_times_the_raw_gradient_for_the_modality_with_the_larger_score(tmp_path, alpha):
    """Guards: scores passed to the coefficient in swapped order (the weaker modality damped), and
    optimizer.step() moved before the method's gradient edit (OGM then changes nothing)."""
    lr = 0.1
    cfg = make_cfg("modulation=ogm", "modulation.scope=all", f"modulation.alpha={alpha}", "optim.momentum=0",
                   "optim.weight_decay=0", f"optim.lr={lr}", "dataset.n_train=64", "epochs=1")  # one step
    train(cfg, tmp_path)
    after = load_checkpoint(tmp_path / "ckpt" / "last.pt")["model"]

    model, data = fresh_model_and_data(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = next(iter(data.train_batches(0)))
    feats = model.encode(batch.audio, batch.visual)
    W, b, da = model.head.fc.weight, model.head.fc.bias, feats["audio"].shape[1]
    F.cross_entropy(torch.cat([feats["audio"], feats["visual"]], 1) @ W.T + b, batch.label).backward()
    with torch.no_grad():  # paper Eq. 8 logits and the summed true-class softmax, by hand
        rows = torch.arange(len(batch.label))
        s_audio = (feats["audio"] @ W[:, :da].T + b / 2).softmax(1)[rows, batch.label].sum().item()
        s_visual = (feats["visual"] @ W[:, da:].T + b / 2).softmax(1)[rows, batch.label].sum().item()
    dominant = "audio" if s_audio >= s_visual else "visual"
    k = 1 - math.tanh(alpha * max(s_audio, s_visual) / min(s_audio, s_visual))
    assert k < 0.6  # the damping is large enough to tell apart
    expected_k = {f"encoders.{dominant}.": k}
    checked = 0
    for name, p in model.named_parameters():
        scale = next((v for prefix, v in expected_k.items() if name.startswith(prefix)), 1.0)
        assert torch.allclose(after[name], before[name] - lr * scale * p.grad, atol=1e-6, rtol=1e-5), name
        checked += scale != 1.0
    assert checked >= 2


def test_summary_test_metrics_are_an_evaluation_of_best_pt(tmp_path, monkeypatch):
    """Guards: skipping the reload of best.pt before the test evaluation (test/* of the last epoch)."""
    val_calls = []

    def rigged(model, data, split, device, precision="fp32"):
        result = evaluate(model, data, split, device, precision)
        if split == "val":
            val_calls.append(split)
            if len(val_calls) == 1:
                result["acc"] = 2.0  # epoch 0 is selected, whatever the later epochs score
        return result
    monkeypatch.setattr(trainer_module, "evaluate", rigged)
    cfg = make_cfg("epochs=3", "optim.lr=0.05", "modulation=none")
    summary = train(cfg, tmp_path)
    assert summary["selected_epoch"] == 0
    best = load_checkpoint(tmp_path / "ckpt" / "best.pt")
    last = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert best["epoch"] == 0 and last["epoch"] == 2
    assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])

    model, data = fresh_model_and_data(cfg)
    model.load_state_dict(best["model"])
    expected = evaluate(model, data, "test", CPU)
    assert {k: summary[f"test/{k}"] for k in expected} == expected
    assert json.loads((tmp_path / "summary.json").read_text())["test/acc"] == expected["acc"]
    model.load_state_dict(last["model"])
    assert {k: summary[f"last_test/{k}"] for k in expected} == evaluate(model, data, "test", CPU)


def test_toy_audio_is_the_dominant_stream(tmp_path):
    """The demo's premise: without modulation, audio wins the optimisation on toy."""
    train(make_cfg("modulation=none", "epochs=6", "device=cpu", tiny=False), tmp_path)
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["mod/ratio_mean"] > 1.0 for r in rows[1:])  # s_audio / s_visual
    assert rows[-1]["val/acc_audio"] > rows[-1]["val/acc_visual"] + 0.2


# --- no host synchronisation, seen at the level of PyTorch's operators ------------------------------
# On CUDA these read a device value back to the host (the stream waits); on the CPU the operators
# still run, so a dispatch mode sees them whatever Python or C++ path called them.
def _syncs(func, args, kwargs) -> bool:
    name = str(func)
    if name.startswith(("aten.index.Tensor", "aten.index_put")):  # a boolean mask: a nonzero inside
        return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (args[1] if len(args) > 1 else ()))
    if name.startswith("aten.repeat_interleave.Tensor"):
        return kwargs.get("output_size") is None and (len(args) < 3 or args[2] is None)
    return name.split(".")[1] in {"_local_scalar_dense", "nonzero", "bincount", "masked_select", "unique",
                                  "_unique2", "unique_consecutive", "equal", "is_nonzero", "histc"}


class SyncRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _syncs(func, args, kwargs):
            self.ops.append(str(func))
        return func(*args, **kwargs)


@pytest.mark.parametrize("modulation", ["ogm_ge", "ogm"])
def test_training_steps_and_evaluation_make_no_syncing_op(tmp_path, monkeypatch, modulation):
    """Guards: per-step repeat_interleave on per-tensor sizes (GE's noise scale), .item()/bool() on a
    device value, bincount in evaluation — anything a CUDA sync would be, in the real trainer loop."""
    recorder, steps = SyncRecorder(), []

    def recorded_loop(iterable, **_):  # stands in for tqdm: the loop body runs under the recorder
        for batch in iterable:
            steps.append(len(recorder.ops))
            if len(steps) == 2:  # from the second step on (the first builds GE's cached index)
                recorder.ops.clear()
                with recorder:
                    yield batch
                    for batch in iterable:
                        steps.append(len(recorder.ops))
                        yield batch
                return
            yield batch
    monkeypatch.setattr(trainer_module, "tqdm", recorded_loop)
    real_eval_batches = ToyData.eval_batches

    def recorded_eval(self, split, device=None):
        with recorder:
            yield from real_eval_batches(self, split, device)
    monkeypatch.setattr(ToyData, "eval_batches", recorded_eval)
    train(make_cfg(f"modulation={modulation}", "modulation.alpha=0.8", "epochs=1", "dataset.n_train=256"), tmp_path)
    assert len(steps) == 4
    assert recorder.ops == [], f"host-syncing ops in the training step or evaluation: {sorted(set(recorder.ops))}"


def test_the_sync_recorder_sees_what_it_guards_against():
    recorder = SyncRecorder()
    with recorder:
        x = torch.randn(6)
        x.sum().item()
        torch.repeat_interleave(torch.arange(3), torch.tensor([1, 2, 3]))
        torch.bincount(torch.tensor([0, 1, 1]))
        x[x > 0]
    assert {op.split(".")[1] for op in recorder.ops} == {"_local_scalar_dense", "repeat_interleave", "bincount", "index"}


# --- GE ----------------------------------------------------------------------------------------
def _one_step_grads(cfg, seed=0):
    torch.manual_seed(0)
    data = build_toy(cfg.dataset, seed=0, batch_size=cfg.batch_size, device=CPU)
    model = build_model(cfg.model, cfg.fusion, data.num_classes)
    method = METHODS.get(cfg.modulation.name)(cfg.modulation, model, device=CPU, seed=seed)
    batch = next(iter(data.train_batches(0)))
    out = model(batch.audio, batch.visual)
    loss, _ = method.loss(out, batch, 0)
    method.backward(loss)
    raw = {n: p.grad.clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    logs = method.after_backward(model, out, batch, 0)
    assert torch.equal(torch.get_rng_state(), rng), "GE drew from the global RNG (it must use its own generator)"
    new = {n: p.grad.clone() for n, p in model.named_parameters()}
    return raw, new, {m: logs[f"mod/coeff_{m}"].item() for m in ("audio", "visual")}


def test_ge_noise_is_there_has_the_gradients_spread_and_is_seeded(cfg_factory):
    """Guards: GE switched off (noise missing), noise from the global RNG, noise not reproducible."""
    cfg = cfg_factory("modulation=ogm_ge", "modulation.alpha=0.8", "model.width=16")
    raw, new, k = _one_step_grads(cfg)
    again = _one_step_grads(cfg)[1]
    other_seed = _one_step_grads(cfg, seed=1)[1]
    for name in raw:
        if not name.startswith("encoders.") or raw[name].dim() != 4:
            assert torch.equal(new[name], raw[name]), name  # scope=conv: only conv kernels change
            continue
        modality = "audio" if name.startswith("encoders.audio") else "visual"
        noise = new[name] - k[modality] * raw[name]
        assert torch.equal(new[name], again[name]) and not torch.equal(new[name], other_seed[name])
        if raw[name].numel() >= 1000:  # the spread of the unscaled gradient, one sigma per tensor
            assert noise.std().item() == pytest.approx(raw[name].std().item(), rel=0.1), name


# --- precision, init, fusion heads, metrics -----------------------------------------------------------
def _linear_output_dtypes(cfg, tmp_path):
    seen = set()
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.add(o.dtype) if isinstance(m, nn.Linear) else None)
    try:
        train(cfg, tmp_path)
    finally:
        handle.remove()
    return seen


def test_bf16_precision_runs_the_forward_pass_in_bf16(tmp_path):
    """Guards: `precision` ignored (the old test passed with fp32 everywhere)."""
    assert _linear_output_dtypes(make_cfg("epochs=1", "precision=bf16"), tmp_path / "bf16") == {torch.bfloat16}
    assert _linear_output_dtypes(make_cfg("epochs=1", "precision=fp32"), tmp_path / "fp32") == {torch.float32}


def test_reference_init_draws_kaiming_fan_out_convs_and_xavier_linears():
    cfg = make_cfg("model=resnet18", tiny=False)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.fusion, 6)
    n_conv = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 30_000:
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            assert m.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.03)
            assert abs(m.weight.mean().item()) < 0.02 * math.sqrt(2 / fan_out) * 10
            n_conv += 1
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    fc = model.head.fc
    assert fc.weight.std().item() == pytest.approx(math.sqrt(2 / (fc.in_features + fc.out_features)), rel=0.05)
    assert torch.count_nonzero(fc.bias) == 0
    assert n_conv >= 10


def _heads_by_hand(name, h, a, v):
    """(fused, audio, visual) logits from the head's weights, written out here."""
    lin = lambda x, m: x @ m.weight.T + m.bias  # noqa: E731
    if name == "sum":
        la, lv = lin(a, h.fc_a), lin(v, h.fc_v)
        return la + lv, la, lv
    mean_a, mean_v = a.mean(0).repeat(len(a), 1), v.mean(0).repeat(len(v), 1)  # the batch-mean estimate
    if name == "film":
        def film(a, v):
            gb = lin(a, h.fc)
            return lin(gb[:, : v.shape[1]] * v + gb[:, v.shape[1]:], h.fc_out)
        return film(a, v), film(a, mean_v), film(mean_a, v)
    if name == "gated":
        def gated(a, v):
            return lin(torch.sigmoid(lin(a, h.fc_a)) * lin(v, h.fc_v), h.fc_out)
        return gated(a, v), gated(a, mean_v), gated(mean_a, v)
    W, b = h.fc.weight, h.fc.bias
    return torch.cat([a, v], 1) @ W.T + b, a @ W[:, : a.shape[1]].T + b / 2, v @ W[:, a.shape[1]:].T + b / 2


@pytest.mark.parametrize("name", ["concat", "sum", "film", "gated"])
def test_fusion_heads_compute_what_their_docs_say(name):
    from avbalance.registry import FUSIONS
    torch.manual_seed(0)
    h = FUSIONS.get(name)(8, 6, 5)
    with torch.no_grad():
        for p in h.parameters():
            p.normal_()  # non-zero biases: every bias rule shows
    a, v = torch.randn(4, 8), torch.randn(4, 6)
    out = h(a, v)
    for got, want in zip((out.logits, out.logits_audio, out.logits_visual), _heads_by_hand(name, h, a, v)):
        assert torch.allclose(got, want, atol=1e-5)


class _Fixed:
    """A data module whose one eval batch has fixed predictions: logits are one-hot rows."""
    num_classes = 3

    def __init__(self, y, pred, pred_audio, pred_visual):
        self.y, self.preds = torch.tensor(y), [torch.tensor(p) for p in (pred, pred_audio, pred_visual)]

    def eval_batches(self, split, device):
        from avbalance.data.base import Batch
        yield Batch(torch.zeros(len(self.y), 1), torch.zeros(len(self.y), 1), self.y, torch.arange(len(self.y)))


class _OneHot(nn.Module):
    def __init__(self, preds):
        super().__init__()
        self.preds = preds

    def forward(self, audio, visual):
        from avbalance.models.fusion import FusionOutput
        return FusionOutput(*(F.one_hot(p, 3).float() * 10 for p in self.preds))


def test_evaluate_accuracy_and_macro_f1_by_hand():
    y = [0, 0, 1, 1, 2, 2]
    data = _Fixed(y, pred=[0, 1, 1, 1, 2, 0], pred_audio=[0, 0, 1, 1, 2, 2], pred_visual=[1, 1, 1, 1, 1, 1])
    r = evaluate(_OneHot(data.preds), data, "test", CPU)
    # fused: class 0 tp1 fp1 fn1 -> F1 1/2; class 1 tp2 fp1 fn0 -> 4/5; class 2 tp1 fp0 fn1 -> 2/3
    assert r["acc"] == pytest.approx(4 / 6) and r["f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert r["acc_audio"] == 1.0 and r["f1_audio"] == 1.0
    # visual predicts class 1 everywhere: F1 0, 1/2 (tp2 fp4), 0
    assert r["acc_visual"] == pytest.approx(2 / 6) and r["f1_visual"] == pytest.approx((0 + 1 / 2 + 0) / 3)
    expected_loss = F.cross_entropy(F.one_hot(data.preds[0], 3).float() * 10, data.y).item()
    assert r["loss"] == pytest.approx(expected_loss, rel=1e-6)


def test_meter_means_and_traces():
    from avbalance.meter import DeviceMeter
    m = DeviceMeter(("r",))
    for v in (1.0, 2.0, 6.0):
        m.add({"loss": torch.tensor(v), "r": torch.tensor(v * 10)})
    m.add({"loss": torch.tensor(3.0)})
    means, traces = m.read()
    assert means == {"loss": pytest.approx(3.0), "r": pytest.approx(30.0)} and traces == {"r": [10.0, 20.0, 60.0]}


@pytest.mark.slow  # ~30 s of training in all (the slow tier runs in CI)
@pytest.mark.parametrize("fusion, epochs", [("concat", 6), ("sum", 6), ("film", 6), ("gated", 10)])
def test_every_fusion_damps_audio_on_toy(tmp_path, fusion, epochs):
    """Toy's audio dominates, so OGM must damp audio more than visual over the first epochs, with
    every fusion's unimodal estimate. (Gated fusion's old zero-the-other estimate failed this: with
    zero-initialised biases it silenced the audio branch, so visual looked dominant.)"""
    train(make_cfg(f"fusion={fusion}", "modulation=ogm", f"epochs={epochs}", "optim.lr=0.05", "device=cpu", tiny=False), tmp_path)
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    k_audio = sum(r["mod/coeff_audio_mean"] for r in rows) / len(rows)
    k_visual = sum(r["mod/coeff_visual_mean"] for r in rows) / len(rows)
    assert k_audio < k_visual - 0.2, (k_audio, k_visual)
