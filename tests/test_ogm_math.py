"""OGM / OGM-GE math against an oracle that follows the reference code's per-sample loop."""
import math

import pytest
import torch
import torch.nn as nn

from avbalance.methods.base import modality_scores
from avbalance.methods.ogm import modulate_, ogm_coefficients
from avbalance.models.fusion import FusionOutput


def reference_scores_and_coeffs(out_a, out_v, label, alpha):
    """The reference main.py, transcribed: per-sample list comprehension, then Eq. 10 with if/else."""
    softmax = nn.Softmax(dim=1)
    score_v = sum([softmax(out_v)[i][label[i]] for i in range(out_v.size(0))])
    score_a = sum([softmax(out_a)[i][label[i]] for i in range(out_a.size(0))])
    ratio_v = score_v / score_a
    ratio_a = 1 / ratio_v
    if ratio_v > 1:
        coeff_v, coeff_a = 1 - torch.tanh(alpha * torch.relu(ratio_v)), 1
    else:
        coeff_a, coeff_v = 1 - torch.tanh(alpha * torch.relu(ratio_a)), 1
    return score_a, score_v, float(coeff_a), float(coeff_v)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alpha", [0.1, 0.8, 2.6])
def test_scores_and_coefficients_match_reference_loop(seed, alpha):
    g = torch.Generator().manual_seed(seed)
    B, C = 17, 6
    out_a, out_v = torch.randn(B, C, generator=g) * 3, torch.randn(B, C, generator=g) * 3
    y = torch.randint(0, C, (B,), generator=g)
    ref_sa, ref_sv, ref_ka, ref_kv = reference_scores_and_coeffs(out_a, out_v, y, alpha)
    s = modality_scores(FusionOutput(out_a + out_v, out_a, out_v), y)
    assert torch.allclose(s, torch.stack([ref_sa, ref_sv]), atol=1e-5)
    k_a, k_v = ogm_coefficients(s[0], s[1], alpha)
    assert k_a.item() == pytest.approx(ref_ka, abs=1e-6) and k_v.item() == pytest.approx(ref_kv, abs=1e-6)


@pytest.mark.parametrize("s_a, s_v, alpha, k_a, k_v", [
    (2.0, 1.0, 0.8, 1 - math.tanh(0.8 * 2.0), 1.0),      # audio dominant: audio damped
    (1.0, 4.0, 0.3, 1.0, 1 - math.tanh(0.3 * 4.0)),      # visual dominant: visual damped
    (3.0, 3.0, 0.8, 1 - math.tanh(0.8), 1.0),            # tie: the reference's else-branch damps audio
    (1.0, 1.0 + 1e-6, 0.8, 1.0, 1 - math.tanh(0.8 * (1 + 1e-6))),  # just above 1: the jump to 1 - tanh(alpha)
    (5.0, 1.0, 0.0, 1.0, 1.0),                           # alpha 0: no modulation
])
def test_tanh_coefficient_table(s_a, s_v, alpha, k_a, k_v):
    ka, kv = ogm_coefficients(torch.tensor(s_a), torch.tensor(s_v), alpha)
    assert ka.item() == pytest.approx(k_a, abs=1e-6) and kv.item() == pytest.approx(k_v, abs=1e-6)


def test_power_coefficient_is_continuous_and_one_at_balance():
    one = torch.tensor(1.0)
    assert [k.item() for k in ogm_coefficients(one, one, 0.8, 1.0, "power")] == [1.0, 1.0]
    # rho_a = 2: k_a = 1 - alpha * (1 - 1/2)^beta
    k_a, k_v = ogm_coefficients(torch.tensor(2.0), one, 0.8, 2.0, "power")
    assert k_a.item() == pytest.approx(1 - 0.8 * 0.25) and k_v.item() == 1.0
    # continuity around rho = 1 and clamping at 0 for a huge ratio
    k_a, _ = ogm_coefficients(torch.tensor(1.0 + 1e-4), one, 0.8, 1.0, "power")
    assert k_a.item() == pytest.approx(1.0, abs=1e-3)
    k_a, _ = ogm_coefficients(torch.tensor(1e6), one, 3.0, 1.0, "power")
    assert k_a.item() == 0.0


def test_unknown_coefficient_rule_is_rejected():
    with pytest.raises(Exception, match="coefficient"):
        ogm_coefficients(torch.tensor(1.0), torch.tensor(2.0), 0.5, rule="exp")


def test_modulate_scales_without_noise():
    g = [torch.randn(4, 3, 3, 3), torch.randn(8, 4, 1, 1)]
    before = [t.clone() for t in g]
    modulate_(g, torch.tensor(0.25))
    for a, b in zip(g, before):
        assert torch.allclose(a, 0.25 * b)


def test_ge_noise_is_reproducible_and_scaled_by_unscaled_std():
    torch.manual_seed(0)
    g = [torch.randn(64, 32, 3, 3) * 5.0, torch.randn(128, 64, 3, 3) * 0.01]
    outs = []
    for _ in range(2):
        grads = [t.clone() for t in g]
        modulate_(grads, torch.tensor(0.5), torch.Generator().manual_seed(3))
        outs.append(grads)
    for a, b in zip(*outs):
        assert torch.equal(a, b)  # same generator state -> identical noise
    for orig, new in zip(g, outs[0]):
        noise = new - 0.5 * orig
        # the noise std is the std of the UNSCALED gradient (not of 0.5 * g)
        assert noise.std().item() == pytest.approx(orig.std().item(), rel=0.05)
        assert abs(noise.mean().item()) < 0.05 * orig.std().item()
    other = [t.clone() for t in g]
    modulate_(other, torch.tensor(0.5), torch.Generator().manual_seed(4))
    assert not torch.equal(other[0], outs[0][0])  # a different seed gives different noise
