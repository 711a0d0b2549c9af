"""The two protocols, the table families, unimodal models, evaluation of a saved checkpoint."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import avbalance.trainer as trainer_module
from avbalance.cli import Composer
from avbalance.config import validate
from avbalance.data.prepared import build, pick_frames
from avbalance.errors import ConfigError
from avbalance.trainer import train

from conftest import CONFIG_DIR, ROOT, make_cfg
from test_prepared_loader import cfg as prepared_cfg, make_dataset

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_every_dataset_and_protocol(experiment):
    assert {"main", "fusion", "ogm_ge", "alpha", "optim"} <= set(EXPERIMENTS)
    with Composer() as compose:
        for dataset in DATASETS:
            for protocol in ("fair", "paper"):
                cfg = compose([f"experiment={experiment}", f"dataset={dataset}", f"protocol={protocol}"])
                validate(cfg)
                assert cfg.protocol.name == protocol


def test_every_paper_dataset_has_its_method_values():
    with Composer() as compose:
        for dataset, alpha in (("cremad", 0.8), ("vggsound", 0.1), ("ave", 0.3), ("kinetics_sounds", 0.1)):
            assert compose([f"dataset={dataset}", "modulation=ogm_ge"]).modulation.alpha == alpha


def test_paper_protocol_is_the_references():
    with Composer() as compose:
        cfg = compose(["dataset=toy", "protocol=paper"])  # toy's own lr (0.02) gives way to the reference's
        o = cfg.optim
        assert (o.name, o.lr, o.momentum, o.weight_decay, o.step_size, o.gamma) == ("sgd", 1e-3, 0.9, 1e-4, 70, 0.1)
        adam = compose(["dataset=toy", "protocol=paper", "optim=adam"]).optim  # an explicit optimizer, same schedule
        assert (adam.name, adam.lr, adam.weight_decay, adam.step_size) == ("adam", 1e-3, 1e-4, 70)
        cfg = compose(["dataset=cremad", "protocol=paper"])
        assert (cfg.epochs, cfg.batch_size, list(cfg.dataset.train_splits), cfg.dataset.selection_split) == (
            100, 64, ["train", "val"], "test")
        frames = {d: compose([f"dataset={d}", "protocol=paper"]).dataset.frame_selection
                  for d in ("cremad", "vggsound", "kinetics_sounds", "ave")}
        assert frames == {"cremad": "reference", "vggsound": "reference", "kinetics_sounds": "segments", "ave": "segments"}
        fair = compose(["dataset=cremad"])
        assert (fair.protocol.name, list(fair.dataset.train_splits), fair.dataset.selection_split, fair.dataset.frame_selection) == (
            "fair", ["train"], "val", "even")


def test_reference_frame_indices():
    # Kinetics-Sounds and AVE: AVDataset's seg = n // 3 -> stored frames 0, 3, 6 of 10 (files 1, 4, 7)
    assert pick_frames(np.array([10, 9, 4, 2]), 3, "segments").tolist() == [[0, 3, 6], [0, 3, 6], [0, 1, 2], [0, 1, 1]]
    # CREMA-D and VGGSound: the first listed frames
    assert pick_frames(np.array([10, 2]), 3, "reference").tolist() == [[0, 1, 2], [0, 1, 1]]


def _spy_splits(monkeypatch):
    calls = []
    real = trainer_module.evaluate

    def spy(model, data, split, device, precision="fp32", **kw):
        calls.append(split)
        return real(model, data, split, device, precision, **kw)
    monkeypatch.setattr(trainer_module, "evaluate", spy)
    seen = []

    def counting(iterable, **kw):
        for batch in iterable:
            seen.append(len(batch))
            yield batch
    monkeypatch.setattr(trainer_module, "tqdm", counting)
    return calls, seen


def test_paper_protocol_trains_on_train_and_val_and_selects_on_test(tmp_path, monkeypatch):
    calls, seen = _spy_splits(monkeypatch)
    summary = train(make_cfg("protocol=paper", "epochs=2", "dataset.epochs=2"), tmp_path)
    assert sum(seen) == 2 * (128 + 64)  # n_train + n_val per epoch
    assert calls == ["test", "test"]    # val is training data now; the epoch is selected on test
    assert summary["protocol"] == "paper" and summary["selection_split"] == "test"
    assert summary["test/acc"] == summary["best"]["val/acc"]  # the reference's number: best test epoch


def test_fair_protocol_reads_test_only_at_the_end(tmp_path, monkeypatch):
    calls, seen = _spy_splits(monkeypatch)
    summary = train(make_cfg("epochs=3"), tmp_path)
    assert sum(seen) == 3 * 128
    assert calls == ["val", "val", "val", "test", "test"]  # last epoch, then the selected checkpoint
    assert summary["protocol"] == "fair" and summary["selection_split"] == "val"


def test_prepared_train_and_val_read_as_one_split(tmp_path):
    root = make_dataset(tmp_path, splits=(("train", 7), ("val", 5), ("test", 3)), skip=(2,))
    d = build(prepared_cfg(root, train_splits=["train", "val"], selection_split="test"), seed=0, batch_size=4)
    batches = list(d.eval_batches("train"))
    labels = torch.cat([b.label for b in batches]).tolist()
    # row i of a split has label i % 3; row 2 of train was skipped
    assert labels == [i % 3 for i in range(7) if i != 2] + [i % 3 for i in range(5)]
    levels = torch.cat([b.visual[:, 0, 0, 0, 0] for b in batches])
    assert len(set(levels.tolist())) > 1
    assert sum(len(b) for b in d.train_batches(0)) == 11
    with pytest.raises(ConfigError, match="train_splits names"):
        build(prepared_cfg(root, train_splits=["train", "extra"]), seed=0, batch_size=4)


@pytest.mark.parametrize("modality", ["audio", "visual"])
def test_unimodal_models_learn_toy(tmp_path, modality):
    cfg = make_cfg(f"model.modalities={modality}", "modulation=none", "epochs=4", "optim.lr=0.05", "device=cpu", tiny=False)
    summary = train(cfg, tmp_path)
    state = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)["model"]
    other = "visual" if modality == "audio" else "audio"
    assert not any(k.startswith(f"encoders.{other}") for k in state) and "head.fc.weight" in state
    assert summary["test/acc"] > 1 / 6 + 0.1  # six classes


def test_unimodal_model_with_a_balancing_method_is_one_line():
    with pytest.raises(ConfigError, match="model.modalities=audio trains one encoder; modulation=ogm_ge balances two"):
        validate(make_cfg("model.modalities=audio"))


def test_an_empty_selection_split_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="dataset 'toy': the selection split 'val' is empty"):
        train(make_cfg("dataset.n_val=0"), tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_eval_mode_evaluates_a_runs_checkpoint_with_the_runs_config(tmp_path):
    run = tmp_path / "run"
    small = ["dataset.n_train=128", "dataset.n_val=64", "dataset.n_test=64", "model.width=4"]
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), "epochs=1", "fusion=sum", *small, f"hydra.run.dir={run}"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), "mode=eval", f"ckpt={run}/ckpt/best.pt"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    result = json.loads((run / "eval_best" / "eval.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert result["test/acc"] == summary["test/acc"] and result["val/acc"] == summary["best"]["val/acc"]
    assert (run / "eval_best" / "predictions_test.csv").read_text().count("\n") == 64 + 1
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), "mode=eval", f"ckpt={run}/ckpt/best.pt", "fusion=concat"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 2 and p.stderr.strip() == (
        "error: mode=eval: fusion would change the run's saved config; only epochs, device, num_workers, eval_batch_size, speed, logger may change")
