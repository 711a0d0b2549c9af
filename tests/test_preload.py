"""speed.preload: a prepared split copied to the device once gives exactly the batches the reader
gives (train augmentation, random frames and audio windows, unions of splits, JPEG stores), and
the reader is then never used; the choices and their refusals."""
import numpy as np
import pytest
import torch

from avbalance.data import prepared
from avbalance.data.prepared import build, split_nbytes
from avbalance.errors import ConfigError

from test_prepared_loader import cfg, make_dataset

CPU = torch.device("cpu")
FIELDS = ("audio", "visual", "label", "index")


@pytest.fixture(scope="module")
def root(tmp_path_factory):  # clips hold 1..4 stored frames; rows 3 and 7 of train are skipped
    return make_dataset(tmp_path_factory.mktemp("preload"), splits=(("train", 23), ("val", 6), ("test", 9)))


def _same(xs, ys):
    assert len(xs) == len(ys) > 0
    for x, y in zip(xs, ys):
        for f in FIELDS:
            assert getattr(x, f).dtype == getattr(y, f).dtype and torch.equal(getattr(x, f), getattr(y, f)), f


@pytest.mark.parametrize("kw", [dict(), dict(audio_crop=5, frame_selection="random"),
                                dict(crop_per="clip", frames=3, train_splits=["train", "val"]),
                                dict(frame_selection="reference", frames=4, audio_crop=12)])
def test_preloaded_batches_equal_the_readers(root, kw):
    off = build(cfg(root, **kw), seed=3, batch_size=4, eval_batch_size=5, preload="off")
    on = build(cfg(root, **kw), seed=3, batch_size=4, eval_batch_size=5, preload="all")
    for epoch in (0, 1):
        _same(list(off.train_batches(epoch)), list(on.train_batches(epoch)))
    for split in ("train", "val", "test"):
        _same(list(off.eval_batches(split)), list(on.eval_batches(split)))
    rows = np.array([4, 0, 2])  # a subset of rows, in the caller's order (PMR's prototypes, HeldOut)
    _same(list(off.eval_batches("train", rows=rows)), list(on.eval_batches("train", rows=rows)))
    _same(list(off.train_batches(2, rows=rows)), list(on.train_batches(2, rows=rows)))


def test_a_jpeg_store_preloads_its_decoded_frames(tmp_path):
    root = make_dataset(tmp_path, jpeg=True)
    off = build(cfg(root, frames=3), seed=0, batch_size=4, preload="off")
    on = build(cfg(root, frames=3), seed=0, batch_size=4, preload="all")
    _same(list(off.train_batches(0)), list(on.train_batches(0)))
    _same(list(off.eval_batches("test")), list(on.eval_batches("test")))


@pytest.fixture
def reads(monkeypatch):
    """The splits whose batches were read from the store on the host."""
    seen = []
    real = prepared.EpochReader.__getitem__

    def recording(self, k):
        seen.append(self.arrays.dir.name)
        return real(self, k)
    monkeypatch.setattr(prepared.EpochReader, "__getitem__", recording)
    return seen


@pytest.mark.parametrize("mode,host", [("off", {"train", "test"}), ("auto", {"train", "test"}),  # auto: CUDA only
                                       ("eval", {"train"}), ("all", set())])
def test_each_choice_reads_on_the_host_only_the_splits_it_does_not_preload(root, reads, mode, host):
    data = build(cfg(root), seed=0, batch_size=4, preload=mode)
    for _ in range(2):  # the second epoch too: the copy is made once and kept
        list(data.train_batches(0))
        list(data.eval_batches("test"))
    assert set(reads) == host


def test_the_copy_is_made_once_per_split(root, monkeypatch):
    made = []
    real = prepared.DeviceSplit.__init__

    def counting(self, arrays, device, *a, **kw):
        made.append(arrays.dir.name)
        real(self, arrays, device, *a, **kw)
    monkeypatch.setattr(prepared.DeviceSplit, "__init__", counting)
    data = build(cfg(root), seed=0, batch_size=4, preload="all")
    for epoch in range(3):
        list(data.train_batches(epoch))
        list(data.eval_batches("test"))
        list(data.eval_batches("train"))
    assert sorted(made) == ["test", "train"]


def test_only_the_frames_a_fixed_policy_feeds_are_copied_and_the_size_is_counted_before(root):
    from avbalance.data.prepared import pick_frames
    arrays = build(cfg(root), seed=0, batch_size=4).arrays["test"]
    # test: 9 clips holding at most 4 stored frames of 16x20x3, 4x12 float16 spectrograms, int64 labels
    every = prepared.DeviceSplit(arrays, CPU)                       # frame_selection=random: every stored frame
    assert every.frames.shape == (9, 4, 16, 20, 3)
    assert every.frames.nbytes + every.audio.nbytes + every.labels.nbytes == split_nbytes(arrays) \
        == 9 * (4 * 16 * 20 * 3 + 4 * 12 * 2 + 8)
    pos = pick_frames(np.asarray(arrays.a["n_frames"]), 2, "even")  # a fixed policy: the 2 fed frames only
    fixed = prepared.DeviceSplit(arrays, CPU, pos)
    assert fixed.frames.shape == (9, 2, 16, 20, 3) and torch.equal(fixed.frames, every.frames[torch.arange(9)[:, None],
                                                                                              torch.from_numpy(pos)])
    assert fixed.frames.nbytes + fixed.audio.nbytes + fixed.labels.nbytes == split_nbytes(arrays, 2)


def test_an_unknown_choice_is_one_line(root):
    with pytest.raises(ConfigError, match=r"^speed.preload='yes'; expected one of \['auto', 'off', 'eval', 'all'\]$"):
        build(cfg(root), seed=0, batch_size=4, preload="yes")


@pytest.mark.parametrize("mode,split", [("all", "train"), ("all", "test"), ("eval", "test")])
def test_a_split_too_large_for_the_device_is_refused_when_asked_and_read_under_auto(root, monkeypatch, mode, split):
    made, free = [], {}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["now"], 80 * 2**30))
    monkeypatch.setattr(prepared, "DeviceSplit", lambda arrays, device, pos: made.append((arrays.dir.name, device)) or "copy")
    cuda = torch.device("cuda")
    need = split_nbytes(build(cfg(root), seed=0, batch_size=4).arrays[split], 2)  # frames=2, even: fixed
    free["now"] = 4 * need - 4  # a quarter of it is one byte short
    data = build(cfg(root), seed=0, batch_size=4, preload=mode)
    with pytest.raises(ConfigError) as e:
        data._preloaded_split(split, cuda)
    assert str(e.value) == (f"speed.preload={mode}: split '{split}' of 'demo' needs {need / 2**20:,.1f} MiB on cuda, more "
                            f"than a quarter of its {free['now'] / 2**20:,.1f} MiB free; use speed.preload="
                            f"{'eval or off' if split == 'train' else 'off'}")
    assert build(cfg(root), seed=0, batch_size=4, preload="auto")._preloaded_split(split, cuda) is None
    free["now"] = 4 * need  # exactly a quarter: taken, by auto too
    assert build(cfg(root), seed=0, batch_size=4, preload=mode)._preloaded_split(split, cuda) == "copy"
    assert build(cfg(root), seed=0, batch_size=4, preload="auto")._preloaded_split(split, cuda) == "copy"
    assert [m for m in made if m[0] == split] == [(split, cuda)] * 2


def test_the_first_training_pass_decides_the_evaluation_splits_too(root, monkeypatch):
    """An evaluation split that does not fit is refused before the first epoch, not after it; memory
    torch's allocator holds unused counts as free."""
    made, reserved = [], {"unused": 0}
    need = {s: split_nbytes(build(cfg(root), seed=0, batch_size=4).arrays[s], 2) for s in ("train", "test")}
    # the driver's free memory: room for train, then (its copy made) a quarter of it 1 byte short of test's
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device=None: ((4 * need["test"] - 4) if made else 4 * need["train"], 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 1000 + reserved["unused"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1000)
    monkeypatch.setattr(prepared, "DeviceSplit", lambda arrays, device, pos: made.append(arrays.dir.name) or "copy")
    cuda = torch.device("cuda")
    data = build(cfg(root), seed=0, batch_size=4, preload="all")
    with pytest.raises(ConfigError, match=r"^speed.preload=all: split 'test' of 'demo' needs"):
        data._preloaded_split("train", cuda)
    assert made == ["train"]
    made.clear()
    assert build(cfg(root), seed=0, batch_size=4, preload="auto")._preloaded_split("train", cuda) == "copy"
    assert made == ["train"]  # auto leaves test on the host
    made.clear()
    reserved["unused"] = 4  # the 4 missing bytes are held by the allocator, unused: test fits
    data = build(cfg(root), seed=0, batch_size=4, preload="all")
    assert data._preloaded_split("train", cuda) == "copy" and made == ["train", "test"]
    assert data._preloaded_split("test", cuda) == "copy" and made == ["train", "test"]  # made once
    made.clear()
    # an evaluation on its own (mode=eval) copies only what it reads
    assert build(cfg(root), seed=0, batch_size=4, preload="all")._preloaded_split("test", cuda) == "copy"
    assert made == ["test"]


def test_a_run_trains_to_the_same_numbers_with_and_without_preloading(tmp_path):
    from avbalance.trainer import train
    from conftest import TIMINGS, make_cfg
    data = make_dataset(tmp_path / "data", splits=(("train", 24), ("val", 6), ("test", 9)), skip=())
    runs = {}
    for mode in ("off", "all"):
        cfg = make_cfg("dataset=custom", f"dataset.root={data}", "dataset.num_classes=3", "dataset.image_size=16",
                       "dataset.frames=2", "dataset.audio_crop=8", "dataset.frame_selection=random", "model=tiny",
                       "model.width=8", "batch_size=8", "modulation=ogm_ge", "epochs=2", f"speed.preload={mode}",
                       tiny=False)
        runs[mode] = train(cfg, tmp_path / mode)
    for r in runs.values():
        for k in TIMINGS:
            r["last"].pop(k)
    assert runs["off"] == runs["all"] and runs["off"]["last"]["train/loss"] > 0  # losses, metrics, traces


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_preloaded_data_path_makes_no_syncing_op(root, split, monkeypatch):
    """After the first batch (which makes the copy), every batch is gathered on the device with no
    operator that would read a device value back on CUDA (tests/test_cuda.py checks it there). The
    crop boxes are drawn on the host by design (CPU tensors, copied over): not recorded."""
    from torch.utils._python_dispatch import _disable_current_modes
    from test_core_claims import SyncRecorder
    real_boxes = prepared.random_resized_crop_boxes

    def host_boxes(*a, **kw):
        with _disable_current_modes():
            return real_boxes(*a, **kw)
    monkeypatch.setattr(prepared, "random_resized_crop_boxes", host_boxes)
    data = build(cfg(root, audio_crop=5, frame_selection="random"), seed=0, batch_size=4, preload="all")
    it = data.train_batches(0) if split == "train" else data.eval_batches(split)
    next(it)
    recorder, n = SyncRecorder(), 0
    with recorder:
        for _ in it:
            n += 1
    assert n >= 2 and recorder.ops == [], sorted(set(recorder.ops))
