"""UMT on hand-made tensors (the feature-distillation loss and its gradient), frozen eval-mode
teachers against BalanceBenchmark's drifting ones, and the pretraining stage: two teachers
trained and saved in the run dir, reloaded (not retrained) on resume, reused from a folder."""
import copy
import json
import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from avbalance.data.base import Batch
from avbalance.errors import ConfigError
from avbalance.methods import umt as umt_module
from avbalance.methods.umt import UMT, Teacher, distillation, fresh_teacher, train_teacher
from avbalance.models import build_model
from avbalance.models.fusion import FusionOutput
from avbalance.rundir import load_checkpoint, save_checkpoint
from avbalance.trainer import train

from conftest import make_cfg

CPU = torch.device("cpu")
SHORT = ("epochs=1", "dataset.n_train=64")


def test_distillation_is_the_feature_mse_by_hand():
    z = {"audio": torch.tensor([[1.0, 2.0], [0.0, 0.0]]), "visual": torch.tensor([[3.0], [1.0]])}
    t = {"audio": torch.tensor([[0.0, 2.0], [1.0, -2.0]]), "visual": torch.tensor([[1.0], [1.0]])}
    d = distillation(z, t)
    assert d["audio"].item() == pytest.approx((1 + 0 + 1 + 4) / 4)   # mean over batch and dims
    assert d["visual"].item() == pytest.approx((4 + 0) / 2)


class Fixed(nn.Module):
    """A teacher encoder that returns given features whatever the input."""

    def __init__(self, feats):
        super().__init__()
        self.out_dim, self.feats = feats.shape[1], feats

    def forward(self, x):
        return self.feats


def umt(model=None, **overrides):
    cfg = OmegaConf.create({"name": "umt", "scaling": 10.0, "teacher_epochs": 1, "teachers": None,
                            "teacher_mode": "eval", "init_seed_offset": 6151, **overrides})
    return UMT(cfg, model, device=CPU, seed=0)


def test_the_loss_adds_scaling_times_each_encoders_mse_to_its_teacher():
    method = umt(scaling=10.0)
    t_a, t_v = torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([[1.0], [-1.0]])
    method.teachers = {"audio": Teacher(Fixed(t_a), 2), "visual": Teacher(Fixed(t_v), 2)}
    z_a = torch.tensor([[1.0, 1.0], [2.0, 2.0]], requires_grad=True)
    z_v = torch.tensor([[0.0], [0.0]], requires_grad=True)
    logits = torch.zeros(2, 2, requires_grad=True)   # CE = log 2 per sample
    out = FusionOutput(logits, logits.detach(), logits.detach(), features={"audio": z_a, "visual": z_v})
    b = Batch(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([0, 1]), torch.arange(2))
    loss, logs = method.loss(out, b, 0)
    mse_a, mse_v = (1 + 0 + 0 + 4) / 4, (1 + 1) / 2
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item() + 10 * (mse_a + mse_v))
    assert (logs["mod/distill_audio"].item(), logs["mod/distill_visual"].item()) == (mse_a, mse_v)
    assert logs["train/loss"].item() == pytest.approx(loss.item())   # the logged loss is the total, CE + distillation
    loss.backward()
    assert z_a.grad.tolist() == [[pytest.approx(10 * 2 * 1 / 4), 0.0], [0.0, pytest.approx(10 * 2 * 2 / 4)]]  # 2 lam (z - t) / (B D)
    assert z_v.grad.tolist() == [[pytest.approx(-10 * 2 * 1 / 2)], [pytest.approx(10 * 2 * 1 / 2)]]


def tiny_model():
    torch.manual_seed(0)
    return build_model(OmegaConf.create({"name": "tiny", "width": 4}), OmegaConf.create({"name": "concat"}), 3)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_teachers_are_frozen_in_eval_mode_and_balancebenchmarks_drift_in_train_mode(mode, tmp_path):
    model = tiny_model()
    method = umt(model, teacher_mode=mode)
    for m in ("audio", "visual"):  # teachers as a pretraining stage leaves them
        save_checkpoint(tmp_path / f"{m}.pt", {"model": method._fresh(m).state_dict()})
    method.load_teachers(tmp_path)
    student, teacher = model.encoders["audio"].state_dict(), method.teachers["audio"].encoder.state_dict()
    assert student.keys() == teacher.keys() and not torch.equal(student["trunk.0.weight"], teacher["trunk.0.weight"])  # afresh
    bn = next(x for x in method.teachers["audio"].modules() if isinstance(x, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    b = Batch(torch.randn(4, 1, 16, 12) * 3 + 1, torch.randn(4, 3, 1, 12, 12), torch.tensor([0, 1, 2, 0]), torch.arange(4))
    frozen = Teacher(method._fresh("audio").encoder, 3)
    frozen.load_state_dict(method.teachers["audio"].state_dict())
    loss, logs = method.loss(model(b.audio, b.visual), b, 0)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for t in method.teachers.values() for p in t.parameters())
    z = model.encode(b.audio, b.visual)["audio"].detach()
    want_eval = ((z - frozen.eval().encoder(b.audio).detach()) ** 2).mean().item()
    if mode == "eval":
        assert torch.equal(bn.running_mean, before)                       # no drift
        assert logs["mod/distill_audio"].item() == pytest.approx(want_eval, rel=1e-5)   # targets in eval mode
    else:
        assert not torch.equal(bn.running_mean, before)                   # BatchNorm statistics drift
        assert logs["mod/distill_audio"].item() != pytest.approx(want_eval, rel=1e-3)  # batch statistics


def test_pretraining_trains_two_teachers_saves_them_and_a_resume_reloads_them(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(make_cfg("modulation=umt", *SHORT), run)
    fresh = umt(tiny_model())
    for m in ("audio", "visual"):
        state = load_checkpoint(run / "teachers" / f"{m}.pt")
        assert (state["modality"], state["epoch"]) == (m, 0) and 0 <= state["acc"] <= 1
        init = fresh._fresh(m).state_dict()
        assert not torch.equal(state["model"]["fc.weight"], init["fc.weight"])        # trained
    saved = {m: (run / "teachers" / f"{m}.pt").read_bytes() for m in ("audio", "visual")}

    def no_training(*_, **__):
        raise AssertionError("a resume must not train the teachers again")
    loaded = []
    load = UMT.load_teachers
    monkeypatch.setattr(umt_module, "train_teacher", no_training)
    monkeypatch.setattr(UMT, "load_teachers", lambda self, folder: (loaded.append(folder), load(self, folder))[1])
    train(make_cfg("modulation=umt", "epochs=2", "dataset.n_train=64", "resume=true"), run)
    assert loaded == [run / "teachers"]
    assert {m: (run / "teachers" / f"{m}.pt").read_bytes() for m in ("audio", "visual")} == saved
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # another run reuses these teachers: copied into its own run dir, not trained
    train(make_cfg("modulation=umt", *SHORT, f"modulation.teachers={run / 'teachers'}"), tmp_path / "reuse")
    assert {m: (tmp_path / "reuse" / "teachers" / f"{m}.pt").read_bytes() for m in ("audio", "visual")} == saved


@pytest.mark.slow
def test_with_scaling_zero_the_student_trains_exactly_as_joint_training(tmp_path):
    rows = {}
    for name, extra in (("umt", ["modulation.scaling=0"]), ("none", [])):
        train(make_cfg(f"modulation={name}", *SHORT, *extra), tmp_path / name)
        row = json.loads((tmp_path / name / "metrics.jsonl").read_text())
        rows[name] = {k: v for k, v in row.items() if k.startswith(("val/", "train/"))}
    assert rows["umt"] == rows["none"]  # the teachers' stage leaves the student's run untouched


@pytest.mark.parametrize("key, value, expected", [
    ("scaling", -1.0, "modulation.scaling=-1.0 is not allowed; expected a number >= 0"),
    ("teacher_epochs", 0, "modulation.teacher_epochs=0 is not allowed; expected an integer >= 1"),
    ("teachers", "/nonexistent", "modulation.teachers='/nonexistent' is not allowed; expected a folder holding "
                                 "audio.pt and visual.pt (a UMT run's teachers/), audio.pt, visual.pt missing"),
])
def test_bad_values_are_one_line_errors(key, value, expected):
    cfg = OmegaConf.create({"scaling": 10.0, "teacher_epochs": 1, "teachers": None, key: value})
    with pytest.raises(ConfigError) as info:
        UMT.check_config(cfg)
    assert str(info.value) == expected


def test_teachers_that_do_not_fit_the_model_are_a_one_line_error(tmp_path):
    for m in ("audio", "visual"):
        save_checkpoint(tmp_path / f"{m}.pt", {"model": {"fc.weight": torch.zeros(2, 2)}})
    with pytest.raises(ConfigError) as info:
        umt(tiny_model()).load_teachers(tmp_path)
    assert str(info.value) == (f"UMT teacher {tmp_path / 'audio.pt'} does not fit this model (teachers of a "
                               f"different model or dataset?): RuntimeError")


def test_scaling_zero_and_below_one_are_allowed():
    for scaling in (0.0, 0.5):
        UMT.check_config(OmegaConf.create({"scaling": scaling, "teacher_epochs": 1, "teachers": None}))


def test_missing_teachers_on_resume_are_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        umt(tiny_model()).load_teachers(tmp_path)
    assert str(info.value) == (f"UMT needs its teachers: {tmp_path / 'audio.pt'} is missing (a resumed run keeps "
                               f"them in <run_dir>/teachers/; start afresh, or set modulation.teachers=<folder>)")


def test_teachers_are_initialised_from_seed_plus_offset_plus_the_modality_index():
    model = tiny_model()
    method = UMT(OmegaConf.create({"scaling": 10.0, "teacher_epochs": 1, "teachers": None, "teacher_mode": "eval",
                                   "init_seed_offset": 100}), model, device=CPU, seed=7)
    for m, seed in (("audio", 107), ("visual", 108)):
        want = fresh_teacher(model.encoders[m], 3, seed).state_dict()
        got = method._fresh(m).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), m


def test_a_fresh_teacher_leaves_the_global_rngs_alone_cuda_included(monkeypatch):
    encoder = tiny_model().encoders["audio"]
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: pytest.fail("fresh_teacher reseeded CUDA"))
    cpu = torch.get_rng_state()
    fresh_teacher(encoder, 3, seed=1)
    assert torch.equal(torch.get_rng_state(), cpu)


def test_a_fresh_teacher_resets_the_students_batchnorm_statistics():
    model = tiny_model()
    bn = next(x for x in model.encoders["audio"].modules() if isinstance(x, nn.BatchNorm2d))
    bn.running_mean.fill_(5.0), bn.running_var.fill_(3.0), bn.num_batches_tracked.fill_(7)  # a trained student's
    teacher = fresh_teacher(model.encoders["audio"], 3, seed=1)
    t_bn = next(x for x in teacher.modules() if isinstance(x, nn.BatchNorm2d))
    assert t_bn.running_mean.abs().sum() == 0 and torch.all(t_bn.running_var == 1) and t_bn.num_batches_tracked == 0
    assert torch.all(bn.running_mean == 5.0)   # the student's own untouched


class Linear2(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.out_dim = nn.Linear(2, 2), 2

    def forward(self, x):
        return self.lin(x)


class Stub:
    """Data with the loop's interface: one train batch per epoch, one held-out batch; records what it is asked."""
    selection_split = "val"

    def __init__(self):
        self.batch = Batch(torch.tensor([[1.0, -2.0], [0.5, 3.0]]), torch.zeros(2, 1), torch.tensor([0, 1]), torch.arange(2))
        self.asked = []

    def train_batches(self, epoch, device):
        self.asked.append(("train", epoch, device))
        return iter([self.batch])

    def eval_batches(self, split, device):
        self.asked.append((split, device))
        return iter([self.batch])


def test_a_teacher_trains_with_the_runs_optimizer_settings_on_the_runs_device():
    torch.manual_seed(0)
    teacher, data = Teacher(Linear2(), 2), Stub()
    ref = copy.deepcopy(teacher)
    run_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)   # the student's optimizer
    best = train_teacher(teacher, "audio", data, CPU, 1, run_opt)
    nn.functional.cross_entropy(ref(data.batch.audio), data.batch.label).backward()   # one plain SGD step by hand
    want = {k: p - 0.5 * p.grad for k, p in ref.named_parameters()}
    assert all(torch.allclose(best["model"][k], want[k]) for k in want)
    assert data.asked == [("train", 0, CPU), ("val", CPU)]
    assert (best["epoch"], best["modality"]) == (0, "audio")


def test_the_kept_teacher_is_the_first_epoch_of_best_accuracy_frozen_at_that_epoch(monkeypatch):
    accs, seen = iter([0.5, 0.5, 0.25]), []

    def scripted(teacher, modality, batches):
        seen.append(copy.deepcopy(teacher.state_dict()))
        return next(accs)
    monkeypatch.setattr(umt_module, "unimodal_accuracy", scripted)
    torch.manual_seed(0)
    teacher = Teacher(Linear2(), 2)
    best = train_teacher(teacher, "audio", Stub(), CPU, 3, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5))
    assert (best["epoch"], best["acc"]) == (0, 0.5)   # a tie keeps the earlier epoch
    assert all(torch.equal(best["model"][k], seen[0][k]) for k in seen[0])          # epoch 0's weights ...
    assert not torch.equal(best["model"]["fc.weight"], teacher.state_dict()["fc.weight"])   # ... not the last epoch's


def test_pretraining_trains_each_teacher_on_the_runs_device_logs_it_and_loads_it_there(tmp_path, monkeypatch, caplog):
    meta = torch.device("meta")   # a device other than the CPU, on any machine
    model = tiny_model()
    method = UMT(OmegaConf.create({"scaling": 10.0, "teacher_epochs": 3, "teachers": None, "teacher_mode": "eval",
                                   "init_seed_offset": 6151}), model, device=meta, seed=0)
    calls, run_opt = [], object()

    def fake_train(teacher, m, data, device, epochs, optimizer):
        calls.append((m, next(teacher.parameters()).device, device, epochs, optimizer is run_opt))
        return {"model": Teacher(copy.deepcopy(model.encoders[m]), 3).state_dict(), "epoch": 1, "acc": 0.75, "modality": m}
    monkeypatch.setattr(umt_module, "train_teacher", fake_train)
    caplog.set_level(logging.INFO, logger="avbalance")
    method.pretrain({"run_dir": tmp_path, "data": SimpleNamespace(selection_split="val"), "optimizer": run_opt})
    assert calls == [("audio", meta, meta, 3, True), ("visual", meta, meta, 3, True)]
    assert [r.getMessage() for r in caplog.records] == ["UMT teacher audio: epoch 1 of 3 kept, val acc 0.7500",
                                                        "UMT teacher visual: epoch 1 of 3 kept, val acc 0.7500"]
    assert all(p.device == meta for t in method.teachers.values() for p in t.parameters())


def test_reused_teachers_are_copied_into_a_run_dir_not_yet_made(tmp_path):
    model = tiny_model()
    source = tmp_path / "other" / "teachers"
    for m in ("audio", "visual"):
        save_checkpoint(source / f"{m}.pt", {"model": Teacher(copy.deepcopy(model.encoders[m]), 3).state_dict()})
    method = umt(model, teachers=str(source))
    run = tmp_path / "runs" / "new"
    method.pretrain({"run_dir": run, "data": None, "optimizer": None})
    assert {m: (run / "teachers" / f"{m}.pt").read_bytes() for m in ("audio", "visual")} == \
           {m: (source / f"{m}.pt").read_bytes() for m in ("audio", "visual")}
    assert set(method.teachers) == {"audio", "visual"}
