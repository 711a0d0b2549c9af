"""Every raw layout through its CLI (in-process, tiny media the tests write themselves)."""
import json

import numpy as np
import pytest

from data_prep import ave, cremad, custom, kinetics_sounds, synth, vggsound
from data_prep.kinetics_sounds import KS_CLASSES
from test_prep_recipes import reference_cremad, reference_ks_ave

SMALL = ["--frame-size", "32", "--workers", "0"]
F16_ATOL = 1e-2   # stored float16: half a step at |x| = 16


def load(out, split):
    d = out / split
    arrays = {k: np.load(d / f"{k}.npy", allow_pickle=False) for k in ("audio", "labels", "ids", "n_frames", "done")}
    if (d / "frames.npy").exists():
        arrays["frames"] = np.load(d / "frames.npy")
    return arrays


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def frame_codes(a, row):
    return [synth.frame_index_of(f) for f in a["frames"][row, :a["n_frames"][row]]]


@pytest.fixture(scope="module")
def cremad_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("cremad_raw")
    synth.make_cremad(root, n_actors=10, n_clips=40)
    return root


def test_cremad_reference_split(cremad_raw, tmp_path):
    out = tmp_path / "out"
    cremad.main(["--raw", str(cremad_raw), "--out", str(out), "--frame-size", "32", "--workers", "2"])
    m = manifest(out)
    assert m["class_names"] == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"] and m["audio_shape"] == [257, 188]
    assert list(m["splits"]) == ["train", "val", "test"]
    train_list = cremad.read_split_list(cremad_raw / "train.csv")   # BOM + CRLF
    test_list = cremad.read_split_list(cremad_raw / "test.csv")
    # val = the clips of 1 of the 10 train actors (10%, seed 0); test is the reference list as is
    assert len(m["actors"]["val"]) == 1 and not set(m["actors"]["val"]) & set(m["actors"]["train"])
    a = {s: load(out, s) for s in ("train", "val", "test")}
    assert a["test"]["ids"].tolist() == [c for c, _ in test_list]
    assert sorted(a["train"]["ids"].tolist() + a["val"]["ids"].tolist()) == sorted(c for c, _ in train_list)
    assert {c.split("_")[0] for c in a["val"]["ids"]} == set(m["actors"]["val"])
    emo = dict(train_list + test_list)
    for s in a:
        assert a[s]["done"].all() and (a[s]["n_frames"] == 3).all()
        assert [m["class_names"][y] for y in a[s]["labels"]] == [emo[c] for c in a[s]["ids"]]
    # 1 fps, first frame of each second: frames 0, 30, 60 of a 30 fps clip (grey code mod 32)
    assert frame_codes(a["train"], 0) == [0, 30, 28]
    ref = reference_cremad(cremad_raw / "AudioWAV" / f"{a['test']['ids'][0]}.wav")
    np.testing.assert_allclose(a["test"]["audio"][0].astype(np.float32), ref, atol=F16_ATOL)
    assert sum(m["splits"]["train"]["class_counts"].values()) == len(a["train"]["ids"])


def test_cremad_speaker_independent_and_jpeg(cremad_raw, tmp_path):
    out = tmp_path / "out"
    cremad.main(["--raw", str(cremad_raw), "--out", str(out), "--split-mode", "speaker_independent", "--jpeg", *SMALL])
    m = manifest(out)
    actors = m["actors"]
    assert (len(actors["train"]), len(actors["val"]), len(actors["test"])) == (7, 1, 2)
    assert not (set(actors["train"]) & set(actors["val"]) or set(actors["train"]) & set(actors["test"])
                or set(actors["val"]) & set(actors["test"]))
    assert sum(m["splits"][s]["written"] for s in actors) == 40
    assert m["jpeg"] and (out / "train" / "frames.jpg.bin").exists() and not (out / "train" / "frames.npy").exists()


def test_ave(tmp_path):
    raw = tmp_path / "raw"
    synth.make_ave(raw, per_split=(5, 2, 2))
    # one video listed twice in train with two categories: ambiguous, skipped (the reference drops it)
    first = (raw / "trainSet.txt").read_text().splitlines()[0].split("&")
    with open(raw / "trainSet.txt", "a") as f:
        f.write("&".join(["Bark", first[1], *first[2:]]) + "\n")
    out = tmp_path / "out"
    ave.main(["--raw", str(raw), "--out", str(out), *SMALL])
    m = manifest(out)
    assert m["class_names"] == ["Banjo", "Bark", "Church bell"] and m["audio_shape"] == [257, 1004]
    assert {s: m["splits"][s]["n"] for s in ("train", "val", "test")} == {"train": 5, "val": 2, "test": 2}
    (skipped_id, reason), = m["splits"]["train"]["skipped"]
    assert skipped_id == first[1] and "ambiguous" in reason
    a = load(out, "train")
    assert a["labels"][0] == -1 and (a["labels"][1:] >= 0).all()
    # AVE / KS frames: the middle of each second, round((s + 0.5) * 25) = 12, 38, 62
    assert frame_codes(a, 1) == [12, 38 % 32, 62 % 32]
    assert np.isclose(a["audio"][1].astype(np.float32).mean(), 0, atol=1e-2)   # standardised per clip


def test_kinetics_sounds_reference_lists_class_folders(tmp_path):
    raw = tmp_path / "raw"
    lists = synth.make_kinetics_sounds(raw, fmt="reference", n_train=10, n_test=3)
    out = tmp_path / "out"
    kinetics_sounds.main(["--raw", str(raw / "videos"), "--splits", str(raw), "--out", str(out), *SMALL])
    m = manifest(out)
    assert m["class_names"] == KS_CLASSES and m["params"]["list_format"] == "reference"
    tr, va, te = (load(out, s) for s in ("train", "val", "test"))
    assert len(va["ids"]) == 1 and len(tr["ids"]) == 9
    truth = dict(lists["train"] + lists["test"])
    for a in (tr, va, te):
        assert a["labels"].tolist() == [truth[i] for i in a["ids"]]
    assert tr["audio"].shape[1:] == (257, 1004) and (tr["n_frames"] == 3).all()


def test_kinetics_sounds_class_id_lists_audio_dir_fbank(tmp_path):
    raw = tmp_path / "raw"
    synth.make_kinetics_sounds(raw, fmt="class,id", per_class_folders=False, audio_dir=raw / "wav")
    out = tmp_path / "out"
    kinetics_sounds.main(["--raw", str(raw / "videos"), "--splits", str(raw), "--out", str(out),
                          "--audio-dir", str(raw / "wav"), "--audio-recipe", "fbank", *SMALL])
    m = manifest(out)
    assert m["class_names"] == ["blowing_nose", "playing_accordion", "playing_guitar"]
    assert m["audio_shape"] == [128, 1024] and m["params"]["audio"]["kind"] == "kaldi_fbank"
    assert all(s["written"] == s["n"] for s in m["splits"].values())


def test_kinetics_sounds_audio_dir_parity_with_reference(tmp_path):
    raw = tmp_path / "raw"
    synth.make_kinetics_sounds(raw, n_train=2, n_test=1, audio_dir=raw / "wav")
    out = tmp_path / "out"
    kinetics_sounds.main(["--raw", str(raw / "videos"), "--splits", str(raw), "--out", str(out),
                          "--audio-dir", str(raw / "wav"), *SMALL])
    a = load(out, "test")
    ref = reference_ks_ave(raw / "wav" / f"{a['ids'][0]}.wav")
    np.testing.assert_allclose(a["audio"][0].astype(np.float32), ref, atol=F16_ATOL)


def test_vggsound(tmp_path):
    raw = tmp_path / "raw"
    rows = synth.make_vggsound(raw, n_train=10, n_test=3)
    out = tmp_path / "out"
    vggsound.main(["--raw", str(raw), "--out", str(out), *SMALL])
    m = manifest(out)
    assert m["class_names"] == ["bird chirping, tweeting", "dog barking", "playing sitar"]
    assert m["audio_shape"] == [129, 1251] and m["splits"]["val"]["n"] == 1
    te = load(out, "test")
    assert te["ids"].tolist() == [f"{y}_{s:06d}" for y, s, _, sp in rows if sp == "test"]
    assert frame_codes(te, 0) == [0, 25, 50 % 32]        # first frame of each second at 25 fps


def test_custom_mixed_inputs(tmp_path):
    csv = synth.make_custom(tmp_path / "raw")
    out = tmp_path / "out"
    custom.main(["--manifest", str(csv), "--out", str(out), "--max-frames", "3", *SMALL])
    m = manifest(out)
    assert m["class_names"] == ["bird", "cat", "dog"] and m["audio_shape"] == [128, 1024]
    assert {s: v["written"] for s, v in m["splits"].items()} == {"train": 5, "val": 2, "test": 2}
    tr = load(out, "train")
    row = {c: k for k, c in enumerate(tr["ids"])}
    assert frame_codes(tr, row["c1"]) == [0, 1, 2]        # folder of 3 images
    assert frame_codes(tr, row["c2"]) == [0, 2, 4]        # .npy of 5 frames, 3 spread evenly
    assert frame_codes(tr, row["c0"]) == [0, 25]          # video, audio from its own track


def test_custom_npy_features(tmp_path):
    raw = tmp_path / "raw"
    (raw / "m").mkdir(parents=True)
    lines = ["clip_id,label,split,audio,visual"]
    for k, (split, T) in enumerate([("train", 5), ("train", 8), ("val", 6), ("test", 3)]):
        np.save(raw / "m" / f"a{k}.npy", np.full((7, T), k + 1, np.float32))
        np.save(raw / "m" / f"v{k}.npy", np.zeros((2, 20, 20, 3), np.uint8))
        lines.append(f"k{k},{k % 2},{split},m/a{k}.npy,m/v{k}.npy")
    (raw / "clips.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    custom.main(["--manifest", str(raw / "clips.csv"), "--out", str(out), *SMALL])
    m = manifest(out)
    assert m["audio_shape"] == [7, 8] and m["params"]["audio"]["kind"] == "precomputed"
    tr = load(out, "train")
    assert tr["audio"][0, 0].tolist() == [1] * 5 + [0] * 3   # zero-padded to the longest clip


@pytest.mark.slow
def test_cremad_real_size_clips_default_frame_size(tmp_path):
    """480x360 textured flv at 30 fps + 16 kHz wav (CREMA-D size), default 256x256 frames, 2 workers."""
    raw = tmp_path / "raw"
    synth.make_cremad(raw, n_actors=4, n_clips=24, hw=(360, 480), texture=True)
    out = tmp_path / "out"
    cremad.main(["--raw", str(raw), "--out", str(out), "--workers", "2"])
    m = manifest(out)
    assert m["frame_hw"] == [256, 256] and sum(s["written"] for s in m["splits"].values()) == 24
    frames = np.load(out / "train" / "frames.npy", mmap_mode="r")
    assert frames.shape[1:] == (4, 256, 256, 3) and (np.load(out / "train" / "n_frames.npy") == 3).all()
