"""The method plug-in contract: a method written outside the package (one .py + one .yaml in a
folder named by $AVBALANCE_PLUGINS) composes, validates and trains; its own log keys reach
metrics.jsonl, steps.csv and the epoch line; and each hook a later method needs is called by the
loop: the training-step override, the pretraining stage, the epoch end after validation, a
held-out split, trainable unimodal heads, and the one-line refusal of an unsupported fusion."""
import json
import textwrap

import pytest
import torch

from avbalance.errors import ConfigError
from avbalance.methods.base import Method, UnimodalHeads
from avbalance.registry import METHODS, PLUGINS_ENV
from avbalance.rundir import load_checkpoint
from avbalance.trainer import train

from conftest import make_cfg

SHORT = ("epochs=2", "dataset.n_train=64")  # one step an epoch

PLUGIN = '''
from dataclasses import dataclass

import torch

from avbalance.errors import ConfigError
from avbalance.methods.base import Method, MethodConfig
from avbalance.registry import METHODS


@dataclass
class ThrowawayConfig(MethodConfig):
    weight: float = 0.5


@METHODS.register("throwaway")
class Throwaway(Method):
    """Adds weight * mean squared visual feature to the loss; logs it as its own trace."""
    Config = ThrowawayConfig
    fusions = ("concat", "sum")
    trace = ("mod/ratio", "mod/penalty")
    brief = {"pen": "mod/penalty"}

    @staticmethod
    def check_config(m):
        if m.weight < 0:
            raise ConfigError(f"modulation.weight={m.weight!r} is not allowed; expected a number >= 0")

    def loss(self, out, batch, epoch):
        loss, logs = super().loss(out, batch, epoch)
        penalty = self.cfg.weight * out.features["visual"].pow(2).mean()
        return loss + penalty, logs | {"mod/penalty": penalty.detach()}

    def after_backward(self, model, out, batch, epoch):
        return {}
'''

YAML = '''
defaults:
  - /schema/modulation/throwaway@_here_
name: throwaway
weight: 0.25
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    (folder / "modulation").mkdir(parents=True)
    (folder / "throwaway.py").write_text(PLUGIN)
    (folder / "modulation" / "throwaway.yaml").write_text(textwrap.dedent(YAML))
    monkeypatch.setenv(PLUGINS_ENV, str(folder))
    yield folder
    METHODS._entries.pop("throwaway", None)  # the package itself was never touched


def test_a_method_outside_the_package_composes_validates_and_trains(plugin_dir, tmp_path):
    from test_trainer_contract import log_lines
    assert "throwaway" in METHODS.names()
    cfg = make_cfg("modulation=throwaway", "fusion=sum", *SHORT)
    assert (cfg.modulation.name, cfg.modulation.weight) == ("throwaway", 0.25)  # from its own yaml
    with log_lines() as lines:
        summary = train(cfg, tmp_path / "run")
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "ok" and len(rows) == 2
    assert {k for k in rows[0] if k.startswith("mod/")} == {"mod/ratio_mean", "mod/penalty_mean"}
    assert rows[0]["mod/penalty_mean"] > 0
    steps = (tmp_path / "run" / "steps.csv").read_text().splitlines()
    assert steps[0] == "epoch,step,ratio,penalty" and len(steps) == 3
    assert float(steps[1].split(",")[3]) == pytest.approx(rows[0]["mod/penalty_mean"])
    assert any(f"pen {rows[1]['mod/penalty_mean']:.3f}" in ln for ln in lines if ln.startswith("epoch 1"))
    with pytest.raises(ConfigError, match=r"^modulation.weight=-1.0 is not allowed; expected a number >= 0$"):
        from avbalance.config import validate
        validate(make_cfg("modulation=throwaway", "modulation.weight=-1"))
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("modulation=throwaway", "fusion=film"))
    assert str(info.value) == "fusion=film is not supported by modulation=throwaway; expected one of ['concat', 'sum']"


@pytest.mark.slow
def test_the_command_line_finds_the_plugin(plugin_dir, tmp_path):
    import os
    import subprocess
    import sys
    from conftest import ROOT, TINY
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "train.py", "modulation=throwaway", "epochs=1", "dataset.n_train=64", *TINY,
                        f"hydra.run.dir={tmp_path / 'cli'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "cli" / "steps.csv").read_text().startswith("epoch,step,ratio,penalty\n")


def test_methods_of_the_package_are_discovered_without_import_lines():
    from pathlib import Path
    import avbalance.methods as pkg
    init = (Path(pkg.__file__)).read_text()
    assert all(name not in init for name in ("ogm", "opm", "mslr", "pmr", "mmpareto", "multitask", "inforeg", "umt"))
    assert {"none", "ogm", "ogm_ge", "opm", "mslr", "pmr", "mmpareto", "multitask", "inforeg", "umt"} <= set(METHODS.names())


@pytest.fixture
def method_as_none(monkeypatch):
    """Registers a test's Method subclass under the name `none` for one test."""
    METHODS.names()

    def install(cls):
        monkeypatch.setitem(METHODS._entries, "none", cls)
    return install


def test_a_train_step_override_is_called_by_the_loop_for_every_batch(tmp_path, method_as_none):
    calls, losses = [], []

    class TwoSteps(Method):
        def train_step(self, step, batch, epoch, ctx):
            calls.append((epoch, len(batch), set(ctx)))
            first, _ = step(batch, epoch)       # e.g. one update per modality (MLA): the standard step twice
            second, logs = step(batch, epoch)
            losses.append((first.item(), second.item()))
            return second, logs
    method_as_none(TwoSteps)
    rows = []
    train(make_cfg("modulation=none", *SHORT, "optim.lr=0.05"), tmp_path, callbacks=[lambda e, r: rows.append(r)])
    assert calls == [(0, 64, {"model", "data", "optimizer", "run_dir"}), (1, 64, {"model", "data", "optimizer", "run_dir"})]
    assert all(second < first for first, second in losses)  # the first step updated the model
    assert [r["train/loss"] for r in rows] == pytest.approx([second for _, second in losses])  # what it returned is logged


def test_the_pretraining_stage_runs_once_before_epoch_0_and_not_on_resume(tmp_path, method_as_none):
    calls = []

    class Pretrained(Method):
        def pretrain(self, ctx):
            calls.append(("pretrain", set(ctx), ctx["run_dir"]))
            with torch.no_grad():
                ctx["model"].head.fc.bias.fill_(3.0)   # a warm start the training then continues from

        def on_epoch_start(self, epoch, ctx):
            calls.append(("start", epoch, ctx["model"].head.fc.bias.detach().clone()))
    method_as_none(Pretrained)
    train(make_cfg("modulation=none", *SHORT), tmp_path)
    assert calls[0] == ("pretrain", {"model", "data", "optimizer", "run_dir"}, tmp_path)
    assert calls[1][:2] == ("start", 0) and torch.all(calls[1][2] == 3.0)
    assert [c[0] for c in calls] == ["pretrain", "start", "start"]
    calls.clear()
    train(make_cfg("modulation=none", "epochs=3", "dataset.n_train=64", "resume=true"), tmp_path)
    assert [c[:2] for c in calls] == [("start", 2)]


def test_the_epoch_end_runs_after_validation_and_sees_its_metrics(tmp_path, method_as_none):
    seen = []

    class Watcher(Method):
        def on_epoch_end(self, epoch, ctx):
            seen.append((epoch, dict(ctx["val"])))
    method_as_none(Watcher)
    train(make_cfg("modulation=none", *SHORT), tmp_path)
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(e, {f"val/{k}": v for k, v in val.items()}) for e, val in seen] == \
           [(r["epoch"], {k: v for k, v in r.items() if k.startswith("val/")}) for r in rows]


def test_a_held_out_split_is_never_trained_on_and_is_there_for_the_method(tmp_path, method_as_none):
    from avbalance.data.base import HeldOut
    trained, held = [], []

    class HoldsOut(Method):
        def prepare_data(self, data):
            return HeldOut(data, 0.25, self.seed)

        def loss(self, out, batch, epoch):
            trained.extend(batch.index.tolist())
            return super().loss(out, batch, epoch)

        def on_epoch_end(self, epoch, ctx):
            held.append(sorted(i for b in ctx["data"].eval_batches("heldout") for i in b.index.tolist()))
    method_as_none(HoldsOut)
    train(make_cfg("modulation=none", "epochs=2", "dataset.n_train=128"), tmp_path)
    assert len(held[0]) == 32 and held[0] == held[1]             # a quarter, the same every epoch (seeded)
    assert sorted(trained) == sorted(2 * sorted(set(range(128)) - set(held[0])))  # the other rows, each epoch


def test_trainable_unimodal_heads_give_the_unimodal_logits_and_are_saved(tmp_path, method_as_none):
    class Multitask(Method):
        def __init__(self, cfg, model, *, device, seed):
            super().__init__(cfg, model, device=device, seed=seed)
            dims = {m: model.encoders[m].out_dim for m in ("audio", "visual")}
            model.aux["unimodal"] = UnimodalHeads(dims, model.head.fc.out_features).to(device)
    method_as_none(Multitask)
    train(make_cfg("modulation=none", *SHORT, "optim.lr=0.05"), tmp_path)
    best = load_checkpoint(tmp_path / "ckpt" / "best.pt")["model"]
    assert "aux.unimodal.fc.audio.weight" in best
    from avbalance.models import build_model
    cfg = make_cfg("modulation=none", *SHORT)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.fusion, 6)
    Multitask(cfg.modulation, model, device=torch.device("cpu"), seed=0)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(init["aux.unimodal.fc.audio.weight"], best["aux.unimodal.fc.audio.weight"])  # trained
    model.load_state_dict(best)
    a, v = torch.randn(3, 1, 16, 12), torch.randn(3, 3, 2, 12, 12)
    out = model(a, v)
    feats = model.encode(a, v)
    assert torch.allclose(out.logits_audio, model.aux["unimodal"].fc["audio"](feats["audio"]))
    assert out.probe is True


def test_the_feature_transform_sees_the_encoders_features_the_batch_and_the_epoch(tmp_path, method_as_none):
    seen = []

    class Recording(Method):
        def transform_features(self, feats, batch, epoch):
            seen.append((sorted(feats), feats["audio"].shape[0], len(batch), batch.label.dtype, epoch))
            return {m: f * 0 for m, f in feats.items()}  # what it returns is what the head sees

        def loss(self, out, batch, epoch):
            assert all(f.abs().sum() == 0 for f in out.features.values())
            return super().loss(out, batch, epoch)
    method_as_none(Recording)
    train(make_cfg("modulation=none", *SHORT), tmp_path)
    assert seen == [(["audio", "visual"], 64, 64, torch.int64, 0), (["audio", "visual"], 64, 64, torch.int64, 1)]
