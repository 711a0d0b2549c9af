"""data_prep/avdigits.py: FSDD spoken digits paired with MNIST images, through the prepared loader."""
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
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
def test_identical_rerun_succeeds(small):
    before = json.loads((small / "manifest.json").read_text())
    assert run(small, "--limit", "30") == 0
    assert json.loads((small / "manifest.json").read_text())["splits"] == before["splits"]


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


# ----------------------------------------------------------------------------- sources: download path, no ../shared

def fake_release(root: Path) -> tuple[str, str, dict]:
    """A tiny FSDD archive (10 digits x recording index 0, 5, 10: every split) and MNIST idx.gz files
    (10 images per digit), as file:// URLs. Returns (fsdd url, its listing sha256, mnist sha256s)."""
    top = f"free-spoken-digit-dataset-{avdigits.FSDD_COMMIT}"
    with tarfile.open(root / "fsdd.tar.gz", "w:gz") as tar:
        lines = []
        for d in range(10):
            for idx in (0, 5, 10):
                buf = io.BytesIO()
                t = np.arange(2400) / 8000
                sf.write(buf, (0.3 * np.sin(2 * np.pi * (200 + 50 * d + idx) * t)).astype(np.float32), 8000,
                         format="WAV", subtype="PCM_16")
                data, name = buf.getvalue(), f"{d}_george_{idx}.wav"
                info = tarfile.TarInfo(f"{top}/recordings/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
        readme = tarfile.TarInfo(f"{top}/README.md")
        readme.size = 2
        tar.addfile(readme, io.BytesIO(b"hi"))
    listing = hashlib.sha256("".join(sorted(lines, key=lambda x: x.split("  ")[1])).encode()).hexdigest()
    labels = np.repeat(np.arange(10, dtype=np.uint8), 10)
    images = np.random.default_rng(0).integers(0, 256, (100, 28, 28), dtype=np.uint8)
    header = lambda magic, *dims: b"".join(n.to_bytes(4, "big") for n in (magic, *dims))  # noqa: E731
    idx = {"t10k-images-idx3-ubyte.gz": header(2051, 100, 28, 28) + images.tobytes(),
           "t10k-labels-idx1-ubyte.gz": header(2049, 100) + labels.tobytes()}
    (root / "mnist").mkdir()
    sums = {}
    for name, data in idx.items():
        (root / "mnist" / name).write_bytes(gzip.compress(data))
        sums[name] = hashlib.sha256((root / "mnist" / name).read_bytes()).hexdigest()
    return (root / "fsdd.tar.gz").as_uri(), listing, sums


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.name.endswith((".part", ".tmp", ".tar.gz")))


def test_download_checks_and_keeps_only_verified_files(tmp_path):
    url, listing, sums = fake_release(tmp_path)
    cache = tmp_path / "cache"
    fsdd = avdigits.download_fsdd(cache, url=url, digest=listing)
    assert fsdd == cache / "fsdd" and len(list((fsdd / "recordings").glob("*.wav"))) == 30
    assert not (fsdd / "README.md").exists() and leftovers(cache) == []
    mnist = avdigits.download_mnist(cache, url=(tmp_path / "mnist").as_uri() + "/", sha256=sums)
    images, labels = avdigits.load_mnist(mnist)
    assert images.shape == (100, 28, 28) and np.bincount(labels).tolist() == [10] * 10
    assert avdigits.download_fsdd(cache, url="file:///nowhere", digest="x") == fsdd   # already there: no download


def test_download_checksum_mismatch_is_one_line_and_keeps_nothing(tmp_path):
    url, _, sums = fake_release(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"listing sha256 [0-9a-f]{64}; expected 0{64}") as e:
        avdigits.download_fsdd(cache, url=url, digest="0" * 64)
    assert "\n" not in str(e.value) and not (cache / "fsdd").exists() and leftovers(cache) == []
    bad = {name: "f" * 64 for name in sums}
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte.gz has sha256 [0-9a-f]{64}; expected f{64}"):
        avdigits.download_mnist(cache, url=(tmp_path / "mnist").as_uri() + "/", sha256=bad)
    assert not (cache / "mnist" / "t10k-images-idx3-ubyte.gz").exists() and leftovers(cache) == []
    with pytest.raises(UserError, match=r"cannot download file:///nowhere/t10k"):
        avdigits.download_mnist(cache, url="file:///nowhere/", sha256=sums)


@pytest.fixture
def no_shared(tmp_path, monkeypatch):
    """avdigits as in a clone without ../shared: the sources come from (file://) downloads."""
    url, listing, sums = fake_release(tmp_path)
    monkeypatch.setattr(avdigits, "SHARED", tmp_path / "no_shared")
    monkeypatch.setattr(avdigits, "FSDD_URL", url)
    monkeypatch.setattr(avdigits, "FSDD_RECORDINGS_SHA256", listing)
    monkeypatch.setattr(avdigits, "MNIST_URL", (tmp_path / "mnist").as_uri() + "/")
    monkeypatch.setattr(avdigits, "MNIST_SHA256", sums)
    return tmp_path


def test_prepares_from_downloads_without_shared(no_shared, capsys):
    out = no_shared / "data" / "avdigits"
    assert avdigits.main(["--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"FSDD from {no_shared / 'data' / 'raw' / 'fsdd'}" in err                 # cache: raw/ next to --out
    m = json.loads((out / "manifest.json").read_text())
    assert {s: v["written"] for s, v in m["splits"].items()} == {"train": 10, "val": 10, "test": 10}


def test_rerun_with_other_parameters_needs_overwrite(no_shared, capsys):
    out = no_shared / "out"
    assert avdigits.main(["--out", str(out), "--visual-blur", "0"]) == 0
    capsys.readouterr()
    assert avdigits.main(["--out", str(out), "--visual-blur", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[1].startswith("error:")                               # FSDD from ..., error: ...
    assert "visual_blur: 0.0 -> 2.0" in err[1] and "--overwrite" in err[1]
    assert avdigits.main(["--out", str(out), "--visual-blur", "0"]) == 0                # identical: accepted
    assert avdigits.main(["--out", str(out), "--visual-blur", "2", "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["params"]["visual_blur"] == 2.0
