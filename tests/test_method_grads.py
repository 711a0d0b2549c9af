"""OGM changes exactly the selected gradients, only inside its window, with no host sync."""
import pytest
import torch

from avbalance.data.toy import build_toy
from avbalance.models import build_model
from avbalance.registry import METHODS


def setup(cfg):
    data = build_toy(cfg.dataset, seed=0, batch_size=cfg.batch_size, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.fusion, data.num_classes)
    method = METHODS.get(cfg.modulation.name)(cfg.modulation, model, device=torch.device("cpu"), seed=0)
    batch = next(iter(data.train_batches(0)))
    return model, method, batch


def grads_after(model, method, batch, epoch):
    model.zero_grad(set_to_none=True)
    out = model(batch.audio, batch.visual)
    loss, _ = method.loss(out, batch, epoch)
    method.backward(loss)
    raw = {n: p.grad.clone() for n, p in model.named_parameters()}
    logs = method.after_backward(model, out, batch, epoch)
    return raw, {n: p.grad.clone() for n, p in model.named_parameters()}, logs


@pytest.mark.parametrize("modulation", ["ogm", "ogm_ge"])
@pytest.mark.parametrize("scope", ["conv", "all"])
def test_exactly_selected_gradients_change(cfg_factory, modulation, scope):
    cfg = cfg_factory(f"modulation={modulation}", f"modulation.scope={scope}", "modulation.alpha=0.8")
    model, method, batch = setup(cfg)
    raw, new, logs = grads_after(model, method, batch, epoch=0)
    k = {"audio": logs["mod/coeff_audio"].item(), "visual": logs["mod/coeff_visual"].item()}
    assert min(k.values()) < 1.0  # one modality is damped on this batch
    selected = {id(p) for m in ("audio", "visual") for p in model.encoder_params(m, scope)}
    n_selected = 0
    for name, p in model.named_parameters():
        changed = not torch.equal(raw[name], new[name])
        if id(p) not in selected:
            assert not changed, f"{name} is not selected but its gradient changed"
            continue
        n_selected += 1
        modality = name.split(".")[1]  # encoders.<modality>.…  (only for the test's bookkeeping)
        if modulation == "ogm":
            assert torch.allclose(new[name], k[modality] * raw[name]), name
            assert changed == (k[modality] < 1.0)
        else:
            assert changed, f"{name} is selected: GE adds noise to both encoders"
    if scope == "conv":
        assert all(p.dim() == 4 for m in ("audio", "visual") for p in model.encoder_params(m, "conv"))
        assert n_selected == 4  # tiny encoders: two conv kernels each
    else:
        assert n_selected == sum(1 for n, _ in model.named_parameters() if n.startswith("encoders."))


@pytest.mark.parametrize("epoch, inside", [(1, False), (2, True), (4, True), (5, False)])
def test_window_is_inclusive(cfg_factory, epoch, inside):
    cfg = cfg_factory("modulation=ogm_ge", "modulation.start_epoch=2", "modulation.end_epoch=4", "modulation.alpha=0.8")
    model, method, batch = setup(cfg)
    raw, new, logs = grads_after(model, method, batch, epoch)
    changed = any(not torch.equal(raw[n], new[n]) for n in raw)
    assert changed == inside
    if not inside:  # coefficients are logged as applied: 1 outside the window
        assert logs["mod/coeff_audio"].item() == 1.0 and logs["mod/coeff_visual"].item() == 1.0


def test_none_changes_nothing(cfg_factory):
    model, method, batch = setup(cfg_factory("modulation=none"))
    raw, new, _ = grads_after(model, method, batch, 0)
    assert all(torch.equal(raw[n], new[n]) for n in raw)


class _NoSync:
    """Make any host read of a tensor fail: .item(), bool(), float(), .tolist(), .cpu()."""
    names = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy")

    def __enter__(self):
        self.saved = {n: getattr(torch.Tensor, n) for n in self.names}

        def boom(*_, **__):
            raise AssertionError("host synchronisation inside a training step")
        for n in self.names:
            setattr(torch.Tensor, n, boom)

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)


@pytest.mark.parametrize("modulation", ["none", "ogm", "ogm_ge"])
@pytest.mark.parametrize("coefficient", ["tanh", "power"])
def test_step_has_no_host_sync(cfg_factory, modulation, coefficient):
    extra = [f"modulation.coefficient={coefficient}"] if modulation != "none" else []
    model, method, batch = setup(cfg_factory(f"modulation={modulation}", *extra))
    with _NoSync():
        out = model(batch.audio, batch.visual)
        loss, logs = method.loss(out, batch, 0)
        method.backward(loss)
        logs |= method.after_backward(model, out, batch, 0)
    assert set(logs) >= {"train/loss", "mod/ratio", "mod/coeff_audio", "mod/coeff_visual"}
