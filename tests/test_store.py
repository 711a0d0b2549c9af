"""data_prep/store.py: the on-disk format, resume after a crash, atomic manifest."""
import json
import os

import numpy as np
import pytest

from data_prep import store
from data_prep.store import SplitWriter, UserError, read_manifest, write_manifest

SHAPES = dict(max_frames=3, frame_hw=(8, 10), audio_shape=(4, 6))


def clip(i, t=2):
    return np.full((t, 8, 10, 3), 10 * i, np.uint8), np.full((4, 6), i, np.float32)


def load(split_dir, name):
    return np.load(split_dir / f"{name}.npy", mmap_mode="r", allow_pickle=False)


@pytest.mark.parametrize("jpeg", [False, True])
def test_write_skip_close_and_load_without_pickle(tmp_path, jpeg):
    w = SplitWriter(tmp_path, "train", 4, jpeg=jpeg, **SHAPES)
    assert w.todo() == [0, 1, 2, 3]
    for i in (0, 2, 3):
        w.write(i, f"c{i}", i % 2, *clip(i, t=1 + i % 3))
    w.skip(1, "c1", "no audio track")
    s = w.close()
    assert s["counts"] == {0: 2, 1: 1} and s["skipped"] == [["c1", "no audio track"]] and s["not_done"] == 0
    assert all(len(h) == 64 for h in s["sha256"].values())
    d = tmp_path / "train"
    assert load(d, "labels").tolist() == [0, -1, 0, 1]
    assert load(d, "n_frames").tolist() == [1, 0, 3, 1]
    assert load(d, "ids").tolist() == ["c0", "c1", "c2", "c3"]
    assert load(d, "audio").dtype == np.float16 and load(d, "audio")[2, 0, 0] == 2
    assert load(d, "done").all()
    if jpeg:
        idx = load(d, "frames_index")
        blob = np.fromfile(d / "frames.jpg.bin", np.uint8)
        import cv2
        o, n = idx[2, 2]
        assert abs(int(cv2.imdecode(blob[o:o + n], cv2.IMREAD_COLOR).mean()) - 20) <= 2
    else:
        f = load(d, "frames")
        assert f.shape == (4, 3, 8, 10, 3) and f[2, 2].min() == 20 and f[0, 1:].max() == 0


@pytest.mark.parametrize("jpeg", [False, True])
def test_resume_redoes_only_unflushed_rows(tmp_path, jpeg):
    w = SplitWriter(tmp_path, "train", 5, jpeg=jpeg, **SHAPES)
    w.write(0, "c0", 1, *clip(0))
    w.skip(1, "c1", "broken")
    w.flush()
    w.write(2, "c2", 1, *clip(2))  # not flushed: lost in the "crash"
    if jpeg:
        w.blob.close()             # what the OS does when the process dies
    del w                          # crash: no close()
    w = SplitWriter(tmp_path, "train", 5, jpeg=jpeg, **SHAPES)
    assert w.todo() == [2, 3, 4]
    assert load(tmp_path / "train", "labels")[2] == -1  # the unflushed row does not count as data
    for i in w.todo():
        w.write(i, f"c{i}", 0, *clip(i))
    s = w.close()
    assert s["written"] == 4 and s["skipped"] == [["c1", "broken"]]
    if jpeg:  # the blob lost the bytes of the unflushed row: offsets are contiguous
        idx = load(tmp_path / "train", "frames_index")
        ends = sorted((int(o), int(o + n)) for o, n in idx[[0, 2, 3, 4]].reshape(-1, 2) if n)
        assert all(a[1] == b[0] for a, b in zip(ends, ends[1:]))
        assert ends[-1][1] == os.path.getsize(tmp_path / "train" / "frames.jpg.bin")


def test_auto_flush_every_few_hundred(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "FLUSH_EVERY", 2)
    w = SplitWriter(tmp_path, "train", 5, **SHAPES)
    for i in range(3):
        w.write(i, f"c{i}", 0, *clip(i))
    assert load(tmp_path / "train", "done").tolist() == [True, True, False, False, False]


def test_reopen_with_other_parameters_is_a_user_error(tmp_path):
    SplitWriter(tmp_path, "train", 3, **SHAPES).close()
    with pytest.raises(UserError, match="other parameters"):
        SplitWriter(tmp_path, "train", 4, **SHAPES)


def test_bad_inputs_are_rejected(tmp_path):
    w = SplitWriter(tmp_path, "train", 2, id_len=4, **SHAPES)
    f, a = clip(0)
    with pytest.raises(ValueError, match="frames"):
        w.write(0, "c", 0, f.astype(np.float32), a)
    with pytest.raises(ValueError, match="frames"):
        w.write(0, "c", 0, np.zeros((4, 8, 10, 3), np.uint8), a)  # more than max_frames
    with pytest.raises(ValueError, match="audio"):
        w.write(0, "c", 0, f, np.zeros((4, 7), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        w.write(0, "c", 0, f, np.full((4, 6), np.nan, np.float32))
    with pytest.raises(ValueError, match="longer"):
        w.write(0, "toolong", 0, f, a)
    with pytest.raises(ValueError, match="label"):
        w.write(0, "c", -1, f, a)
    with pytest.raises(IndexError):
        w.write(2, "c", 0, f, a)
    assert w.todo() == [0, 1]


def test_manifest_is_atomic(tmp_path, monkeypatch):
    write_manifest(tmp_path, {"class_names": ["a"]})
    assert read_manifest(tmp_path) == {"class_names": ["a"]}

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_manifest(tmp_path, {"class_names": ["b"]})
    monkeypatch.undo()
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"class_names": ["a"]}  # old one intact


def test_read_manifest_missing_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not prepared"):
        read_manifest(tmp_path)
