"""MMPareto's math on hand-made tensors (the min-norm weight, the conflict test over a whole
encoder, the per-tensor magnitude rule), its backward against a transcription of the reference's
four backward passes, BalanceBenchmark's accumulated option, and the multitask baseline."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from avbalance.data.base import Batch
from avbalance.errors import ConfigError
from avbalance.methods.mmpareto import MMPareto, combine, grads_of, min_norm_weight, pareto_weights
from avbalance.methods.multitask import Multitask
from avbalance.models import build_model

CPU = torch.device("cpu")


def grid_min_norm(x1, x2):
    """argmin over c in [0.001, 0.999] of |c x1 + (1 - c) x2|, by search on a fine grid."""
    cs = torch.linspace(0.001, 0.999, 99_801, dtype=torch.float64)
    norms = (cs[:, None] * x1[None] + (1 - cs[:, None]) * x2[None]).norm(dim=1)
    return cs[norms.argmin()].item()


@pytest.mark.parametrize("x1, x2, want", [
    ([1.0, 0.0], [-1.0, 1.0], 0.6),      # by hand: |(2c - 1, 1 - c)|^2 is least at c = 3/5
    ([1.0, 0.0], [2.0, 0.0], 0.999),     # <x1, x2> >= |x1|^2: x1 itself is the min-norm point
    ([2.0, 0.0], [1.0, 0.0], 0.001),     # <x1, x2> >= |x2|^2: x2 itself
    ([1.0, 0.0], [1.0, 1.0], 0.999),     # <x1, x2> = |x1|^2 exactly: still the clip, not c = 1
    ([1.0, 1.0], [1.0, 0.0], 0.001),     # <x1, x2> = |x2|^2 exactly: still the clip, not c = 0
    ([3.0, -1.0, 0.5], [-2.0, 0.5, 1.0], None),
    ([0.2, 0.1], [-4.0, 1.0], None),
])
def test_min_norm_weight_is_the_min_norm_point_of_the_segment(x1, x2, want):
    x1, x2 = torch.tensor(x1, dtype=torch.float64), torch.tensor(x2, dtype=torch.float64)
    c = min_norm_weight(x1 @ x1, x1 @ x2, x2 @ x2).item()
    assert c == pytest.approx(grid_min_norm(x1, x2), abs=2e-5)
    if want is not None:
        assert c == pytest.approx(want, abs=1e-9)


def test_the_conflict_test_and_the_weights_are_over_the_whole_encoder():
    # two tensors; per tensor the cosines are -1 and 0/0, over the whole encoder -1/sqrt(2)
    g_mm, g_uni = [torch.tensor([1.0]), torch.tensor([[0.0]])], [torch.tensor([-1.0]), torch.tensor([[1.0]])]
    k, cos = pareto_weights(g_mm, g_uni)
    assert cos.item() == pytest.approx(-1 / math.sqrt(2)) and k.item() == pytest.approx(0.6)  # as (1, 0), (-1, 1)
    k, cos = pareto_weights([torch.tensor([1.0]), torch.tensor([[2.0]])], [torch.tensor([-1.0]), torch.tensor([[1.0]])])
    assert cos.item() == pytest.approx(1 / math.sqrt(10)) and k.item() == 0.5  # no conflict: the average
    k, cos = pareto_weights([torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 3.0])])
    assert cos.item() == 0.0 and k.item() == pytest.approx(0.9)  # orthogonal counts as a conflict (cos > 0 averages)


def test_combine_by_hand_with_per_tensor_norms():
    g_mm = [torch.tensor([1.0, 0.0]), torch.tensor([3.0])]
    g_uni = [torch.tensor([-1.0, 1.0]), torch.tensor([1.0])]
    new = combine(g_mm, g_uni, torch.tensor(0.6), gamma=1.5)
    # tensor 0: 2 (0.6 (1, 0) + 0.4 (-1, 1)) = (0.4, 0.8), norm sqrt(0.8) < |(0, 1)| = 1: raised to norm 1
    assert new[0].tolist() == pytest.approx([1.5 * 0.4 / math.sqrt(0.8), 1.5 * 0.8 / math.sqrt(0.8)])
    # tensor 1: 2 (0.6 * 3 + 0.4 * 1) = 4.4 > |3 + 1| = 4: kept
    assert new[1].tolist() == pytest.approx([1.5 * 4.4])
    # a combination that cancels stays zero (the reference's 0/0 would make it NaN)
    assert combine([torch.tensor([1.0])], [torch.tensor([-3.0])], torch.tensor(0.75), gamma=1.5)[0].item() == 0.0
    # without conflict (k = 0.5) the new gradient is the plain sum, times gamma
    new = combine(g_mm, g_uni, torch.tensor(0.5), gamma=2.0)
    assert [g.tolist() for g in new] == [pytest.approx([0.0, 2.0]), pytest.approx([8.0])]
    # at any scale: a tiny gradient (norm under the 0/0 guard's 1e-30) is not shrunk
    tiny = combine([torch.tensor([1e-35])], [torch.tensor([1e-35])], torch.tensor(0.5), gamma=1.5)[0].item()
    assert tiny / 3e-35 == pytest.approx(1.0, rel=1e-5)


def test_grads_of_gives_zeros_for_a_parameter_the_loss_does_not_reach():
    used, unused = torch.tensor([2.0, 3.0], requires_grad=True), torch.ones(2, 2, requires_grad=True)
    loss = (used ** 2).sum()
    g_used, g_unused = grads_of(loss, [used, unused])
    assert g_used.tolist() == [4.0, 6.0] and g_unused.tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert grads_of(loss, [used])[0].tolist() == [4.0, 6.0]  # the graph is kept for the next call


def make(cls=MMPareto, fusion="concat", device=CPU, **overrides):
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "tiny", "width": 4}), OmegaConf.create({"name": fusion}), 3)
    cfg = OmegaConf.create({"name": "mmpareto", "heads": "separate", "gamma": 1.5, "grads": "separate", **overrides})
    return cls(cfg, model, device=device, seed=0), model


def batch(n=8):
    g = torch.Generator().manual_seed(1)
    return Batch(torch.randn(n, 1, 16, 12, generator=g), torch.randn(n, 3, 1, 12, 12, generator=g),
                 torch.arange(n) % 3, torch.arange(n))


def point_heads(model, sign):
    """Unimodal heads = +-(the fused head's halves): their gradients agree (+) or conflict (-) with the fused one's."""
    W, da = model.head.fc.weight.detach(), model.head.da
    with torch.no_grad():
        model.aux["unimodal"].fc["audio"].weight.copy_(sign * W[:, :da])
        model.aux["unimodal"].fc["visual"].weight.copy_(sign * W[:, da:])


def reference_step(model, b, gamma=1.5):
    """The reference's update, transcribed from MMPareto.py: three backward passes, the gradients
    cloned per parameter name, cosine and min-norm weights on the host, a fourth backward of the
    sum, then per named encoder parameter g = gamma * (2 k_mm g_mm + 2 k_uni g_uni), raised to the
    sum's norm. -> {name: grad}."""
    out = model(b.audio, b.visual)
    losses = {"both": F.cross_entropy(out.logits, b.label), "audio": F.cross_entropy(out.logits_audio, b.label),
              "visual": F.cross_entropy(out.logits_visual, b.label)}
    names = {m: [n for n, _ in model.named_parameters() if n.startswith(f"encoders.{m}.")] for m in ("audio", "visual")}
    params = dict(model.named_parameters())
    rec = {}
    for task, loss in losses.items():
        model.zero_grad()
        loss.backward(retain_graph=True)
        rec[task] = {n: params[n].grad.clone() for m in ("audio", "visual") for n in names[m] if params[n].grad is not None}
    k = {}
    for m in ("audio", "visual"):
        both = torch.cat([rec["both"][n].flatten() for n in names[m]]).double()
        uni = torch.cat([rec[m][n].flatten() for n in names[m]]).double()
        if F.cosine_similarity(both, uni, dim=0) > 0:
            k[m] = (0.5, 0.5)
        else:
            v11, v12, v22 = (both @ both).item(), (both @ uni).item(), (uni @ uni).item()
            c = 0.999 if v12 >= v11 else 0.001 if v12 >= v22 else -(v12 - v22) / (v11 + v22 - 2 * v12)
            k[m] = (c, 1 - c)
    model.zero_grad()
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for m in ("audio", "visual"):
        for n in names[m]:
            new = 2 * k[m][0] * rec["both"][n] + 2 * k[m][1] * rec[m][n]
            diff = grads[n].norm() / new.norm()
            grads[n] = (diff * new if diff > 1 else new) * gamma
    return grads, k


def method_step(method, model, b):
    model.zero_grad()
    loss, _ = method.loss(model(b.audio, b.visual), b, 0)
    method.backward(loss)
    logs = method.after_backward(model, None, b, 0)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, logs


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_backward_equals_the_reference_four_backward_passes(sign):
    method, model = make()
    point_heads(model, sign)
    twin = copy.deepcopy(model)
    b = batch()
    got, logs = method_step(method, model, b)
    want, k = reference_step(twin, b)
    for m in ("audio", "visual"):
        assert (logs[f"mod/cos_{m}"].item() > 0) == (sign > 0)     # both branches: agree (+), conflict (-)
        assert logs[f"mod/k_mm_{m}"].item() == pytest.approx(k[m][0], abs=1e-5)
        assert logs[f"mod/k_mm_{m}"].dim() == 0
    assert sign > 0 or all(0.001 < k[m][0] < 0.999 and k[m][0] != 0.5 for m in k)  # the min-norm weights acted
    assert got.keys() == want.keys()
    for n in want:
        assert torch.allclose(got[n], want[n], rtol=1e-4, atol=1e-7), n


def test_each_encoder_is_backpropagated_twice_per_step():
    """The module's cost claim: g_mm and g_uni reach an encoder once each; the heads' pass stops at the features."""
    method, model = make()
    calls = {m: 0 for m in ("audio", "visual")}
    for m in calls:
        for p in model.encoder_params(m):
            p.register_hook(lambda g, m=m: calls.__setitem__(m, calls[m] + 1))
    method_step(method, model, batch())
    n = {m: len(model.encoder_params(m)) for m in calls}
    assert calls == {"audio": 2 * n["audio"], "visual": 2 * n["visual"]}


def test_the_unimodal_heads_are_installed_on_the_methods_device():
    method, model = make(device=torch.device("meta"))
    assert {p.device.type for p in model.aux["unimodal"].parameters()} == {"meta"}


def test_accumulated_is_balancebenchmarks_two_gamma_times_the_total_gradient():
    method, model = make(grads="accumulated")
    point_heads(model, -1.0)  # a conflict the separate gradients would see
    twin = copy.deepcopy(model)
    b = batch()
    got, logs = method_step(method, model, b)
    out = twin(b.audio, b.visual)
    (F.cross_entropy(out.logits, b.label) + F.cross_entropy(out.logits_audio, b.label)
     + F.cross_entropy(out.logits_visual, b.label)).backward()
    for n, p in twin.named_parameters():
        factor = 3.0 if n.startswith("encoders.") else 1.0   # 2 x 1.5 on the encoders, the heads plain
        assert torch.allclose(got[n], factor * p.grad, rtol=1e-5, atol=1e-8), n
    assert logs["mod/cos_audio"].item() == pytest.approx(1.0) and logs["mod/k_mm_audio"].item() == 0.5


def test_multitask_is_the_plain_sum_of_three_cross_entropies():
    method, model = make(cls=Multitask)
    b = batch()
    feats = model.encode(b.audio, b.visual)
    out = model.fuse(feats)
    loss, logs = method.loss(out, b, 0)
    heads = model.aux["unimodal"].fc
    want = (F.cross_entropy(model.head.fc(torch.cat([feats["audio"], feats["visual"]], 1)), b.label)
            + F.cross_entropy(heads["audio"](feats["audio"]), b.label) + F.cross_entropy(heads["visual"](feats["visual"]), b.label))
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert method.after_backward(model, out, b, 0) == {} and set(logs) >= {"mod/ratio", "train/loss"}


def test_heads_fusion_uses_the_fusion_heads_split_logits_and_adds_no_heads():
    method, model = make(cls=Multitask, heads="fusion")
    assert "unimodal" not in model.aux
    b = batch()
    feats = model.encode(b.audio, b.visual)
    loss, _ = method.loss(model.fuse(feats), b, 0)
    W, bias, da = model.head.fc.weight, model.head.fc.bias, model.head.da
    split_a = feats["audio"] @ W[:, :da].T + bias / 2                      # paper Eq. 8's halves
    split_v = feats["visual"] @ W[:, da:].T + bias / 2
    fused = torch.cat([feats["audio"], feats["visual"]], 1) @ W.T + bias
    want = sum(F.cross_entropy(z, b.label) for z in (fused, split_a, split_v))
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_bad_gamma_is_a_one_line_error():
    with pytest.raises(ConfigError) as info:
        MMPareto.check_config(OmegaConf.create({"gamma": 0.0}))
    assert str(info.value) == "modulation.gamma=0.0 is not allowed; expected a number > 0"
    MMPareto.check_config(OmegaConf.create({"gamma": 0.5}))  # a damping gamma < 1 is allowed
