"""avbalance.data.prepared: the loader of prepared datasets (format of data_prep/store.py)."""

import numpy as np
import pytest
import torch
from PIL import Image
from omegaconf import OmegaConf
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from avbalance.data.prepared import (IMAGENET_MEAN, IMAGENET_STD, build, eval_frames, pick_frames,
                                     random_resized_crop_boxes, train_frames)
from avbalance.errors import ConfigError, DataNotPreparedError
from avbalance.registry import DATASETS
from data_prep.store import SplitWriter, write_manifest

F_, T_, H, W = 4, 12, 16, 20


def frame_level(row, k):
    return 20 * k + row % 5  # stored frame k of clip `row`: a flat image of this grey level


def make_dataset(root, splits=(("train", 23), ("test", 9)), jpeg=False, skip=(3, 7), skip_in="train"):
    for split, n in splits:
        w = SplitWriter(root, split, n, max_frames=4, frame_hw=(H, W), audio_shape=(F_, T_), jpeg=jpeg)
        for i in w.todo():
            if split == skip_in and i in skip:
                w.skip(i, f"{split}{i}", "broken")
                continue
            t = 1 + i % 4
            frames = np.stack([np.full((H, W, 3), frame_level(i, k), np.uint8) for k in range(t)])
            audio = np.tile(np.arange(T_, dtype=np.float32), (F_, 1)) + 100 * i  # column c holds 100 i + c
            w.write(i, f"{split}{i}", i % 3, frames, audio)
        w.close()
    write_manifest(root, {"class_names": ["a", "b", "c"]})
    return root


def cfg(root, **kw):
    base = dict(name="demo", root=str(root), prep_command="python -m data_prep.demo --out X", num_classes=3,
                selection_split="test", spec_shape=None, frames=2, frame_selection="even", image_size=8,
                audio_crop=None, crop_per="frame")
    return OmegaConf.create({**base, **kw})


def unnormalise(v):  # [B, 3, T, S, S] -> grey level 0..255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    return (v * std + mean) * 255


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("prepared"))


def test_registered():
    assert DATASETS.get("prepared") is build


def test_not_prepared_message(tmp_path):
    with pytest.raises(DataNotPreparedError) as e:
        build(cfg(tmp_path / "nowhere"), seed=0, batch_size=4)
    msg = str(e.value)
    assert msg == f"dataset 'demo' is not prepared at {tmp_path / 'nowhere'}: run `python -m data_prep.demo --out X`"
    assert "\n" not in msg


def test_missing_selection_split_is_one_line(root):
    with pytest.raises(ConfigError, match=r"selection_split 'val' is not prepared .*splits: train, test") as e:
        build(cfg(root, selection_split="val"), seed=0, batch_size=4)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("split,selection", [("train", "test"), ("test", "test"), ("val", "val")])
def test_split_without_usable_clips_is_one_line(tmp_path, split, selection):
    """A hand-made store whose `split` has rows but all skipped: loading stops with one line."""
    root = make_dataset(tmp_path, splits=(("train", 6), ("val", 4), ("test", 5)),
                        skip={"train": range(6), "val": range(4), "test": range(5)}[split], skip_in=split)
    with pytest.raises(DataNotPreparedError) as e:
        build(cfg(root, selection_split=selection), seed=0, batch_size=4)
    msg = str(e.value)
    assert f"split '{split}' at {root} has no usable clip" in msg and "--overwrite" in msg and "\n" not in msg
    assert "python -m data_prep.demo --out X" in msg


@pytest.mark.parametrize("kw,match", [(dict(num_classes=4), "num_classes"), (dict(audio_crop=13), "audio_crop"),
                                      (dict(spec_shape=[4, 11]), "spec_shape"), (dict(frame_selection="first"), "frame_selection"),
                                      (dict(crop_per="batch"), "crop_per")])
def test_config_errors(root, kw, match):
    with pytest.raises(ConfigError, match=match):
        build(cfg(root, **kw), seed=0, batch_size=4)


def test_attributes(root):
    d = build(cfg(root), seed=0, batch_size=4)
    assert (d.name, d.num_classes, d.class_names) == ("demo", 3, ["a", "b", "c"])
    assert d.split_names == ["train", "test"] and d.selection_split == "test"
    assert d.num_batches("train") == 6 and d.num_batches("test") == 3  # 21 rows (2 skipped), 9 rows


def test_skipped_rows_are_ignored_and_every_row_comes_once(root):
    d = build(cfg(root), seed=0, batch_size=4)
    seen = torch.cat([b.index for b in d.train_batches(0)]).sort().values
    assert seen.tolist() == [i for i in range(23) if i not in (3, 7)]
    labels = torch.cat([b.label for b in d.train_batches(0)])
    assert (labels >= 0).all()


def test_shapes_dtypes_and_labels(root):
    d = build(cfg(root, audio_crop=5, spec_shape=[4, 5]), seed=0, batch_size=4)
    for b in [next(iter(d.train_batches(0))), next(iter(d.eval_batches("test")))]:
        assert b.audio.shape == (4, 1, F_, 5) and b.audio.dtype == torch.float32
        assert b.visual.shape == (4, 3, 2, 8, 8) and b.visual.dtype == torch.float32
        assert torch.equal(b.label, b.index % 3)
        assert b.visual.transpose(1, 2).is_contiguous()  # the encoder's frames-first view costs no copy


def test_audio_crop_random_in_train_centred_in_eval(root):
    d = build(cfg(root, audio_crop=5), seed=0, batch_size=32)
    b = next(iter(d.eval_batches("test")))
    start = b.audio[:, 0, 0, 0] - 100 * b.index
    assert (start == (T_ - 5) // 2).all()
    assert torch.equal(b.audio[:, 0, 0] - b.audio[:, 0, 0, :1], torch.arange(5.0).expand(len(b), 5))  # contiguous window
    starts = torch.cat([(b.audio[:, 0, 0, 0] - 100 * b.index) for e in range(3) for b in d.train_batches(e)])
    assert starts.min() >= 0 and starts.max() <= T_ - 5 and len(starts.unique()) > 3


def test_pick_frames_policies():
    n = np.array([1, 2, 3, 4, 10])
    assert pick_frames(n, 2, "reference").tolist() == [[0, 0], [0, 1], [0, 1], [0, 1], [0, 1]]
    assert pick_frames(n, 1, "even").tolist() == [[0], [1], [1], [2], [5]]
    assert pick_frames(n, 3, "even").tolist() == [[0, 0, 0], [0, 1, 1], [0, 1, 2], [0, 2, 3], [1, 5, 8]]
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    r = pick_frames(np.full(1000, 9), 3, "random", g(0))
    assert (r[:, 0] <= 2).all() and ((r[:, 1] >= 3) & (r[:, 1] <= 5)).all() and (r[:, 2] >= 6).all()  # one per third
    assert np.array_equal(r, pick_frames(np.full(1000, 9), 3, "random", g(0)))
    assert not np.array_equal(r, pick_frames(np.full(1000, 9), 3, "random", g(1)))


@pytest.mark.parametrize("policy", ["even", "reference", "random"])
def test_frame_selection_end_to_end(root, policy):
    d = build(cfg(root, frames=1, frame_selection=policy), seed=0, batch_size=32)
    b = next(iter(d.eval_batches("test")))  # eval: resize only, so the grey level survives
    level = unnormalise(b.visual)[:, 0, 0].mean(dim=(1, 2))
    n = 1 + b.index % 4
    k = torch.zeros_like(n) if policy == "reference" else n // 2  # random evaluates with even
    assert torch.allclose(level, (20 * k + b.index % 5).float(), atol=0.01)


def test_random_frames_change_per_epoch(root):
    d = build(cfg(root, frames=1, frame_selection="random"), seed=0, batch_size=32)
    levels = []
    for epoch in (0, 1, 2):
        b = next(iter(d.train_batches(epoch)))
        # crops of a flat image keep the level (interior); flips too
        levels.append(unnormalise(b.visual)[b.index.argsort(), 0, 0, 3, 3].round())
    assert not (torch.equal(levels[0], levels[1]) and torch.equal(levels[1], levels[2]))


def test_eval_is_deterministic_and_train_reproducible(root):
    d = build(cfg(root, audio_crop=5, frame_selection="random"), seed=0, batch_size=4)
    e1, e2 = list(d.eval_batches("test")), list(d.eval_batches("test"))
    assert all(torch.equal(a.visual, b.visual) and torch.equal(a.audio, b.audio) for a, b in zip(e1, e2))
    assert torch.equal(torch.cat([b.index for b in e1]), torch.arange(9))
    d2 = build(cfg(root, audio_crop=5, frame_selection="random"), seed=0, batch_size=4)  # e.g. a resumed run
    t1, t2 = list(d.train_batches(3)), list(d2.train_batches(3))
    assert all(torch.equal(a.visual, b.visual) and torch.equal(a.audio, b.audio) for a, b in zip(t1, t2))
    t3 = list(d.train_batches(4))
    assert not torch.equal(torch.cat([b.index for b in t1]), torch.cat([b.index for b in t3]))


def test_workers_give_the_same_batches(root):
    a = build(cfg(root), seed=0, batch_size=4, num_workers=0)
    b = build(cfg(root), seed=0, batch_size=4, num_workers=2)
    for epoch in (0, 1):
        xs, ys = list(a.train_batches(epoch)), list(b.train_batches(epoch))
        assert len(xs) == len(ys) == a.num_batches("train")
        for x, y in zip(xs, ys):
            for field in ("audio", "visual", "label", "index"):
                assert torch.equal(getattr(x, field), getattr(y, field)), (epoch, field)
    for split in ("train", "test"):
        xs, ys = list(a.eval_batches(split)), list(b.eval_batches(split))
        assert len(xs) == len(ys) and all(torch.equal(x.visual, y.visual) and torch.equal(x.label, y.label)
                                          for x, y in zip(xs, ys))


def _same(xs, ys):
    return len(xs) == len(ys) and all(torch.equal(getattr(x, f), getattr(y, f)) for x, y in zip(xs, ys)
                                      for f in ("audio", "visual", "label", "index"))


@pytest.fixture
def loaders_made(monkeypatch):
    """Counts the DataLoaders the prepared loader makes (each one forks its own worker processes)."""
    made = []

    class Counting(torch.utils.data.DataLoader):
        def __init__(self, *a, **kw):
            made.append(kw)
            super().__init__(*a, **kw)
    monkeypatch.setattr(torch.utils.data, "DataLoader", Counting)
    return made


def test_workers_start_once_for_every_pass_and_split(root, loaders_made):
    ref = build(cfg(root), seed=0, batch_size=4, num_workers=0)
    d = build(cfg(root), seed=0, batch_size=4, num_workers=2)
    for epoch in (0, 1, 2):
        assert _same(list(d.train_batches(epoch)), list(ref.train_batches(epoch)))
        assert _same(list(d.eval_batches("test")), list(ref.eval_batches("test")))
    assert _same(list(d.eval_batches("train")), list(ref.eval_batches("train")))
    assert len(loaders_made) == 1 and loaders_made[0]["persistent_workers"] and loaders_made[0]["num_workers"] == 2


def test_a_pass_inside_a_pass_gets_its_own_workers(root, loaders_made):
    ref = build(cfg(root), seed=0, batch_size=4, num_workers=0)
    d = build(cfg(root), seed=0, batch_size=4, num_workers=2)
    assert _same(list(d.eval_batches("test")), list(ref.eval_batches("test")))  # one loader made, now idle
    outer, first = d.train_batches(0), []
    first += [next(outer), next(outer)]
    assert _same(list(d.eval_batches("test")), list(ref.eval_batches("test")))   # while the epoch is open
    assert _same(first + list(outer), list(ref.train_batches(0)))
    assert len(loaders_made) == 2
    assert _same(list(d.train_batches(1)), list(ref.train_batches(1)))
    assert len(loaders_made) == 2                      # lent again, none made


def test_a_pass_left_early_frees_its_workers_for_the_next(root, loaders_made):
    ref = build(cfg(root), seed=0, batch_size=4, num_workers=0)
    d = build(cfg(root), seed=0, batch_size=4, num_workers=2)
    stopped = d.train_batches(0)
    next(stopped)
    stopped.close()                                    # a pass left after one batch (max steps, a time limit)
    assert _same(list(d.train_batches(1)), list(ref.train_batches(1)))  # what was in flight is not served
    assert _same(list(d.eval_batches("test")), list(ref.eval_batches("test")))
    assert len(loaders_made) == 1


def test_a_reader_error_in_a_worker_is_raised_and_its_workers_are_not_reused(root, loaders_made, monkeypatch):
    from avbalance.data import prepared
    ref = build(cfg(root), seed=0, batch_size=4, num_workers=0)
    d = build(cfg(root), seed=0, batch_size=4, num_workers=2)

    def broken(*a, **kw):
        raise OSError("the disk went away")
    read = prepared.read_batch
    monkeypatch.setattr(prepared, "read_batch", broken)  # the workers fork with it
    with pytest.raises(OSError, match="the disk went away"):
        list(d.train_batches(0))
    monkeypatch.setattr(prepared, "read_batch", read)
    assert _same(list(d.train_batches(0)), list(ref.train_batches(0)))  # new workers, forked with the real reader
    assert len(loaders_made) == 2


def test_jpeg_store_reads_like_raw(tmp_path, root):
    make_dataset(tmp_path, jpeg=True)
    a = build(cfg(root), seed=0, batch_size=32)
    b = build(cfg(tmp_path), seed=0, batch_size=32)
    x, y = next(iter(a.eval_batches("test"))), next(iter(b.eval_batches("test")))
    assert (unnormalise(x.visual) - unnormalise(y.visual)).abs().max() < 3  # JPEG quality 90 on flat images


def _reference_crop(img, box, size):  # torchvision's resized_crop on one frame [3, H, W]
    x1, y1, x2, y2 = box.int().tolist()
    out = TF.resized_crop(img, y1, x1, y2 - y1, x2 - x1, [size, size], antialias=True)
    return (out / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def test_train_crop_matches_torchvision():
    frames = torch.randint(0, 256, (2, 1, 16, 16, 3), dtype=torch.uint8)
    boxes = torch.tensor([[2.0, 3, 14, 13], [0, 0, 16, 16]])  # upsampled to 24: bilinear, exact inside
    for flip in (False, True):
        out = train_frames(frames, boxes, torch.tensor([flip, not flip]), 24)
        for k in range(2):
            ref = _reference_crop(frames[k, 0].permute(2, 0, 1).float(), boxes[k], 24)
            if flip != bool(k):
                ref = ref.flip(-1)
            # the outermost output pixels may differ: roi_align interpolates with the pixels just
            # outside the box where resize replicates the box's edge
            assert torch.allclose(out[k, :, 0, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-4)
            if k == 1:  # the whole image: no outside pixels, equal everywhere
                assert torch.allclose(out[k, :, 0], ref, atol=1e-4)


def test_train_crop_downscale_close_to_torchvision():
    yy, xx = torch.meshgrid(torch.arange(200.0), torch.arange(200.0), indexing="ij")
    img = ((torch.sin(xx / 7) + torch.cos(yy / 11)) * 60 + 128).to(torch.uint8)
    frames = img[None, None, :, :, None].expand(1, 1, 200, 200, 3).contiguous()
    box = torch.tensor([[10.0, 20, 190, 170]])
    out = train_frames(frames, box, torch.tensor([False]), 64)[0, :, 0]
    ref = _reference_crop(frames[0, 0].permute(2, 0, 1).float(), box[0], 64)
    assert (out - ref).abs().mean() < 0.01  # antialiasing by area sampling vs torchvision's filter


def test_eval_transform_is_the_reference_resize_and_normalise():
    frames = torch.randint(0, 256, (2, 3, 20, 30, 3), dtype=torch.uint8)
    out = eval_frames(frames, 12)
    assert out.shape == (2, 3, 3, 12, 12)
    # the reference: PIL Resize((12, 12)) (bilinear, uint8), ToTensor, Normalize
    pil = Image.fromarray(frames[1, 2].numpy()).resize((12, 12), Image.BILINEAR)
    ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()
    assert (unnormalise(out)[1, :, 2] - ref).abs().max() <= 1.01  # within one grey level of PIL


def test_crop_boxes_follow_torchvision_params():
    g = torch.Generator().manual_seed(0)
    b = random_resized_crop_boxes(20000, 60, 80, g)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 80).all() and (b[:, 3] <= 60).all()
    assert (b == b.round()).all() and (w >= 1).all() and (h >= 1).all()
    area = w * h / (60 * 80)
    assert area.min() > 0.05 and area.max() <= 1 and 0.4 < area.mean() < 0.6
    assert (w / h).min() > 0.7 and (w / h).max() < 1.4
    # no valid try possible (image far wider than the ratio range): the centred, ratio-clamped crop
    b = random_resized_crop_boxes(5, 10, 1000, g, scale=(1.0, 1.0))
    i, j, h, w = RandomResizedCrop.get_params(torch.zeros(3, 10, 1000), [1.0, 1.0], [3 / 4, 4 / 3])
    assert b[0].tolist() == [j, i, j + w, i + h] == [493, 0, 506, 10]


@pytest.mark.parametrize("crop_per", ["frame", "clip"])
def test_crop_per_clip_shares_the_crop(tmp_path, crop_per):
    # every stored frame of a clip identical and textured: equal outputs iff the crop is shared
    w = SplitWriter(tmp_path, "train", 4, max_frames=2, frame_hw=(H, W), audio_shape=(F_, T_))
    rng = np.random.default_rng(0)
    for i in range(4):
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        w.write(i, f"c{i}", 0, np.stack([img, img]), np.zeros((F_, T_), np.float32))
    w.close()
    write_manifest(tmp_path, {"class_names": ["a", "b", "c"]})
    d = build(cfg(tmp_path, selection_split="train", crop_per=crop_per), seed=0, batch_size=4)
    v = next(iter(d.train_batches(0))).visual
    same = torch.equal(v[:, :, 0], v[:, :, 1])
    assert same == (crop_per == "clip")


def test_early_stop_of_the_consumer_does_not_hang_or_leak_threads(root):
    import threading
    import time

    def prefetchers():
        return [t for t in threading.enumerate() if t.name.startswith("avbalance-prefetch")]
    assert not prefetchers()
    d = build(cfg(root), seed=0, batch_size=2)
    for epoch in range(5):
        for b in d.train_batches(epoch):
            break  # the prefetch thread must end on its own
    deadline = time.time() + 5
    while prefetchers() and time.time() < deadline:
        time.sleep(0.05)
    assert not prefetchers(), "prefetch threads outlive the loops that stopped early"
    assert len(list(d.eval_batches("test"))) == 5


def test_jpeg_decoding_threads_in_this_process_one_per_worker_process(tmp_path, monkeypatch):
    import os
    from avbalance.data import prepared
    make_dataset(tmp_path, jpeg=True)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert {a.decode_threads for a in build(cfg(tmp_path), seed=0, batch_size=4).splits.values()} == {8}
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert {a.decode_threads for a in build(cfg(tmp_path), seed=0, batch_size=4).splits.values()} == {2}
    workers = build(cfg(tmp_path), seed=0, batch_size=4, num_workers=2)
    assert {a.decode_threads for a in workers.splits.values()} == {1}
    # a pool per process and size, made once; one thread decodes without one
    assert prepared._decode_pool(1) is None and prepared._decode_pool(2) is prepared._decode_pool(2)
    threaded = build(cfg(tmp_path), seed=0, batch_size=4)
    for x, y in zip(workers.train_batches(0), threaded.train_batches(0)):
        assert torch.equal(x.visual, y.visual) and torch.equal(x.index, y.index)
