"""OGM / OGM-GE's contract, value by value: the coefficient rules, the exact GE noise (one seeded
N(0, 1) draw over the flattened gradients, one sigma = std + 1e-8 per unscaled tensor), and the
method's settings (checks, window, scope, seeding, state)."""
import math
import warnings

import pytest
import torch

from avbalance.methods.ogm import modulate_, ogm_coefficients


def oracle_ge(grads, k, seed):
    """k * g + sigma_t * z, z ~ N(0, 1) drawn once for all elements in order, from a generator seeded
    with `seed`; sigma_t = std(g_t) + 1e-8, with the std of a one-element tensor taken as 0."""
    z = torch.randn(sum(g.numel() for g in grads), generator=torch.Generator().manual_seed(seed), dtype=grads[0].dtype)
    out, start = [], 0
    for g in grads:
        n = g.numel()
        sigma = (g.std().item() if n > 1 else 0.0) + 1e-8
        out.append(k * g + sigma * z[start:start + n].view_as(g))
        start += n
    return out


def _grads(dtype):
    g = torch.Generator().manual_seed(11)
    return [torch.randn(4, 3, 3, 3, generator=g, dtype=dtype) * 2.0,
            torch.zeros(5, 2, dtype=dtype),          # a zero gradient: its noise is 1e-8 * z
            torch.tensor([3.0], dtype=dtype),        # one element: std undefined, taken as 0
            torch.randn(7, generator=g, dtype=dtype) * 0.1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ge_adds_exactly_the_seeded_noise(dtype):
    grads = _grads(dtype)
    expected = oracle_ge(grads, 0.25, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # std() of the one-element tensor
        modulate_(grads, torch.tensor(0.25), torch.Generator().manual_seed(5))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for got, want in zip(grads, expected):
        assert got.dtype == dtype
        assert torch.allclose(got, want, atol=tol, rtol=tol)
    # the zero gradient's noise has the 1e-8 floor, with the draw's sign
    z = torch.randn(4 * 27 + 10 + 1 + 7, generator=torch.Generator().manual_seed(5), dtype=dtype)[108:118]
    assert torch.allclose(grads[1].flatten(), 1e-8 * z, rtol=1e-5, atol=0)


def old_modulate_(grads, k, generator=None):
    """The owner-index GE this project had before the flat noise buffer (kept here as the oracle of
    bit-identity): one randn over all elements, sigma gathered per element by an int64 index."""
    k = k.to(grads[0].dtype)
    if generator is None:
        torch._foreach_mul_(grads, k)
        return
    sigma = torch.stack([g.std() for g in grads]).nan_to_num_(0.0) + 1e-8
    owner = torch.repeat_interleave(torch.tensor([g.numel() for g in grads])).to(grads[0].device)
    noise = torch.randn(owner.shape, generator=generator, device=grads[0].device, dtype=grads[0].dtype)
    noise = noise * sigma.to(grads[0].dtype)[owner]
    torch._foreach_mul_(grads, k)
    torch._foreach_add_(grads, [n.view_as(g) for n, g in zip(noise.split([g.numel() for g in grads]), grads)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ge_with_a_reused_noise_buffer_is_bit_identical_to_the_owner_index_form(dtype):
    a, b, c = _grads(dtype), _grads(dtype), _grads(dtype)
    buf = torch.full((200,), float("nan"), dtype=dtype)  # larger than needed, stale contents
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gen_a, gen_b, gen_c = (torch.Generator().manual_seed(2) for _ in range(3))
        for _ in range(2):  # two steps: the buffer is refilled, the generator advances alike
            old_modulate_(a, torch.tensor(0.5, dtype=dtype), gen_a)
            modulate_(b, torch.tensor(0.5, dtype=dtype), gen_b, buf)
            modulate_(c, torch.tensor(0.5, dtype=dtype), gen_c)
    assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a, b, c))
    assert torch.equal(gen_a.get_state(), gen_b.get_state())


def test_a_kept_noise_buffer_serves_two_encoders_and_a_changed_gradient_list_bit_identically():
    """The method's NoiseBuffer keeps its views across steps; the two encoders share it in turn and a
    step whose gradient list differs (a parameter without a gradient) gets views of its own shapes."""
    from avbalance.methods.ogm import NoiseBuffer
    g = torch.Generator().manual_seed(8)
    audio = [torch.randn(6, 1, 3, 3, generator=g), torch.randn(4, 6, 3, 3, generator=g)]
    visual = [torch.randn(5, 3, 3, 3, generator=g), torch.randn(7, 5, 1, 1, generator=g), torch.randn(2, 7, 3, 3, generator=g)]
    k = torch.tensor(0.75)
    plain = {"a": [x.clone() for x in audio], "v": [x.clone() for x in visual]}
    kept = {"a": [x.clone() for x in audio], "v": [x.clone() for x in visual]}
    gen_plain, gen_kept = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    buf = NoiseBuffer(torch.full((300,), float("nan")))  # the larger list: 296
    for step in range(3):
        for m in ("a", "v"):
            pick = slice(None) if step != 1 or m == "a" else slice(1, None)  # step 1: visual's first has no gradient
            old_modulate_(plain[m][pick], k, gen_plain)
            modulate_(kept[m][pick], k, gen_kept, buf)
    for m in ("a", "v"):
        assert all(torch.equal(x, y) for x, y in zip(plain[m], kept[m]))
    assert not torch.equal(kept["v"][1], visual[1] * k ** 3)  # noise was added
    assert torch.equal(gen_plain.get_state(), gen_kept.get_state())


def test_a_single_gradient_tensor():
    g = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    plain = [g.clone()]
    modulate_(plain, torch.tensor(0.5))
    assert torch.equal(plain[0], 0.5 * g)
    noisy = [g.clone()]
    modulate_(noisy, torch.tensor(0.5), torch.Generator().manual_seed(1))
    assert torch.allclose(noisy[0], oracle_ge([g], 0.5, seed=1)[0], atol=1e-12)


def test_no_gradients_is_a_no_op():
    modulate_([], torch.tensor(0.5), torch.Generator().manual_seed(0))  # nothing to scale, no error


# ----------------------------------------------------------------------------- coefficients


def test_power_rule_default_beta_is_linear():
    # rho_a = 2: k_a = 1 - alpha * (1 - 1/2)^1
    k_a, k_v = ogm_coefficients(torch.tensor(2.0), torch.tensor(1.0), 0.8, rule="power")
    assert k_a.item() == pytest.approx(1 - 0.8 * 0.5) and k_v.item() == 1.0


def test_power_rule_is_clamped_to_the_unit_interval():
    # documented: clamp(1 - alpha * (1 - 1/rho)^beta, 0, 1); a negative alpha cannot push k above 1
    k_a, _ = ogm_coefficients(torch.tensor(2.0), torch.tensor(1.0), -0.5, 1.0, "power")
    assert k_a.item() == 1.0
    _, k_v = ogm_coefficients(torch.tensor(1.0), torch.tensor(3.0), 2.0, 1.0, "power")  # 1 - 2 * 2/3 < 0
    assert k_v.item() == 0.0


@pytest.mark.parametrize("rule", ["tanh", "power"])
def test_the_weaker_modality_is_never_damped(rule):
    for s_a, s_v in ((5.0, 2.0), (2.0, 5.0)):
        k_a, k_v = ogm_coefficients(torch.tensor(s_a), torch.tensor(s_v), 0.6, 2.0, rule)
        weaker = k_v if s_a > s_v else k_a
        stronger = k_a if s_a > s_v else k_v
        rho = max(s_a, s_v) / min(s_a, s_v)
        want = 1 - math.tanh(0.6 * rho) if rule == "tanh" else 1 - 0.6 * (1 - 1 / rho) ** 2.0
        assert weaker.item() == 1.0 and stronger.item() == pytest.approx(want, abs=1e-6)


# ----------------------------------------------------------------------------- the method in a step

from omegaconf import OmegaConf  # noqa: E402

from avbalance.data.base import Batch  # noqa: E402
from avbalance.errors import ConfigError  # noqa: E402
from avbalance.methods.ogm import OGM  # noqa: E402
from avbalance.models import build_model  # noqa: E402

CPU = torch.device("cpu")
OGM_DEFAULTS = dict(name="ogm_ge", alpha=0.8, beta=1.0, ge=True, start_epoch=0, end_epoch=50, scope="conv",
                    coefficient="tanh", noise_seed_offset=7919)


def ogm_cfg(**kw):
    return OmegaConf.create({**OGM_DEFAULTS, **kw})


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_model(OmegaConf.create({"name": "tiny", "width": 4}),
                       OmegaConf.create({"name": "concat", "unimodal": "native"}), 6)


def tiny_batch(seed=0, B=12):
    g = torch.Generator().manual_seed(seed)
    # audio carries a class signal, so that the two modalities' scores differ clearly
    y = torch.arange(B) % 6
    audio = torch.randn(B, 1, 16, 12, generator=g) + y.view(B, 1, 1, 1).float()
    return Batch(audio, torch.randn(B, 3, 2, 12, 12, generator=g), y, torch.arange(B))


def one_step(method, model, batch, epoch=0, drop=()):
    model.zero_grad(set_to_none=True)
    out = model(batch.audio, batch.visual)
    loss, _ = method.loss(out, batch, epoch)
    method.backward(loss)
    for name, p in model.named_parameters():
        if name in drop:
            p.grad = None
    raw = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    logs = method.after_backward(model, out, batch, epoch)
    new = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, raw, new, logs


def expected_k(out, y, alpha, beta=1.0, rule="tanh"):
    """(k_audio, k_visual) from the step's unimodal logits, by hand."""
    rows = torch.arange(len(y))
    s_a = out.logits_audio.detach().softmax(1)[rows, y].sum().item()
    s_v = out.logits_visual.detach().softmax(1)[rows, y].sum().item()
    damp = (lambda r: 1 - math.tanh(alpha * r)) if rule == "tanh" else (lambda r: min(1.0, max(0.0, 1 - alpha * max(0.0, 1 - 1 / r) ** beta)))
    return (1.0, damp(s_v / s_a)) if s_v > s_a else (damp(s_a / s_v), 1.0)


def expected_grads(model, raw, k, generator, scope="conv", ge=True):
    """Per encoder (audio, then visual, from one generator): oracle GE on the selected tensors."""
    want = dict(raw)
    for i, m in enumerate(("audio", "visual")):
        names = [n for n, p in model.named_parameters()
                 if n.startswith(f"encoders.{m}.") and n in raw and (scope == "all" or p.dim() == 4)]
        grads = [raw[n] for n in names]
        if ge:
            z = torch.randn(sum(g.numel() for g in grads), generator=generator)
            start = 0
            for n, g in zip(names, grads):
                want[n] = k[i] * g + (g.std().item() + 1e-8) * z[start:start + g.numel()].view_as(g)
                start += g.numel()
        else:
            for n, g in zip(names, grads):
                want[n] = k[i] * g
    return want


def assert_grads(new, want):
    assert set(new) == set(want)
    for n in new:
        assert torch.allclose(new[n], want[n], atol=1e-6, rtol=1e-5), n


@pytest.mark.parametrize("seed, offset", [(0, 7919), (3, 7919), (3, 0)])
def test_ge_steps_follow_the_oracle_with_the_seeded_generator(seed, offset):
    model, batch = tiny_model(), tiny_batch()
    method = OGM(ogm_cfg(noise_seed_offset=offset), model, device=CPU, seed=seed)
    gen = torch.Generator().manual_seed(seed + offset)
    for step in range(2):  # the second step reuses the noise buffer and continues the generator
        out, raw, new, logs = one_step(method, model, batch)
        k = expected_k(out, batch.label, 0.8)
        assert min(k) < 0.9
        assert logs["mod/coeff_audio"].item() == pytest.approx(k[0], abs=1e-6)
        assert logs["mod/coeff_visual"].item() == pytest.approx(k[1], abs=1e-6)
        assert_grads(new, expected_grads(model, raw, k, gen))


@pytest.mark.parametrize("scope", ["conv", "all"])
@pytest.mark.parametrize("rule, beta", [("tanh", 1.0), ("power", 2.0), ("power", 0.5)])
def test_plain_ogm_scales_the_selected_gradients_by_the_rule(scope, rule, beta):
    model, batch = tiny_model(), tiny_batch()
    method = OGM(ogm_cfg(ge=False, scope=scope, coefficient=rule, beta=beta, alpha=0.6), model, device=CPU, seed=0)
    out, raw, new, logs = one_step(method, model, batch)
    k = expected_k(out, batch.label, 0.6, beta, rule)
    assert min(k) < 1.0
    assert_grads(new, expected_grads(model, raw, k, None, scope=scope, ge=False))
    assert (logs["mod/coeff_audio"].item(), logs["mod/coeff_visual"].item()) == pytest.approx(k, abs=1e-6)


def test_a_parameter_without_gradient_is_skipped_and_the_rest_get_their_noise():
    model, batch = tiny_model(), tiny_batch()
    first_audio_conv = next(n for n, p in model.named_parameters() if n.startswith("encoders.audio.") and p.dim() == 4)
    method = OGM(ogm_cfg(), model, device=CPU, seed=1)
    gen = torch.Generator().manual_seed(1 + 7919)
    out, raw, new, _ = one_step(method, model, batch, drop=(first_audio_conv,))
    assert first_audio_conv not in new
    assert_grads(new, expected_grads(model, raw, expected_k(out, batch.label, 0.8), gen))
    # and a full step afterwards still follows the oracle (the same buffer, the same generator)
    out, raw, new, _ = one_step(method, model, batch)
    assert_grads(new, expected_grads(model, raw, expected_k(out, batch.label, 0.8), gen))


@pytest.mark.parametrize("ge", [True, False])
def test_steps_are_bit_identical_to_the_owner_index_form_and_score_once(ge, monkeypatch):
    # the method today against the previous after_backward (scores computed again from `out`,
    # owner-index GE): coefficients and gradients equal bit for bit over steps
    import avbalance.methods.base as base
    model, batch = tiny_model(), tiny_batch()
    method = OGM(ogm_cfg(ge=ge), model, device=CPU, seed=4)
    gen = torch.Generator().manual_seed(4 + 7919)
    calls = []
    real_scores = base.modality_scores
    monkeypatch.setattr(base, "modality_scores", lambda *a: calls.append(1) or real_scores(*a))
    reduced = []
    monkeypatch.setattr(method, "reduce", lambda x: reduced.append(1) or x)
    buffers = set()
    for step in range(3):
        out, raw, new, logs = one_step(method, model, batch)
        s = real_scores(out, batch.label)
        k = ogm_coefficients(s[0], s[1], 0.8)
        assert torch.equal(logs["mod/coeff_audio"], k[0]) and torch.equal(logs["mod/coeff_visual"], k[1])
        want = dict(raw)
        for m, km in zip(("audio", "visual"), k):
            names = [n for n, p in model.named_parameters() if n.startswith(f"encoders.{m}.") and p.dim() == 4]
            grads = [want[n].clone() for n in names]
            old_modulate_(grads, km, gen if ge else None)
            want.update(zip(names, grads))
        assert all(torch.equal(new[n], want[n]) for n in new)
        assert len(calls) == len(reduced) == step + 1  # scored and reduced once per step (loss and method)
        if ge:
            buffers.add(method._noise.flat.data_ptr())
    assert len(buffers) == (1 if ge else 0)  # GE's buffer is made on the first step, then reused


@pytest.mark.parametrize("epoch, inside", [(1, False), (2, True), (3, True), (4, False)])
def test_outside_the_window_nothing_changes_and_one_is_logged(epoch, inside):
    model, batch = tiny_model(), tiny_batch()
    method = OGM(ogm_cfg(start_epoch=2, end_epoch=3), model, device=CPU, seed=0)
    out, raw, new, logs = one_step(method, model, batch, epoch)
    changed = [n for n in raw if not torch.equal(raw[n], new[n])]
    if inside:
        assert changed and all(n.startswith("encoders.") for n in changed)
    else:
        assert changed == []
        assert logs["mod/coeff_audio"].item() == 1.0 and logs["mod/coeff_visual"].item() == 1.0


def test_generator_state_round_trips_through_state_dict():
    model, batch = tiny_model(), tiny_batch()
    a = OGM(ogm_cfg(), model, device=CPU, seed=0)
    one_step(a, model, batch)
    state = a.state_dict()
    assert set(state) == {"generator"}
    b = OGM(ogm_cfg(), model, device=CPU, seed=5)  # another seed: only the loaded state can make it agree
    b.load_state_dict(state)
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
    _, _, new_a, _ = one_step(a, model, batch)
    _, _, new_b, _ = one_step(b, model, batch)
    assert all(torch.equal(new_a[n], new_b[n]) for n in new_a)


@pytest.mark.parametrize("settings, error", [
    (dict(alpha=0.0), None),
    (dict(alpha=-0.1), "modulation.alpha=-0.1 must be >= 0"),
    (dict(coefficient="power", beta=0.0), "modulation.beta=0.0 must be > 0 with modulation.coefficient=power"),
    (dict(coefficient="power", beta=-1.0), "modulation.beta"),
    (dict(coefficient="power", beta=0.5), None),
    (dict(coefficient="tanh", beta=0.0), None),   # beta is unused by tanh
    (dict(start_epoch=0, end_epoch=0), None),
    (dict(start_epoch=3, end_epoch=3), None),
    (dict(start_epoch=-1, end_epoch=3), "modulation.start_epoch=-1 must be >= 0 and <= modulation.end_epoch=3"),
    (dict(start_epoch=4, end_epoch=3), "modulation.start_epoch=4"),
])
def test_check_config(settings, error):
    cfg = ogm_cfg(**settings)
    if error is None:
        OGM.check_config(cfg)
    else:
        with pytest.raises(ConfigError) as info:
            OGM.check_config(cfg)
        assert error in str(info.value)


def test_ogm_keeps_its_settings_and_selects_parameters_once():
    model = tiny_model()
    cfg = ogm_cfg(scope="all", alpha=0.3, beta=2.0, coefficient="power", start_epoch=1, end_epoch=4, ge=False)
    method = OGM(cfg, model, device=CPU, seed=9)
    assert method.cfg is cfg and method.device == CPU and method.seed == 9
    assert (method.alpha, method.beta, method.rule, method.start, method.end, method.ge) == (0.3, 2.0, "power", 1, 4, False)
    for m in ("audio", "visual"):
        assert [id(p) for p in method.params[m]] == [id(p) for p in model.encoders[m].parameters()]
    conv = OGM(ogm_cfg(), model, device=CPU, seed=0)
    assert all(p.dim() == 4 for m in ("audio", "visual") for p in conv.params[m]) and len(conv.params["audio"]) == 2


def test_ge_noise_is_made_on_the_gradients_device_not_torchs_default_device():
    # with another default device (meta), noise made without device= would not meet the gradients
    grads, k = _grads(torch.float32), torch.tensor(0.5)
    expected = oracle_ge([g.clone() for g in grads], 0.5, seed=3)
    torch.set_default_device("meta")
    try:
        modulate_(grads, k, torch.Generator().manual_seed(3))
    finally:
        torch.set_default_device(None)
    for g, e in zip(grads, expected):
        assert g.device.type == "cpu"
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


def test_plain_ogm_never_allocates_the_ge_noise_buffer():
    model, batch = tiny_model(), tiny_batch()
    method = OGM(ogm_cfg(ge=False, alpha=0.6), model, device=CPU, seed=0)
    one_step(method, model, batch)
    assert method._noise is None  # a model-sized buffer only when GE is on


def test_a_flat_noise_buffer_given_is_the_one_drawn_into():
    """`noise` is used, not replaced by a fresh allocation: after the call it holds the noise added,
    sigma_t * z, element by element in the gradients' order."""
    grads = _grads(torch.float64)
    before = [g.clone() for g in grads]
    buf = torch.full((200,), float("nan"), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # std() of the one-element tensor
        modulate_(grads, torch.tensor(0.5, dtype=torch.float64), torch.Generator().manual_seed(3), buf)
    added = torch.cat([(g - 0.5 * b).flatten() for g, b in zip(grads, before)])
    assert torch.allclose(buf[:len(added)], added, rtol=0, atol=1e-12) and buf[len(added):].isnan().all()
