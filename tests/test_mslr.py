"""MSLR's learning-rate rules on hand-made numbers: the accuracy-trend ratio (FIFO of 5), the
per-branch rates it sets (paper: parameter groups) and the reference's gradient scaling."""
import pytest
import torch
from omegaconf import OmegaConf

from avbalance.errors import ConfigError
from avbalance.methods.mslr import MSLR, next_ratio
from avbalance.models import build_model
from avbalance.optim import build_optimizer, build_scheduler

CPU = torch.device("cpu")


def test_ratio_is_one_until_the_history_is_full_then_acc_over_its_mean():
    accs = [0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 0.35, 0.9]
    history, rs = [], []
    for a in accs:
        r, history = next_ratio(history, a, 5)
        rs.append(r)
    assert rs[:5] == [1.0] * 5
    assert rs[5] == pytest.approx(0.8 / ((0.2 + 0.3 + 0.4 + 0.5 + 0.6) / 5))   # 2.0
    assert rs[6] == pytest.approx(0.35 / ((0.3 + 0.4 + 0.5 + 0.6 + 0.8) / 5))  # 0.673: a falling accuracy slows
    assert rs[7] == pytest.approx(0.9 / ((0.4 + 0.5 + 0.6 + 0.8 + 0.35) / 5))
    assert history == [0.5, 0.6, 0.8, 0.35, 0.9]


def test_ratio_with_a_zero_mean_is_one():
    assert next_ratio([0.0, 0.0], 0.5, 2) == (1.0, [0.0, 0.5])


def make(overrides=None, fusion="sum"):
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "tiny", "width": 4}), OmegaConf.create({"name": fusion}), 3)
    cfg = OmegaConf.create({"name": "mslr", "init_audio": 0.9, "init_visual": 1.1, "history": 2, "start_epoch": 0,
                            "end_epoch": 100, "apply": "lr", "ratio_min": 0.0, "ratio_max": float("inf"),
                            **(overrides or {})})
    method = MSLR(cfg, model, device=CPU, seed=0)
    optimizer = build_optimizer(OmegaConf.create({"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}),
                                method.param_groups(model))
    return method, model, optimizer


def lrs(optimizer):
    return {g["modality"]: g["lr"] for g in optimizer.param_groups}


def test_branches_own_their_encoder_and_their_sum_head_and_shared_weights_stay_at_the_base_rate():
    method, model, optimizer = make(fusion="sum")
    groups = {g["modality"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert groups["audio"] == {id(p) for p in [*model.encoders["audio"].parameters(), *model.head.fc_a.parameters()]}
    assert groups["visual"] == {id(p) for p in [*model.encoders["visual"].parameters(), *model.head.fc_v.parameters()]}
    assert "head" not in groups  # sum has no shared weight (the empty group is dropped by build_optimizer)
    assert [g["modality"] for g in optimizer.param_groups] == ["audio", "visual"]
    method, model, optimizer = make(fusion="concat")
    groups = {g["modality"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert groups["head"] == {id(p) for p in model.head.parameters()}
    assert optimizer.param_groups[0]["modality"] == "head"  # metrics.jsonl's lr is the first group's: the base rate
    assert groups["audio"] == {id(p) for p in model.encoders["audio"].parameters()}


def test_rates_follow_the_accuracy_trend_epoch_by_epoch():
    method, model, optimizer = make()
    ctx = {"optimizer": optimizer}
    val = [(0.5, 0.2), (0.5, 0.3), (0.75, 0.3), (0.25, 0.6)]     # (acc_audio, acc_visual) after each epoch
    want_r = [(1, 1), (1, 1), (0.75 / 0.5, 0.3 / 0.25), (0.25 / 0.625, 0.6 / 0.3)]  # history 2
    for epoch, ((aa, av), (ra, rv)) in enumerate(zip(val, [(1, 1)] + want_r[:-1])):
        method.on_epoch_start(epoch, ctx)
        assert lrs(optimizer)["audio"] == pytest.approx(0.1 * 0.9 * ra), epoch
        assert lrs(optimizer)["visual"] == pytest.approx(0.1 * 1.1 * rv), epoch
        logs = method.after_backward(model, None, None, epoch)
        assert logs["mod/lr_scale_audio"].item() == pytest.approx(0.9 * ra)
        method.on_epoch_end(epoch, {**ctx, "val": {"acc_audio": aa, "acc_visual": av}})
    assert (method.ratio["audio"], method.ratio["visual"]) == pytest.approx(want_r[-1])


def test_rates_compose_with_the_scheduler_and_outside_the_window_are_the_base_rate():
    method, model, optimizer = make({"start_epoch": 1, "end_epoch": 2})
    scheduler = build_scheduler(OmegaConf.create({"scheduler": "step", "step_size": 1, "gamma": 0.5}), optimizer)
    ctx = {"optimizer": optimizer}
    for epoch, factor in enumerate([1.0, 0.9, 0.9, 1.0]):          # audio multiplier: window 1..2, r = 1
        method.on_epoch_start(epoch, ctx)
        assert lrs(optimizer)["audio"] == pytest.approx(0.1 * 0.5 ** epoch * factor), epoch
        scheduler.step()
        method.on_epoch_end(epoch, {**ctx, "val": {"acc_audio": 0.5, "acc_visual": 0.5}})
    method, model, optimizer = make()
    scheduler = build_scheduler(OmegaConf.create({"scheduler": "none"}), optimizer)
    for epoch in range(3):  # the constant schedule keeps the method's rate (it is chainable)
        method.on_epoch_start(epoch, ctx | {"optimizer": optimizer})
        assert lrs(optimizer)["audio"] == pytest.approx(0.1 * 0.9)
        scheduler.step()


def test_reference_option_scales_the_branch_gradients_and_leaves_the_rates():
    method, model, optimizer = make({"apply": "grad"})
    method.on_epoch_start(0, {"optimizer": optimizer})
    assert lrs(optimizer)["audio"] == 0.1 and lrs(optimizer)["visual"] == 0.1
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    method.after_backward(model, None, None, 0)
    assert all(torch.all(p.grad == 0.9) for p in [*model.encoders["audio"].parameters(), *model.head.fc_a.parameters()])
    assert all(torch.allclose(p.grad, torch.tensor(1.1)) for p in model.encoders["visual"].parameters())


def test_ratio_bounds_and_state_round_trip():
    method, model, optimizer = make({"ratio_min": 0.5, "ratio_max": 2.0, "history": 1})
    method.on_epoch_end(0, {"val": {"acc_audio": 0.1, "acc_visual": 0.1}})
    method.on_epoch_end(1, {"val": {"acc_audio": 0.5, "acc_visual": 0.01}})   # r: 5 -> 2, 0.1 -> 0.5
    assert method.ratio == {"audio": 2.0, "visual": 0.5}
    other, _, _ = make({"history": 1})
    other.load_state_dict(method.state_dict())
    assert other.ratio == method.ratio and other.history == method.history and other.applied == method.applied


@pytest.mark.parametrize("key, value, expected", [
    ("init_audio", 0.0, "modulation.init_audio=0.0 is not allowed; expected a number > 0"),
    ("history", 0, "modulation.history=0 is not allowed; expected an integer >= 1"),
    ("ratio_min", 3.0, "modulation.ratio_min=3.0 is not allowed; expected 0 <= ratio_min <= modulation.ratio_max=2.0"),
])
def test_bad_values_are_one_line_errors(key, value, expected):
    cfg = OmegaConf.create({"init_audio": 0.9, "init_visual": 1.1, "history": 5, "start_epoch": 0, "end_epoch": 5,
                            "ratio_min": 0.0, "ratio_max": 2.0, key: value})
    with pytest.raises(ConfigError) as info:
        MSLR.check_config(cfg)
    assert str(info.value) == expected


@pytest.mark.parametrize("key, value", [("history", 1), ("ratio_min", 2.0)])  # ratio_min = ratio_max: r fixed
def test_boundary_values_are_allowed(key, value):
    MSLR.check_config(OmegaConf.create({"init_audio": 0.9, "init_visual": 1.1, "history": 5, "start_epoch": 0,
                                        "end_epoch": 5, "ratio_min": 0.0, "ratio_max": 2.0, key: value}))


def test_modules_a_method_added_train_at_the_base_rate_in_an_aux_group():
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "tiny", "width": 4}), OmegaConf.create({"name": "concat"}), 3)
    model.aux["extra"] = torch.nn.Linear(2, 2)  # what a plug-in may install (trainable unimodal heads)
    cfg = OmegaConf.create({"name": "mslr", "init_audio": 0.9, "init_visual": 1.1, "history": 2, "start_epoch": 0,
                            "end_epoch": 100, "apply": "lr", "ratio_min": 0.0, "ratio_max": float("inf")})
    method = MSLR(cfg, model, device=CPU, seed=0)
    optimizer = build_optimizer(OmegaConf.create({"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}),
                                method.param_groups(model))
    assert [g["modality"] for g in optimizer.param_groups] == ["head", "audio", "visual", "aux"]
    assert [id(p) for p in optimizer.param_groups[3]["params"]] == [id(p) for p in model.aux.parameters()]
    method.on_epoch_start(0, {"optimizer": optimizer})
    assert lrs(optimizer) == pytest.approx({"head": 0.1, "audio": 0.09, "visual": 0.11, "aux": 0.1})


def test_the_rate_option_leaves_the_gradients_as_they_are():
    method, model, optimizer = make({"apply": "lr"})
    method.on_epoch_start(0, {"optimizer": optimizer})
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    method.after_backward(model, None, None, 0)
    assert all(torch.all(p.grad == 1) for p in model.parameters())  # the rate already carries c_m


def test_gradient_scaling_includes_the_window_s_last_epoch():
    method, model, optimizer = make({"apply": "grad", "start_epoch": 1, "end_epoch": 3})
    for epoch, factor in ((0, 1.0), (3, 0.9), (4, 1.0)):
        method.on_epoch_start(epoch, {"optimizer": optimizer})
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        method.after_backward(model, None, None, epoch)
        assert all(torch.allclose(p.grad, torch.tensor(factor)) for p in model.encoders["audio"].parameters()), epoch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
def test_on_cuda_the_logged_scales_stay_on_the_device():
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "tiny", "width": 4}), OmegaConf.create({"name": "sum"}), 3).to(cuda)
    cfg = OmegaConf.create({"name": "mslr", "init_audio": 0.9, "init_visual": 1.1, "history": 2, "start_epoch": 0,
                            "end_epoch": 100, "apply": "grad", "ratio_min": 0.0, "ratio_max": float("inf")})
    method = MSLR(cfg, model, device=cuda, seed=0)
    optimizer = build_optimizer(OmegaConf.create({"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}),
                                method.param_groups(model))
    method.on_epoch_start(0, {"optimizer": optimizer})
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    logs = method.after_backward(model, None, None, 0)
    assert all(t.is_cuda for t in logs.values())
    assert all(torch.allclose(p.grad, torch.tensor(0.9, device=cuda)) for p in model.encoders["audio"].parameters())
