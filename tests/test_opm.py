"""OPM's math on hand-made tensors: drop probabilities, the mask and the shared rescale, the
per-step draw, the window, and what it logs (values computed here, not by the implementation)."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from avbalance.data.base import Batch
from avbalance.errors import ConfigError
from avbalance.methods.opm import OPM, drop_and_rescale, drop_probabilities
from avbalance.models import build_model

CPU = torch.device("cpu")


def q_by_hand(rho, q_base, lam):
    return min(1.0, q_base * (1 + lam * math.tanh(max(0.0, rho - 1)))) if rho > 1 else 0.0


@pytest.mark.parametrize("s_a, s_v", [(30.0, 10.0), (10.0, 12.5), (7.0, 7.0), (50.0, 1.0)])
def test_drop_probabilities_by_hand(s_a, s_v):
    q = drop_probabilities(torch.tensor(s_a), torch.tensor(s_v), q_base=0.5, lam=0.5)
    assert q.tolist() == pytest.approx([q_by_hand(s_a / s_v, 0.5, 0.5), q_by_hand(s_v / s_a, 0.5, 0.5)], abs=1e-6)


def test_only_the_dominant_modality_can_be_dropped_and_q_is_clipped():
    q = drop_probabilities(torch.tensor(3.0), torch.tensor(1.0), q_base=0.5, lam=0.5)  # rho_a = 3
    assert q[1].item() == 0.0
    assert q[0].item() == pytest.approx(0.5 * (1 + 0.5 * math.tanh(2.0)), abs=1e-6)  # 0.741
    q = drop_probabilities(torch.tensor(1.0), torch.tensor(5.0), q_base=0.9, lam=1.0)  # 0.9 * 1.9999 -> 1
    assert q.tolist() == [0.0, 1.0]


def test_mask_and_shared_rescale_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])        # Da = 2
    v = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 3.0, 3.0, 3.0]])  # Dv = 4
    q = torch.tensor([0.6, 0.0])
    u = torch.tensor([[0.7, 0.1], [0.5, 0.0], [0.6, 0.99]])        # audio kept when u >= 0.6: rows 0, 2
    out = drop_and_rescale({"audio": a, "visual": v}, q, u)
    theta = (2 * 0.6 + 4 * 0.0) / 6                                 # 0.2: dimension-weighted mean rate
    scale = 1 / (1 - theta)                                         # 1.25, applied to BOTH modalities
    assert torch.allclose(out["audio"], torch.tensor([[1.0, 2.0], [0.0, 0.0], [5.0, 6.0]]) * scale)
    assert torch.allclose(out["visual"], v * scale)


def test_no_drop_leaves_the_features_as_they_are():
    a, v = torch.randn(4, 3), torch.randn(4, 3)
    out = drop_and_rescale({"audio": a, "visual": v}, torch.zeros(2), torch.rand(4, 2))
    assert torch.equal(out["audio"], a) and torch.equal(out["visual"], v)


def make(overrides=None, fusion="concat", seed=0):
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "tiny", "width": 4}), OmegaConf.create({"name": fusion}), 3)
    cfg = OmegaConf.create({"name": "opm", "q_base": 0.5, "lam": 0.5, "p_exe": 1.0, "start_epoch": 0, "end_epoch": 5,
                            "noise_seed_offset": 4099, **(overrides or {})})
    return OPM(cfg, model, device=CPU, seed=seed), model


def feats_and_batch(model, n=200):
    """Audio features that make audio clearly dominant: its split logits put the true class first."""
    y = torch.arange(n) % 3
    da = model.head.da
    W = model.head.fc.weight.detach()
    a = 5 * torch.linalg.pinv(W[:, :da]) @ torch.nn.functional.one_hot(y, 3).float().T   # [da, n]
    feats = {"audio": a.T.contiguous(), "visual": torch.zeros(n, model.head.fc.in_features - da)}
    return feats, Batch(torch.zeros(n, 1), torch.zeros(n, 1), y, torch.arange(n))


def scores(model, feats, y):
    out = model.fuse(feats)
    pa = out.logits_audio.softmax(1)[torch.arange(len(y)), y].sum().item()
    pv = out.logits_visual.softmax(1)[torch.arange(len(y)), y].sum().item()
    return pa, pv


def test_the_method_drops_the_dominant_modality_at_the_rate_q():
    method, model = make()
    feats, batch = feats_and_batch(model)
    pa, pv = scores(model, feats, batch.label)
    q_a = q_by_hand(pa / pv, 0.5, 0.5)
    assert pa > pv and q_a > 0.5
    out = method.transform_features(feats, batch, epoch=0)
    dropped = (out["audio"].abs().sum(1) == 0).float().mean().item()
    assert dropped == pytest.approx(q_a, abs=0.1)  # 200 Bernoulli draws
    kept = out["audio"].abs().sum(1) > 0
    theta = q_a * feats["audio"].shape[1] / (feats["audio"].shape[1] + feats["visual"].shape[1])
    assert torch.allclose(out["audio"][kept], feats["audio"][kept] / (1 - theta), rtol=1e-5)
    loss, logs = method.loss(model.fuse(out), batch, 0)
    assert logs["mod/drop_audio"].item() == pytest.approx(q_a, abs=1e-5) and logs["mod/drop_visual"].item() == 0.0
    assert logs["mod/ratio"].item() == pytest.approx(pa / pv, rel=1e-4)  # the pre-drop ratio that decided
    assert method.after_backward(model, None, batch, 0) == {}


def test_p_exe_zero_and_outside_the_window_nothing_is_dropped():
    for overrides, epoch in (({"p_exe": 0.0}, 0), ({"start_epoch": 2}, 1), ({"end_epoch": 3}, 4)):
        method, model = make(overrides)
        feats, batch = feats_and_batch(model)
        out = method.transform_features(feats, batch, epoch)
        assert torch.equal(out["audio"], feats["audio"]) and torch.equal(out["visual"], feats["visual"])
        _, logs = method.loss(model.fuse(out), batch, epoch)
        assert logs["mod/drop_audio"].item() == 0.0


def test_p_exe_is_one_draw_per_step_for_the_whole_batch():
    method, model = make({"p_exe": 0.5})
    feats, batch = feats_and_batch(model)
    steps = [method.transform_features(feats, batch, 0)["audio"].abs().sum(1) == 0 for _ in range(60)]
    any_drop = [bool(d.any()) for d in steps]
    assert 15 <= sum(any_drop) <= 45  # about half of the steps drop at all ...
    assert all(d.float().mean() > 0.3 for d, on in zip(steps, any_drop) if on)  # ... and those drop q of the batch


def test_draws_are_seeded_and_resumable():
    m1, model = make({"p_exe": 0.7})
    feats, batch = feats_and_batch(model)
    m1.transform_features(feats, batch, 0)
    state = m1.state_dict()
    a = m1.transform_features(feats, batch, 0)["audio"]
    m2, _ = make({"p_exe": 0.7}, seed=5)
    m2.load_state_dict(state)
    assert torch.equal(m2.transform_features(feats, batch, 0)["audio"], a)


@pytest.mark.parametrize("key, value, expected", [
    ("q_base", 1.5, "modulation.q_base=1.5 is not allowed; expected a probability in [0, 1]"),
    ("p_exe", -0.1, "modulation.p_exe=-0.1 is not allowed; expected a probability in [0, 1]"),
    ("lam", -1.0, "modulation.lam=-1.0 is not allowed; expected a number >= 0"),
    ("start_epoch", 9, "modulation.start_epoch=9 is not allowed; expected 0 <= start_epoch <= modulation.end_epoch=5"),
])
def test_bad_values_are_one_line_errors(key, value, expected):
    cfg = OmegaConf.create({"q_base": 0.5, "lam": 0.5, "p_exe": 0.7, "start_epoch": 0, "end_epoch": 5, key: value})
    with pytest.raises(ConfigError) as info:
        OPM.check_config(cfg)
    assert str(info.value) == expected


def test_q_is_clipped_at_zero_as_well_as_at_one():
    # the documented clip(., 0, 1): a formula value below 0 (lam < 0, which the config refuses) is 0
    q = drop_probabilities(torch.tensor(3.0), torch.tensor(1.0), q_base=0.5, lam=-3.0)  # 0.5 (1 - 3 tanh 2) < 0
    assert q.tolist() == [0.0, 0.0]


def test_rescale_rate_weighs_both_modalities_by_their_dimensions():
    a, v = torch.ones(2, 2), torch.ones(2, 4)                        # Da = 2, Dv = 4
    u = torch.tensor([[0.9, 0.9], [0.9, 0.1]])                       # row 1 drops visual when q_v > 0.1
    out = drop_and_rescale({"audio": a, "visual": v}, torch.tensor([0.0, 0.5]), u)
    assert torch.allclose(out["audio"], a * 1.5)                     # theta = 4 * 0.5 / 6 = 1/3
    assert torch.allclose(out["visual"], torch.tensor([[1.5] * 4, [0.0] * 4]))
    out = drop_and_rescale({"audio": a, "visual": v}, torch.tensor([0.3, 0.6]), u)
    assert torch.allclose(out["audio"], a * 2.0)                     # theta = (2 * 0.3 + 4 * 0.6) / 6 = 0.5
    assert torch.allclose(out["visual"], torch.tensor([[2.0] * 4, [0.0] * 4]))


def test_modulated_features_keep_their_dtype():
    # bf16 features (autocast) with float32 probabilities: the output stays bf16, scaled by bf16(1.25)
    a, v = torch.full((3, 2), 2.0, dtype=torch.bfloat16), torch.full((3, 4), 3.0, dtype=torch.bfloat16)
    u = torch.tensor([[0.7, 0.5], [0.5, 0.5], [0.6, 0.5]])
    out = drop_and_rescale({"audio": a, "visual": v}, torch.tensor([0.6, 0.0]), u)  # theta 0.2: scale 1.25
    assert out["audio"].dtype == torch.bfloat16 and out["visual"].dtype == torch.bfloat16
    assert out["audio"][:, 0].tolist() == [2.5, 0.0, 2.5] and out["visual"].flatten().tolist() == [3.75] * 12


@pytest.mark.parametrize("key, value", [("q_base", 0.0), ("q_base", 1.0), ("p_exe", 0.0), ("p_exe", 1.0), ("lam", 0.0)])
def test_boundary_values_are_allowed(key, value):
    OPM.check_config(OmegaConf.create({"q_base": 0.5, "lam": 0.5, "p_exe": 0.7, "start_epoch": 0, "end_epoch": 5,
                                       key: value}))


def test_the_window_includes_its_last_epoch():
    method, model = make({"end_epoch": 3})
    feats, batch = feats_and_batch(model)
    out = method.transform_features(feats, batch, epoch=3)
    assert (out["audio"].abs().sum(1) == 0).any()


def test_draws_come_from_a_generator_seeded_with_seed_plus_offset():
    # one draw decides the step, then u [B, 2]; audio of sample i is kept when u[i, 0] >= q_a
    method, model = make(seed=3)
    feats, batch = feats_and_batch(model)
    pa, pv = scores(model, feats, batch.label)
    g = torch.Generator().manual_seed(3 + 4099)
    torch.rand((), generator=g)
    u = torch.rand(len(batch.label), 2, generator=g)
    out = method.transform_features(feats, batch, epoch=0)
    kept = out["audio"].abs().sum(1) > 0
    assert torch.equal(kept, u[:, 0] >= q_by_hand(pa / pv, 0.5, 0.5))


def test_a_step_drops_when_its_draw_is_below_p_exe():
    # P(step drops) = p_exe exactly: a draw equal to p_exe does not drop, one just above it does
    import numpy as np
    first = torch.rand((), generator=torch.Generator().manual_seed(0 + 4099)).item()
    for p_exe, drops in ((first, False), (float(np.nextafter(np.float32(first), np.float32(1))), True)):
        method, model = make({"p_exe": p_exe})
        feats, batch = feats_and_batch(model)
        out = method.transform_features(feats, batch, epoch=0)
        assert bool((out["audio"].abs().sum(1) == 0).any()) == drops, p_exe


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
def test_on_cuda_the_draws_and_the_logs_stay_on_the_device():
    # on the CPU every device argument is the CPU; here a CPU generator or a CPU log would show
    cuda = torch.device("cuda")
    _, model = make()
    feats, batch = feats_and_batch(model)
    model, feats, batch = model.to(cuda), {m: f.to(cuda) for m, f in feats.items()}, batch.to(cuda)
    cfg = OmegaConf.create({"name": "opm", "q_base": 0.5, "lam": 0.5, "p_exe": 1.0, "start_epoch": 0, "end_epoch": 0,
                            "noise_seed_offset": 4099})
    method = OPM(cfg, model, device=cuda, seed=0)
    for epoch in (0, 1):  # inside the window, then outside it
        out = method.transform_features(feats, batch, epoch)
        _, logs = method.loss(model.fuse(out), batch, epoch)
        assert out["audio"].is_cuda and all(t.is_cuda for t in logs.values()), epoch
