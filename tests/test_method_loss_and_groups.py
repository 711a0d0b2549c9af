"""The baseline method's hooks: the loss and what it logs (by hand), the optimizer's parameter groups,
the no-op hooks, and the modality scores OGM is driven by."""
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from avbalance.data.base import Batch
from avbalance.methods.base import Method, modality_scores
from avbalance.models import build_model
from avbalance.models.fusion import FusionOutput
from avbalance.registry import METHODS

CPU = torch.device("cpu")


def ce(logits, y):
    """Mean cross-entropy, written out."""
    return sum(math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(logits.tolist(), y.tolist())) / len(y)


def outputs(probe=False):
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.5]])
    audio = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.0]])
    visual = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.5], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 1, 2, 0])
    return FusionOutput(logits, audio, visual, probe=probe), Batch(torch.zeros(4, 1), torch.zeros(4, 1), y, torch.arange(4))


def true_class_prob_sum(logits, y):
    return sum(math.exp(row[t]) / sum(math.exp(v) for v in row) for row, t in zip(logits.tolist(), y.tolist()))


def test_loss_and_logs_by_hand():
    out, batch = outputs()
    loss, logs = Method(None, None, device=CPU, seed=0).loss(out, batch, 0)
    y = batch.label
    assert loss.item() == pytest.approx(ce(out.logits, y), rel=1e-6)
    assert set(logs) == {"train/loss", "train/loss_audio", "train/loss_visual", "train/acc", "mod/ratio"}
    assert logs["train/loss"].item() == pytest.approx(ce(out.logits, y), rel=1e-6)
    assert logs["train/loss_audio"].item() == pytest.approx(ce(out.logits_audio, y), rel=1e-6)
    assert logs["train/loss_visual"].item() == pytest.approx(ce(out.logits_visual, y), rel=1e-6)
    assert logs["train/acc"].item() == pytest.approx(3 / 4)  # argmax 0, 1, 2, 1 against 0, 1, 2, 0
    ratio = true_class_prob_sum(out.logits_audio, y) / true_class_prob_sum(out.logits_visual, y)
    assert logs["mod/ratio"].item() == pytest.approx(ratio, rel=1e-6)
    assert all(v.dim() == 0 and not v.requires_grad for v in logs.values())


def test_probe_outputs_add_their_own_losses():
    out, batch = outputs(probe=True)
    y = batch.label
    loss, logs = Method(None, None, device=CPU, seed=0).loss(out, batch, 0)
    total = ce(out.logits, y) + ce(out.logits_audio, y) + ce(out.logits_visual, y)
    assert loss.item() == pytest.approx(total, rel=1e-6)
    assert logs["train/loss"].item() == pytest.approx(total, rel=1e-6)


def test_loss_keeps_the_graph_and_backward_fills_the_gradients():
    torch.manual_seed(0)
    w = torch.randn(3, 3, requires_grad=True)
    out, batch = outputs()
    out = FusionOutput(out.logits @ w, out.logits_audio, out.logits_visual)
    method = Method(None, None, device=CPU, seed=0)
    loss, logs = method.loss(out, batch, 0)
    method.backward(loss)
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert not logs["train/loss"].requires_grad


def test_modality_scores_are_summed_true_class_probabilities():
    out, batch = outputs()
    s = modality_scores(out, batch.label)
    assert s.tolist() == pytest.approx([true_class_prob_sum(out.logits_audio, batch.label),
                                        true_class_prob_sum(out.logits_visual, batch.label)], rel=1e-6)


def test_baseline_hooks_change_nothing_and_log_coefficient_one():
    method = METHODS.get("none")(OmegaConf.create({"name": "none"}), None, device=CPU, seed=0)
    out, batch = outputs()
    feats = {"audio": torch.ones(2, 3), "visual": torch.zeros(2, 3)}
    assert method.transform_features(feats, batch, 0) is feats
    logs = method.after_backward(None, out, batch, 0)
    assert set(logs) == {"mod/coeff_audio", "mod/coeff_visual"}
    assert all(v.item() == 1.0 and v.dim() == 0 and v.device == CPU for v in logs.values())
    assert method.state_dict() == {}
    method.load_state_dict({})
    method.on_epoch_start(0, {})
    method.on_epoch_end(0, {})
    x = torch.tensor([1.0, 2.0])
    assert method.reduce(x) is x
    assert (method.seed, method.device) == (0, CPU)


def test_param_groups_are_keyed_by_modality_and_cover_every_parameter_once():
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "tiny", "width": 4}), OmegaConf.create({"name": "sum"}), 5)
    groups = Method(None, model, device=CPU, seed=0).param_groups(model)
    assert [g["modality"] for g in groups] == ["audio", "visual", "head"]
    assert all(set(g) == {"params", "modality"} for g in groups)
    ids = lambda params: [id(p) for p in params]  # noqa: E731
    assert ids(groups[0]["params"]) == ids(model.encoders["audio"].parameters())
    assert ids(groups[1]["params"]) == ids(model.encoders["visual"].parameters())
    assert ids(groups[2]["params"]) == ids(model.head.parameters())
    assert sorted(i for g in groups for i in ids(g["params"])) == sorted(ids(model.parameters()))
    # the encoders' groups hold every encoder parameter (scope all), not only the conv kernels
    assert any(p.dim() != 4 for p in groups[0]["params"])
    optimizer = torch.optim.SGD(groups, lr=0.1)  # the groups are what an optimizer takes
    assert [g["modality"] for g in optimizer.param_groups] == ["audio", "visual", "head"]


def test_method_keeps_its_settings():
    cfg = OmegaConf.create({"name": "none"})
    method = Method(cfg, None, device=CPU, seed=7)
    assert method.cfg is cfg and method.seed == 7 and method.device == CPU
    assert method.one.shape == () and method.one.item() == 1.0


def test_cross_entropy_helper_matches_torch():
    out, batch = outputs()
    assert ce(out.logits, batch.label) == pytest.approx(F.cross_entropy(out.logits, batch.label).item(), rel=1e-6)


def test_multitask_loss_is_the_sum_of_the_three_cross_entropies_and_logs_them_by_hand():
    out, batch = outputs()
    y = batch.label
    method = METHODS.get("multitask")(OmegaConf.create({"name": "multitask", "heads": "fusion"}), None, device=CPU, seed=0)
    loss, logs = method.loss(out, batch, 0)
    want = ce(out.logits, y) + ce(out.logits_audio, y) + ce(out.logits_visual, y)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert set(logs) == {"train/loss", "train/loss_audio", "train/loss_visual", "train/acc", "mod/ratio"}
    assert logs["train/loss"].item() == pytest.approx(want, rel=1e-6)
    assert logs["train/loss_audio"].item() == pytest.approx(ce(out.logits_audio, y), rel=1e-6)
    assert logs["train/loss_visual"].item() == pytest.approx(ce(out.logits_visual, y), rel=1e-6)
    assert logs["train/acc"].item() == pytest.approx(3 / 4)  # fused argmax 0, 1, 2, 1 against 0, 1, 2, 0
    ratio = true_class_prob_sum(out.logits_audio, y) / true_class_prob_sum(out.logits_visual, y)
    assert logs["mod/ratio"].item() == pytest.approx(ratio, rel=1e-6)
    assert method.after_backward(None, out, batch, 0) == {}  # no gradient edit


def test_the_epoch_window_check_allows_a_one_epoch_window_and_names_the_bad_start():
    from avbalance.errors import ConfigError
    from avbalance.methods.base import check_epoch_window
    check_epoch_window(OmegaConf.create({"start_epoch": 0, "end_epoch": 0}))  # inclusive: epoch 0 only
    check_epoch_window(OmegaConf.create({"start_epoch": 5, "end_epoch": 5}))
    for start in (-1, 6):
        with pytest.raises(ConfigError) as e:
            check_epoch_window(OmegaConf.create({"start_epoch": start, "end_epoch": 5}))
        assert str(e.value) == (f"modulation.start_epoch={start} is not allowed; expected 0 <= start_epoch <= "
                                f"modulation.end_epoch=5")


def test_modules_a_method_added_get_their_own_aux_group():
    model = build_model(OmegaConf.create({"name": "tiny", "width": 4}), OmegaConf.create({"name": "concat"}), 3)
    model.aux["extra"] = torch.nn.Linear(2, 3)
    model.aux["extra"].bias.requires_grad_(False)  # frozen parameters are left out
    groups = Method(None, None, device=CPU, seed=0).param_groups(model)
    assert [g["modality"] for g in groups] == ["audio", "visual", "head", "aux"]
    assert groups[-1]["params"] == [model.aux["extra"].weight]
