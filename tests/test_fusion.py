"""Every fusion head: gradients reach every parameter; unimodal logits are what the docs say."""
import pytest
import torch
import torch.nn.functional as F

from avbalance.errors import ConfigError
from avbalance.models import build_model
from avbalance.registry import FUSIONS

DA, DV, C = 8, 8, 5


def head(name, **kw):
    torch.manual_seed(0)
    return FUSIONS.get(name)(DA, DV, C, **kw)


def feats(B=6):
    torch.manual_seed(1)
    return torch.randn(B, DA, requires_grad=True), torch.randn(B, DV, requires_grad=True)


@pytest.mark.parametrize("name", FUSIONS.names())
@pytest.mark.parametrize("unimodal", ["native", "zero", "probe"])
def test_every_parameter_gets_a_gradient(name, unimodal):
    h = head(name, unimodal=unimodal)
    a, v = feats()
    out = h(a, v)
    y = torch.arange(6) % C
    loss = F.cross_entropy(out.logits, y)
    if out.probe:
        loss = loss + F.cross_entropy(out.logits_audio, y) + F.cross_entropy(out.logits_visual, y)
    loss.backward()
    for pname, p in h.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}/{unimodal}: {pname} has no gradient"
    assert a.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    assert out.logits_audio.shape == out.logits_visual.shape == (6, C)


def test_full_model_every_parameter_gets_a_gradient(cfg_factory):
    for name in FUSIONS.names():
        cfg = cfg_factory(f"fusion={name}")
        model = build_model(cfg.model, cfg.fusion, 6)
        out = model(torch.randn(4, 1, 16, 12), torch.randn(4, 3, 2, 12, 12))
        F.cross_entropy(out.logits, torch.arange(4)).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"{name}: {missing}"


@pytest.mark.parametrize("name", ["concat", "sum"])
def test_unimodal_logits_add_up_to_fused(name):
    h = head(name)
    with torch.no_grad():
        for p in h.parameters():
            p.normal_()  # non-zero biases, so the bias split matters
    a, v = feats()
    out = h(a, v)
    assert torch.allclose(out.logits_audio + out.logits_visual, out.logits, atol=1e-5)


def test_concat_halves_the_bias_as_the_reference():
    h = head("concat")
    with torch.no_grad():
        h.fc.bias.fill_(2.0)
    a, v = feats()
    out = h(a, v)
    assert torch.allclose(out.logits_audio, a @ h.fc.weight[:, :DA].T + 1.0, atol=1e-6)
    assert torch.allclose(out.logits_visual, v @ h.fc.weight[:, DA:].T + 1.0, atol=1e-6)


def test_sum_uses_full_bias_in_eval_unless_reference_option():
    a, v = feats()
    for half, expected_shift in ((False, 0.0), (True, 1.5)):
        h = head("sum", eval_half_bias=half)
        with torch.no_grad():
            h.fc_a.bias.fill_(3.0)
        train_out = h(a, v).logits_audio
        h.eval()
        eval_out = h(a, v).logits_audio
        assert torch.allclose(train_out - eval_out, torch.full_like(train_out, expected_shift), atol=1e-6)


def test_probe_inputs_are_detached():
    h = head("film", unimodal="probe")
    a, v = feats()
    out = h(a, v)
    F.cross_entropy(out.logits_audio, torch.zeros(6, dtype=torch.long)).backward()
    assert a.grad is None  # the probe's loss never reaches the encoder features


@pytest.mark.parametrize("name", ["film", "gated"])
def test_split_estimate_is_rejected_where_it_does_not_exist(name):
    with pytest.raises(ConfigError, match="unimodal"):
        head(name, unimodal="split")
