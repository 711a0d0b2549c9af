"""InfoReg's math on hand-made tensors: the Fisher-trace window indicator, the regulation strength,
the proximal term, the trace itself, one step of the method on a tiny model (which encoder is
pulled back, by how much, and what the trace sees), and the March and audio-window options."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from avbalance.data.base import Batch
from avbalance.errors import ConfigError
from avbalance.methods.inforeg import InfoReg, add_proximal_, fisher_trace, regulation_strength, window_indicator
from avbalance.models import build_model

CPU = torch.device("cpu")


@pytest.mark.parametrize("history, length, want", [
    ([], 10, 1.0),                                   # epoch 0
    ([2.0], 10, 1.0),                                # (0.2 - 0) / 0.2: the zero padding
    ([2.0, 3.0], 10, (0.5 - 0.2) / 0.5),             # 0.6
    ([float(i) for i in range(1, 13)], 10, (7.5 - 6.5) / 7.5),  # mean(3..12), mean(2..11)
    ([1.0, 2.0, 4.0], 3, (7 / 3 - 1) / (7 / 3)),     # padded [0, 0, 0, 1, 2, 4]
    ([1.0] * 11, 10, 0.0),                           # a flat trace: the window is closed
    ([0.0], 10, 0.0),                                # no gradient at all (the reference divides by 0)
])
def test_window_indicator_by_hand(history, length, want):
    assert window_indicator(history, length) == pytest.approx(want)


@pytest.mark.parametrize("s_a, s_v, open_a, open_v, want_a, want_v", [
    (30.0, 29.0, True, True, 0.95 * math.exp(math.tanh(1.0)), 0.0),
    (10.0, 12.0, True, True, 0.0, 0.1 * math.exp(math.tanh(2.0))),
    (40.0, 10.0, True, True, 0.95 * math.e ** math.tanh(30.0), 0.0),   # sums: tanh saturates, about 0.95 e
    (30.0, 29.0, False, True, 0.0, 0.0),                                 # audio leads, its window closed
    (10.0, 12.0, True, False, 0.0, 0.0),
    (7.0, 7.0, True, True, 0.0, 0.0),                                    # a tie regulates nobody
])
def test_regulation_strength_by_hand(s_a, s_v, open_a, open_v, want_a, want_v):
    b_a, b_v = regulation_strength(torch.tensor(s_a), torch.tensor(s_v), open_a, open_v, 0.95, 0.1)
    assert (b_a.item(), b_v.item()) == (pytest.approx(want_a, rel=1e-6), pytest.approx(want_v, rel=1e-6))


def test_the_proximal_term_is_the_gradient_of_half_beta_squared_distance():
    theta = [torch.tensor([1.0, -2.0]), torch.tensor([[0.5]])]
    theta0 = [torch.tensor([0.0, -1.0]), torch.tensor([[2.0]])]
    grads = [torch.tensor([0.1, 0.2]), torch.tensor([[-0.3]])]
    add_proximal_(grads, theta, theta0, torch.tensor(2.0))
    assert grads[0].tolist() == pytest.approx([0.1 + 2 * 1.0, 0.2 + 2 * -1.0])
    assert grads[1].tolist() == [[pytest.approx(-0.3 + 2 * -1.5)]]
    # the same as autograd of (beta / 2) |theta - theta0|^2 on top of the loss gradient
    t = [x.clone().requires_grad_() for x in theta]
    (sum((x - x0).pow(2).sum() for x, x0 in zip(t, theta0)) * 2.0 / 2).backward()
    assert torch.allclose(grads[0], torch.tensor([0.1, 0.2]) + t[0].grad)


def test_the_fisher_trace_is_the_sum_over_layers_of_mean_squared_gradients():
    g = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([2.0])]
    assert fisher_trace(g).item() == pytest.approx((1 + 4 + 9 + 16) / 4 + 4.0)
    # summed over steps it equals the reference's accumulate-then-mean: sum_W mean(sum_t g_t^2)
    steps = [[torch.randn(3, 4), torch.randn(5)] for _ in range(4)]
    acc = [sum(s[i] ** 2 for s in steps) for i in range(2)]
    assert sum(fisher_trace(s) for s in steps).item() == pytest.approx(sum(a.mean().item() for a in acc), rel=1e-6)


def make(**overrides):
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "tiny", "width": 4}), OmegaConf.create({"name": "concat"}), 3)
    cfg = OmegaConf.create({"name": "inforeg", "heads": "separate", "tau": 0.05, "beta_audio": 0.95,
                            "beta_visual": 0.1, "trace_window": 10, "window": "own", "regulate": "both", **overrides})
    return InfoReg(cfg, model, device=CPU, seed=0), model


def step(method, model, leader, drift=0.1):
    """One step after the encoders drifted by `drift` from their epoch-start weights, with the
    `leader`'s unimodal head made confident (bias +6 on the label, which is 0 for every sample)."""
    n = 8
    b = Batch(torch.randn(n, 1, 16, 12), torch.randn(n, 3, 1, 12, 12), torch.zeros(n, dtype=torch.long), torch.arange(n))
    method.on_epoch_start(0, {})
    with torch.no_grad():
        for p in model.encoders.parameters():
            p.add_(drift)
        model.aux["unimodal"].fc[leader].bias.copy_(torch.tensor([6.0, 0.0, 0.0]))
    out = model(b.audio, b.visual)
    loss, _ = method.loss(out, b, 0)
    model.zero_grad()
    loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    logs = method.after_backward(model, out, b, 0)
    s = [out.logits_audio.softmax(1)[:, 0].sum().item(), out.logits_visual.softmax(1)[:, 0].sum().item()]
    return plain, logs, s


def check_pull(model, plain, modality, beta):
    for n, p in model.named_parameters():
        want = plain[n] + beta * 0.1 if n.startswith(f"encoders.{modality}.") else plain[n]
        assert torch.allclose(p.grad, want, atol=1e-6), n


def test_a_step_pulls_the_leading_encoder_back_and_the_trace_sees_the_pulled_gradient():
    method, model = make()
    plain, logs, (s_a, s_v) = step(method, model, "audio")
    beta = 0.95 * math.exp(math.tanh(s_a - s_v))
    assert s_a > s_v and logs["mod/beta_audio"].item() == pytest.approx(beta, rel=1e-5)
    assert logs["mod/beta_visual"].item() == 0.0 and logs["mod/k_audio"].item() == 1.0
    check_pull(model, plain, "audio", beta)  # theta - theta0 = 0.1 everywhere in the audio encoder
    convs = [m.weight.grad for m in model.encoders["audio"].modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2
    assert logs["mod/fisher_audio"].item() == pytest.approx(sum((g ** 2).mean().item() for g in convs), rel=1e-5)
    assert all(v.dim() == 0 for v in logs.values())
    method.on_epoch_start(1, {})  # the anchor moves to the weights at each epoch start
    assert all(torch.equal(a, p) for a, p in zip(method.anchor["audio"], model.encoders["audio"].parameters()))


def test_a_leading_visual_encoder_is_pulled_back_but_never_in_the_march_release():
    method, model = make()
    plain, logs, (s_a, s_v) = step(method, model, "visual")
    beta = 0.1 * math.exp(math.tanh(s_v - s_a))
    assert s_v > s_a and logs["mod/beta_visual"].item() == pytest.approx(beta, rel=1e-5)
    check_pull(model, plain, "visual", beta)
    method, model = make(regulate="audio")
    plain, logs, _ = step(method, model, "visual")
    assert logs["mod/beta_visual"].item() == 0.0 and logs["mod/beta_audio"].item() == 0.0
    check_pull(model, plain, "visual", 0.0)


def test_each_window_follows_its_own_trace_or_the_audio_one_as_the_reference():
    history = {"audio": [1.0] * 10 + [5.0], "visual": [1.0] * 11}   # audio still growing, visual flat
    method, _ = make()
    method.load_state_dict({"history": history})
    method.on_epoch_start(11, {})
    assert method.k["audio"] == pytest.approx((1.4 - 1.0) / 1.4) and method.k["visual"] == 0.0
    method, _ = make(window="audio")
    method.load_state_dict({"history": history})
    method.on_epoch_start(11, {})
    assert method.k["visual"] == method.k["audio"] == pytest.approx(0.4 / 1.4)


def test_a_closed_window_leaves_the_gradients_alone_and_the_epoch_end_appends_the_trace():
    method, model = make(tau=2.0)  # k <= 1 always: never open
    plain, logs, _ = step(method, model, "audio")
    check_pull(model, plain, "audio", 0.0)
    assert logs["mod/beta_audio"].item() == 0.0
    method.on_epoch_end(0, {})
    assert method.history["audio"] == [pytest.approx(logs["mod/fisher_audio"].item())]
    assert method.state_dict() == {"history": method.history}


@pytest.mark.parametrize("key, value, expected", [
    ("beta_audio", -1.0, "modulation.beta_audio=-1.0 is not allowed; expected a number >= 0"),
    ("trace_window", 0, "modulation.trace_window=0 is not allowed; expected an integer >= 1"),
])
def test_bad_values_are_one_line_errors(key, value, expected):
    cfg = OmegaConf.create({"beta_audio": 0.95, "beta_visual": 0.1, "trace_window": 10, key: value})
    with pytest.raises(ConfigError) as info:
        InfoReg.check_config(cfg)
    assert str(info.value) == expected


def test_the_bounds_of_the_ranges_are_allowed():
    InfoReg.check_config(OmegaConf.create({"beta_audio": 0.0, "beta_visual": 0.0, "trace_window": 1}))


@pytest.mark.parametrize("leader", ["audio", "visual"])
def test_the_window_opens_only_strictly_above_tau(leader):
    method, model = make(tau=1.0)  # no trace yet: k = 1.0 = tau, so the window stays closed
    plain, logs, _ = step(method, model, leader)
    assert logs["mod/k_audio"].item() == logs["mod/k_visual"].item() == 1.0
    assert logs["mod/beta_audio"].item() == logs["mod/beta_visual"].item() == 0.0
    check_pull(model, plain, leader, 0.0)
