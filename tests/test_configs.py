"""Every option of every config group composes; bad input fails before training, in one line."""
import subprocess
import sys

import pytest
import torch

from avbalance.cli import Composer
from avbalance.config import resolve_device, validate
from avbalance.errors import ConfigError, DataNotPreparedError
from avbalance.trainer import train

from conftest import CONFIG_DIR, ROOT, TINY, make_cfg

GROUPS = ["dataset", "model", "fusion", "modulation", "optim", "logger"]


def options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_and_validates(group):
    assert options(group), f"configs/{group} is empty"
    for option in options(group):
        cfg = make_cfg(f"{group}={option}", tiny=False)
        validate(cfg)
        assert cfg[group].name == option or group == "dataset"


def test_real_datasets_declare_shapes_and_default_to_resnet18():
    expected = {"cremad": (6, [257, 188], 1), "kinetics_sounds": (31, [257, 1004], 3),
                "vggsound": (309, [129, 626], 3), "ave": (28, [257, 1004], 3)}
    for name, (classes, shape, frames) in expected.items():
        cfg = make_cfg(f"dataset={name}", tiny=False)
        assert (cfg.dataset.num_classes, list(cfg.dataset.spec_shape), cfg.dataset.frames) == (classes, shape, frames)
        assert cfg.model.name == "resnet18" and cfg.epochs == 100
    assert make_cfg(tiny=False).model.name == "tiny"


def test_reference_defaults():
    cfg = make_cfg("dataset=cremad", tiny=False)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 1e-3, 0.9, 1e-4)
    assert (cfg.optim.step_size, cfg.optim.gamma, cfg.batch_size) == (70, 0.1, 64)
    m = cfg.modulation
    assert (m.name, m.alpha, m.start_epoch, m.end_epoch, m.scope, m.coefficient, m.ge) == ("ogm_ge", 0.8, 0, 50, "conv", "tanh", True)
    assert make_cfg("dataset=vggsound", tiny=False).modulation.alpha == 0.1


def check(*overrides):
    """What train.py does before any run directory exists: compose (schema types) and validate."""
    with Composer() as compose:
        tiny = [] if any(o.startswith("dataset=") for o in overrides) else TINY
        validate(compose(tiny + list(overrides)))


@pytest.mark.parametrize("override, expected", [
    (["modulation.alpha=-0.1"], "modulation.alpha=-0.1 must be >= 0"),
    (["modulation.start_epoch=10", "modulation.end_epoch=5"], "modulation.start_epoch=10 must be >= 0 and <= modulation.end_epoch=5"),
    (["modulation.scope=bn"], "modulation.scope='bn' is not allowed; expected one of ['conv', 'all']"),
    (["modulation.coefficient=exp"], "modulation.coefficient='exp' is not allowed; expected one of ['tanh', 'power']"),
    (["modulation.coefficient=power", "modulation.beta=0"], "modulation.beta=0.0 must be > 0"),
    (["precision=fp16"], "precision='fp16' is not allowed; expected one of ['fp32', 'bf16']"),
    (["device=tpu"], "device='tpu' is not allowed"),
    (["epochs=0"], "epochs=0 must be a positive integer"),
    (["seed=1.5"], "seed=1.5 is not allowed; expected an integer"),
    (["modulation.alpha=abc"], "modulation.alpha='abc' is not allowed; expected a number"),
    (["modulation.ge=maybe"], "modulation.ge='maybe' is not allowed; expected true or false"),
    (["fusion.unimodal=best"], "fusion.unimodal='best' is not allowed; expected one of"),
    (["optim.scheduler=cosine"], "optim.scheduler='cosine' is not allowed; expected one of ['step', 'none']"),
    (["logger=wandb", "logger.mode=cloud"], "logger.mode='cloud' is not allowed"),
    (["dataset=cremad", "dataset.frame_selection=middle"], "dataset.frame_selection='middle' is not allowed"),
    (["batch_size=many"], "batch_size='many' is not allowed; expected an integer"),
    (["modulation=ogm_gee"], "modulation='ogm_gee' is not a modulation option; expected one of ['inforeg', 'mmpareto', 'mslr', 'multitask', 'none', 'ogm', 'ogm_ge', 'opm', 'pmr', 'umt']"),
    (["modulation.alhpa=0.3"], "modulation.alhpa is not a config key"),
])
def test_bad_values_fail_with_one_line_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as e:
        check(*override)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value), str(e.value)


def test_good_values_pass_the_same_checks():
    check("seed=3", "modulation.alpha=0.5", "modulation.ge=false", "precision=bf16", "device=cpu",
          "logger=wandb", "logger.mode=disabled", "fusion=sum", "fusion.eval_half_bias=true", "optim=adam")
    cfg = make_cfg("precision=bf16", "modulation.scope=all")
    assert cfg.precision == "bf16" and str(cfg.precision) == "bf16" and cfg.modulation.scope == "all"
    assert isinstance(cfg.seed, int) and isinstance(cfg.modulation.alpha, float)


def test_cuda_without_cuda_is_rejected(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device='cuda'"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_entrypoint_errors_are_one_line_and_exit_2(tmp_path):
    for args, needle in ((["modulation=nope"], "modulation='nope'"),
                         (["modulation.alpha=-1"], "modulation.alpha"),
                         (["seed=1.5"], "seed=1.5 is not allowed; expected an integer"),
                         (["modulation.ge=maybe"], "modulation.ge='maybe' is not allowed; expected true or false"),
                         (["dataset=cremad", f"data_root={tmp_path}"], "python -m data_prep.cremad")):
        p = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={tmp_path}/run"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
        lines = [ln for ln in p.stderr.strip().splitlines() if ln]
        assert p.returncode == 2, p.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
        assert not (tmp_path / "run").exists(), "a run rejected before training left its directory"


def test_unprepared_dataset_names_the_prep_command(tmp_path):
    cfg = make_cfg("dataset=cremad", f"data_root={tmp_path}", "device=cpu", tiny=False)
    with pytest.raises(DataNotPreparedError, match="python -m data_prep.cremad"):
        train(cfg, tmp_path / "run")


def test_missing_mandatory_value_is_one_line():
    with pytest.raises(ConfigError, match=r"^dataset.root must be set"):
        validate(make_cfg("dataset=custom", "dataset.root=???", tiny=False))
