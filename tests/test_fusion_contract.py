"""Fusion heads, every unimodal estimate, by hand: shapes of the layers, fused and unimodal logits
(split, zero, mean, probe), what is detached, and which options each head accepts."""
import pytest
import torch

from avbalance.errors import ConfigError
from avbalance.registry import FUSIONS

DA, DV, C = 5, 7, 4  # different sizes, so that a swapped dimension shows


def lin(x, m):
    return x @ m.weight.T + m.bias


def make(name, **kw):
    torch.manual_seed(0)
    h = FUSIONS.get(name)(DA, DV, C, **kw)
    with torch.no_grad():
        for p in h.parameters():
            p.normal_()  # non-zero biases: every bias rule shows
    return h


def feats(B=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, DA, generator=g, requires_grad=True), torch.randn(B, DV, generator=g, requires_grad=True)


def fused_by_hand(name, h, a, v):
    if name == "concat":
        return a @ h.fc.weight[:, :DA].T + v @ h.fc.weight[:, DA:].T + h.fc.bias
    if name == "sum":
        return lin(a, h.fc_a) + lin(v, h.fc_v)
    if name == "film":
        gb = lin(a, h.fc)
        return lin(gb[:, :DV] * v + gb[:, DV:], h.fc_out)
    return lin(torch.sigmoid(lin(a, h.fc_a)) * lin(v, h.fc_v), h.fc_out)


def test_layer_shapes():
    assert (make("concat").fc.in_features, make("concat").fc.out_features) == (DA + DV, C)
    s = make("sum")
    assert (s.fc_a.in_features, s.fc_a.out_features, s.fc_v.in_features, s.fc_v.out_features) == (DA, C, DV, C)
    f = make("film")
    assert (f.fc.in_features, f.fc.out_features, f.fc_out.in_features, f.fc_out.out_features) == (DA, 2 * DV, DV, C)
    g = make("gated")
    assert (g.fc_a.in_features, g.fc_a.out_features, g.fc_v.in_features, g.fc_v.out_features) == (DA, DV, DV, DV)
    assert (g.fc_out.in_features, g.fc_out.out_features) == (DV, C)
    g = make("gated", hidden=3)
    assert (g.fc_a.out_features, g.fc_v.out_features, g.fc_out.in_features) == (3, 3, 3)


@pytest.mark.parametrize("name", ["concat", "sum", "film", "gated"])
def test_unknown_settings_are_ignored(name):
    FUSIONS.get(name)(DA, DV, C, unimodal="native", eval_half_bias=True, hidden=None, something_else=1)


@pytest.mark.parametrize("name, native", [("concat", "split"), ("sum", "split"), ("film", "mean"), ("gated", "mean")])
def test_native_names_the_heads_own_estimate(name, native):
    assert make(name).unimodal == native
    assert make(name, unimodal="native").unimodal == native
    for other in ("zero", "mean", "probe"):
        assert make(name, unimodal=other).unimodal == other
    assert not hasattr(make(name), "probe_audio")


@pytest.mark.parametrize("name", ["film", "gated"])
def test_split_is_refused_by_heads_without_split_logits(name):
    with pytest.raises(ConfigError) as info:
        make(name, unimodal="split")
    assert str(info.value) == (f"fusion.unimodal='split' is not supported by {type(make(name)).__name__}; "
                               f"expected one of ['mean', 'native', 'probe', 'zero']")


def test_an_unknown_estimate_is_refused_with_the_choices():
    with pytest.raises(ConfigError) as info:
        make("concat", unimodal="half")
    assert str(info.value) == ("fusion.unimodal='half' is not supported by ConcatFusion; "
                               "expected one of ['mean', 'native', 'probe', 'split', 'zero']")


@pytest.mark.parametrize("name", ["concat", "sum", "film", "gated"])
def test_fused_logits_by_hand(name):
    h = make(name)
    a, v = feats()
    out = h(a, v)
    assert out.logits.shape == (6, C) and out.probe is False
    assert torch.allclose(out.logits, fused_by_hand(name, h, a, v), atol=1e-5)


def test_concat_split_estimate_halves_the_bias():
    h = make("concat")
    a, v = feats()
    out = h(a, v)
    assert torch.allclose(out.logits_audio, a @ h.fc.weight[:, :DA].T + h.fc.bias / 2, atol=1e-5)
    assert torch.allclose(out.logits_visual, v @ h.fc.weight[:, DA:].T + h.fc.bias / 2, atol=1e-5)


@pytest.mark.parametrize("half", [False, True])
def test_sum_split_estimate_full_bias_in_training_and_half_at_evaluation_if_asked(half):
    h = make("sum", eval_half_bias=half)
    a, v = feats()
    out = h(a, v)
    assert torch.allclose(out.logits_audio, lin(a, h.fc_a), atol=1e-5)
    assert torch.allclose(out.logits_visual, lin(v, h.fc_v), atol=1e-5)
    h.eval()
    out = h(a, v)
    shift_a, shift_v = (h.fc_a.bias / 2, h.fc_v.bias / 2) if half else (0.0, 0.0)
    assert torch.allclose(out.logits_audio, lin(a, h.fc_a) - shift_a, atol=1e-5)
    assert torch.allclose(out.logits_visual, lin(v, h.fc_v) - shift_v, atol=1e-5)
    assert torch.allclose(out.logits, lin(a, h.fc_a) + lin(v, h.fc_v), atol=1e-5)  # the fused logits keep both biases


@pytest.mark.parametrize("name", ["concat", "sum", "film", "gated"])
def test_zero_estimate(name):
    h = make(name, unimodal="zero")
    a, v = feats()
    out = h(a, v)
    assert torch.allclose(out.logits_audio, fused_by_hand(name, h, a, torch.zeros_like(v)), atol=1e-5)
    assert torch.allclose(out.logits_visual, fused_by_hand(name, h, torch.zeros_like(a), v), atol=1e-5)


@pytest.mark.parametrize("name", ["concat", "sum", "film", "gated"])
def test_mean_estimate_uses_the_other_modalitys_batch_mean_detached(name):
    h = make(name, unimodal="mean")
    a, v = feats()
    out = h(a, v)
    a_mean = a.detach().mean(0, keepdim=True).expand(6, DA)
    v_mean = v.detach().mean(0, keepdim=True).expand(6, DV)
    assert torch.allclose(out.logits_audio, fused_by_hand(name, h, a, v_mean), atol=1e-5)
    assert torch.allclose(out.logits_visual, fused_by_hand(name, h, a_mean, v), atol=1e-5)
    out.logits_audio.sum().backward()  # the audio estimate depends on audio only
    assert a.grad is not None and a.grad.abs().sum() > 0 and v.grad is None


@pytest.mark.parametrize("name", ["concat", "sum", "film", "gated"])
def test_probe_estimate(name):
    h = make(name, unimodal="probe")
    assert (h.probe_audio.in_features, h.probe_audio.out_features) == (DA, C)
    assert (h.probe_visual.in_features, h.probe_visual.out_features) == (DV, C)
    a, v = feats()
    out = h(a, v)
    assert out.probe is True
    assert torch.allclose(out.logits_audio, lin(a, h.probe_audio), atol=1e-5)
    assert torch.allclose(out.logits_visual, lin(v, h.probe_visual), atol=1e-5)
    (out.logits_audio.sum() + out.logits_visual.sum()).backward()
    assert a.grad is None and v.grad is None  # probes learn from detached features
    assert h.probe_audio.weight.grad is not None and h.probe_visual.weight.grad is not None


def test_sum_keeps_the_full_bias_at_evaluation_by_default():
    h = make("sum")
    h.eval()
    a, v = feats()
    out = h(a, v)
    assert torch.allclose(out.logits_audio, lin(a, h.fc_a), atol=1e-5)
    assert torch.allclose(out.logits_visual, lin(v, h.fc_v), atol=1e-5)


def test_a_head_that_leaves_out_unimodal_gets_its_native_estimate():
    # a plug-in head may call FusionHead.__init__ without `unimodal`: it then uses its own `native`
    from avbalance.models.fusion import FusionHead

    class Plain(FusionHead):
        native = "mean"

        def __init__(self, da, dv, num_classes):
            super().__init__(da, dv, num_classes)
            self.fc = torch.nn.Linear(da + dv, num_classes)

        def fuse(self, a, v):
            return self.fc(torch.cat([a, v], 1))

    head = Plain(4, 5, 3)
    assert head.unimodal == "mean"
    out = head(torch.randn(6, 4), torch.randn(6, 5))
    assert out.logits.shape == out.logits_audio.shape == out.logits_visual.shape == (6, 3)
