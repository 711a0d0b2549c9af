"""speed.*: the GPU settings apply on a CUDA device and nowhere else (a CPU run is the same program
with or without them). The CUDA branch is checked here with a device *name*: no GPU is needed to
see that the model is made channels_last, cudnn.benchmark is set and the optimizer is fused;
tests/test_cuda.py trains with them on a GPU."""
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from avbalance import speed
from avbalance.models import build_model
from avbalance.optim import build_optimizer, load_optimizer_state

from conftest import make_cfg

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _model():
    torch.manual_seed(0)
    return build_model(OmegaConf.create({"name": "tiny", "width": 4}), OmegaConf.create({"name": "concat"}), 3)


def _convs(model):
    return [p for p in model.parameters() if p.dim() == 4]


def _cfg(**kw):
    return SimpleNamespace(**({"channels_last": True, "cudnn_benchmark": True, "fused_optimizer": True, "compile": False,
                                "compile_mode": "default"} | kw))


def test_defaults_are_on_except_compile():
    assert OmegaConf.to_container(make_cfg().speed) == {"channels_last": True, "cudnn_benchmark": True,
                                                        "fused_optimizer": True, "compile": False, "compile_mode": "default",
                                                        "cuda_graph": False, "async_checkpoint": True, "preload": "auto"}


def test_on_cuda_the_convolutions_go_channels_last_and_the_values_stay():
    model = _model()
    before = [p.detach().clone() for p in _convs(model)]
    params = list(model.parameters())
    out = speed.prepare_model(model, _cfg(), CUDA)
    assert out is model and list(model.parameters()) == params  # the same Parameter objects: methods keep theirs
    convs = _convs(model)
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert any(not p.is_contiguous() for p in convs)  # (a 1-channel kernel is both)
    assert all(torch.equal(a, b) for a, b in zip(before, convs))


@pytest.mark.parametrize("device, cl", [(CPU, True), (CUDA, False)])
def test_channels_last_only_on_cuda_and_only_when_asked(device, cl):
    model = speed.prepare_model(_model(), _cfg(channels_last=cl), device)
    assert all(p.is_contiguous() for p in _convs(model))


def test_cudnn_benchmark_is_set_on_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    speed.configure(_cfg(), CPU)
    assert torch.backends.cudnn.benchmark is False
    speed.configure(_cfg(), CUDA)
    assert torch.backends.cudnn.benchmark is True
    speed.configure(_cfg(cudnn_benchmark=False), CUDA)
    assert torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_optimizer_on_cuda_only(name):
    assert speed.fused_optimizer(_cfg(), CUDA) is True
    assert speed.fused_optimizer(_cfg(), CPU) is False
    assert speed.fused_optimizer(_cfg(fused_optimizer=False), CUDA) is False
    cfg = OmegaConf.create({"name": name, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "betas": [0.9, 0.99]})
    params = [{"params": list(_model().parameters())}]
    assert build_optimizer(cfg, params, fused=True).defaults["fused"] is True
    assert not build_optimizer(cfg, params).defaults.get("fused")
    # speed.cuda_graph: Adam's step count on the device (capturable); SGD has none to keep
    assert build_optimizer(cfg, params, capturable=True).defaults.get("capturable", False) is (name != "sgd")
    assert not build_optimizer(cfg, params).defaults.get("capturable", False)


@pytest.mark.parametrize("saved_kw, run_kw", [({}, {"capturable": True}), ({"capturable": True}, {}),
                                              ({"fused": True}, {}), ({}, {"fused": True})])
def test_a_resumed_optimizer_keeps_this_runs_kernel_flags_and_the_saved_state(saved_kw, run_kw):
    """torch's load_state_dict takes capturable/fused from the saved groups: a run resumed with
    speed.cuda_graph would get capturable=False and fail at its capture."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    saving = torch.optim.Adam([p], lr=0.1, **saved_kw)
    if saved_kw.get("capturable"):  # a CUDA run's state: the step count a float32 tensor (capturable)
        saving.state[p] = {"step": torch.tensor(4.0), "exp_avg": torch.full((3,), 0.5), "exp_avg_sq": torch.full((3,), 0.25)}
    else:
        p.grad = torch.tensor([0.5, 0.5, -1.0])
        for _ in range(4):
            saving.step()
    saved = saving.state_dict()
    saved["param_groups"][0]["lr"] = 0.03  # a saved option that is not a kernel flag: it is restored
    saved["state"][0]["step"] = saved["state"][0]["step"].double()  # so that a cast to float32 shows
    resumed = torch.optim.Adam([p], lr=0.1, **run_kw)
    load_optimizer_state(resumed, saved)
    g = resumed.param_groups[0]
    assert g["capturable"] is run_kw.get("capturable", False) and g["fused"] is run_kw.get("fused", None)
    assert g["lr"] == 0.03 and float(resumed.state[p]["step"]) == 4.0
    assert torch.equal(resumed.state[p]["exp_avg"], saving.state[p]["exp_avg"])
    # torch's own policy for the count, applied with this run's flags: made float32 when capturable or fused
    assert resumed.state[p]["step"].dtype == (torch.float32 if run_kw else torch.float64)


def test_a_resumed_optimizer_with_other_groups_is_still_refused_by_torch():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    saved = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="different number of parameter groups"):
        load_optimizer_state(torch.optim.SGD([a], lr=0.1), saved)


def test_compile_wraps_each_encoder_and_nothing_else(monkeypatch):
    modes, real = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: modes.append(kw.get("mode")) or real(fn, **kw))
    model = speed.prepare_model(_model(), _cfg(compile=True, compile_mode="reduce-overhead"), CPU)
    assert modes == ["reduce-overhead"] * len(model.encoders)
    assert all(enc._compiled_call_impl is not None for enc in model.encoders.values())
    assert model._compiled_call_impl is None and model.head._compiled_call_impl is None
    plain = speed.prepare_model(_model(), _cfg(), CPU)
    assert all(enc._compiled_call_impl is None for enc in plain.encoders.values())
