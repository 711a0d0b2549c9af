"""data_prep/avdigits.py: FSDD spoken digits paired with MNIST images, through the prepared loader."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from avbalance.data.prepared import build
from data_prep import avdigits
from data_prep.store import UserError

REPO = Path(__file__).resolve().parents[1]
FSDD, MNIST = REPO / "../shared/data/fsdd", REPO / "../shared/data/mnist"
needs_data = pytest.mark.skipif(not (FSDD / "recordings").is_dir() or not MNIST.is_dir(),
                                reason="FSDD/MNIST not found at ../shared/data (relative to the repository root)")


def run(out, *extra):
    return avdigits.main(["--fsdd", str(FSDD), "--mnist", str(MNIST), "--out", str(out), *extra])


def load(out, split, name):
    return np.load(out / split / f"{name}.npy", mmap_mode="r", allow_pickle=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    if not (FSDD / "recordings").is_dir():
        pytest.skip("FSDD not found at ../shared/data/fsdd (relative to the repository root)")
    out = tmp_path_factory.mktemp("avdigits")
    assert run(out, "--limit", "30") == 0
    return out


def test_features_without_data():
    assert avdigits.fit_window(np.ones(100, np.float32)).shape == (avdigits.N_SAMPLES,)
    long = np.arange(20000, dtype=np.float32)
    assert avdigits.fit_window(long)[0] == (20000 - avdigits.N_SAMPLES) // 2  # centre crop
    assert avdigits.log_mel(np.zeros(avdigits.N_SAMPLES, np.float32)).shape == (64, 64)


def test_missing_inputs_are_user_errors(tmp_path, capsys):
    assert avdigits.main(["--fsdd", str(tmp_path / "none"), "--mnist", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: FSDD folder") and err.count("\n") == 1
    with pytest.raises(UserError, match="MNIST"):
        avdigits.load_mnist(tmp_path)


@needs_data
def test_layout_shapes_and_splits(small):
    m = json.loads((small / "manifest.json").read_text())
    assert m["class_names"] == [str(d) for d in range(10)] and set(m["splits"]) == {"train", "val", "test"}
    assert str(Path(__file__).resolve().parents[2]) not in json.dumps(m)  # no absolute paths of this machine
    images = {}
    for split, rec in avdigits.SPLITS.items():
        assert load(small, split, "audio").shape == (30, 64, 64)
        assert load(small, split, "frames").shape == (30, 1, 32, 32, 3)
        ids, labels = load(small, split, "ids"), load(small, split, "labels")
        for cid, y in zip(ids, labels):
            digit, _, idx = cid.split("+")[0].split("_")
            assert int(digit) == y and int(idx) in rec  # FSDD index convention: 0-4 test, 5-9 val
        images[split] = {cid.split("+mnist")[1] for cid in ids}
        assert len(images[split]) == 30  # no image used twice
    assert not (images["train"] & images["val"]) and not (images["train"] & images["test"]) and not (images["val"] & images["test"])


@needs_data
def test_deterministic(small, tmp_path):
    assert run(tmp_path, "--limit", "30") == 0
    a, b = json.loads((small / "manifest.json").read_text()), json.loads((tmp_path / "manifest.json").read_text())
    assert a["splits"]["test"]["sha256"] == b["splits"]["test"]["sha256"]


@needs_data
def test_already_prepared_needs_force(small, capsys):
    assert run(small, "--limit", "30") == 2
    assert "--force" in capsys.readouterr().err


@needs_data
def test_degradation_options(tmp_path):
    assert run(tmp_path / "clean", "--limit", "10", "--audio-noise-frac", "0", "--visual-noise", "0", "--visual-blur", "0",
               "--visual-occlude", "0", "--visual-noise-frac", "0") == 0
    assert run(tmp_path / "gone", "--limit", "10", "--audio-noise-frac", "1", "--visual-noise-frac", "1") == 0
    clean = load(tmp_path / "clean", "test", "frames")[:, 0, :, :, 0].astype(float)
    gone = load(tmp_path / "gone", "test", "frames")[:, 0, :, :, 0].astype(float)
    assert clean[:, :2].max() == 0 and clean.max() == 255   # padded black border, a white stroke
    assert 100 < gone.mean() < 155                          # uniform noise
    ac, ag = load(tmp_path / "clean", "test", "audio").astype(float), load(tmp_path / "gone", "test", "audio").astype(float)
    assert ac.std(axis=2).mean() > ag.std(axis=2).mean()    # white noise: flat over time


@needs_data
def test_loads_with_its_config(small):
    cfg = OmegaConf.load(REPO / "configs/dataset/avdigits.yaml")
    cfg.pop("defaults", None)
    cfg.root = str(small)
    d = build(cfg, seed=0, batch_size=16)
    assert d.num_classes == 10 and d.split_names == ["train", "val", "test"] and d.selection_split == "val"
    b = next(iter(d.train_batches(0)))
    assert b.audio.shape == (16, 1, 64, 64) and b.visual.shape == (16, 3, 1, 28, 28)
    e = next(iter(d.eval_batches("test")))
    assert torch.isfinite(e.audio).all() and e.visual.shape == (16, 3, 1, 28, 28)


@pytest.mark.slow
@needs_data
def test_full_preparation(tmp_path):
    assert run(tmp_path) == 0
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert {s: v["written"] for s, v in m["splits"].items()} == {"train": 2400, "val": 300, "test": 300}
    assert m["splits"]["train"]["counts"] == {str(d): 240 for d in range(10)}
