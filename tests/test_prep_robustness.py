"""Bad clips, interrupted runs, missing inputs: what a long preparation meets in practice."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep import ave, cremad, custom, kinetics_sounds, synth, vggsound
from data_prep.store import UserError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--frame-size", "32", "--workers", "0"]
ARRAYS = ("audio", "labels", "ids", "n_frames", "frames", "done")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("cremad_raw")
    synth.make_cremad(root, n_actors=4, n_clips=24)
    return root


def arrays(out):
    return {(s, k): np.load(out / s / f"{k}.npy") for s in ("train", "val", "test") for k in ARRAYS}


def test_corrupt_and_missing_clips_are_skipped_and_listed(raw, tmp_path):
    bad = tmp_path / "raw"
    (bad / "AudioWAV").mkdir(parents=True)
    (bad / "VideoFlash").mkdir()
    for f in (raw / "AudioWAV").iterdir():
        (bad / "AudioWAV" / f.name).symlink_to(f)
    for f in (raw / "VideoFlash").iterdir():
        (bad / "VideoFlash" / f.name).symlink_to(f)
    for name in ("train.csv", "test.csv"):
        (bad / name).write_bytes((raw / name).read_bytes())
    ids = [c for c, _ in cremad.read_split_list(raw / "test.csv")]
    (bad / "VideoFlash" / f"{ids[0]}.flv").unlink()
    (bad / "VideoFlash" / f"{ids[0]}.flv").write_bytes(b"FLV\x01 this is not a video" * 10)
    (bad / "AudioWAV" / f"{ids[1]}.wav").unlink()
    (bad / "AudioWAV" / f"{ids[1]}.wav").write_bytes(b"RIFF garbage")
    (bad / "AudioWAV" / f"{ids[2]}.wav").unlink()
    out = tmp_path / "out"
    cremad.main(["--raw", str(bad), "--out", str(out), "--frame-size", "32", "--workers", "2"])
    split = json.loads((out / "manifest.json").read_text())["splits"]["test"]
    skipped = dict(split["skipped"])
    assert set(skipped) == set(ids[:3]) and split["written"] == len(ids) - 3
    assert skipped[ids[0]].startswith("cannot open video") and ids[0] in skipped[ids[0]]
    assert "Invalid data" in skipped[ids[1]] and ids[1] in skipped[ids[1]]
    assert f"missing AudioWAV/{ids[2]}.wav" == skipped[ids[2]]
    assert all("\n" not in r for r in skipped.values())
    labels = np.load(out / "test" / "labels.npy")
    assert (labels[:3] == -1).all() and (labels[3:] >= 0).all()


def test_interrupted_run_resumes_to_the_same_result(raw, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    cremad.main(["--raw", str(raw), "--out", str(full), *SMALL])
    cremad.main(["--raw", str(raw), "--out", str(resumed), "--limit", "5", *SMALL])
    assert not (resumed / "manifest.json").exists()            # not prepared yet
    assert np.load(resumed / "train" / "done.npy").sum() == 5
    cremad.main(["--raw", str(raw), "--out", str(resumed), "--limit", "100", *SMALL])
    a, b = arrays(full), arrays(resumed)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (full, resumed))
    assert ma["splits"] == mb["splits"]                          # counts, skipped list and checksums


def test_resume_with_other_parameters_is_refused(raw, tmp_path):
    out = tmp_path / "out"
    cremad.main(["--raw", str(raw), "--out", str(out), "--limit", "2", *SMALL])
    with pytest.raises(UserError, match=r"other parameters \(audio"):
        cremad.main(["--raw", str(raw), "--out", str(out), "--audio-recipe", "fbank", *SMALL])


CRASH_SCRIPT = """
import multiprocessing, os, sys
from data_prep import cremad, runner
victim, raw, out = sys.argv[1:4]
real = runner.prepare_clip
def crashing(clip, recipe, frames):
    if clip.clip_id == victim:
        os._exit(1)                     # what a decoder segfault looks like to the pool
    return real(clip, recipe, frames)
runner.prepare_clip = crashing
# plain fork so the workers inherit the patch; safe here: this fresh process has started no thread pools
runner.Runner._context = staticmethod(lambda: multiprocessing.get_context("fork"))
cremad.main(["--raw", raw, "--out", out, "--frame-size", "32", "--workers", "2"])
"""


@pytest.mark.slow  # ~15 s; keeps make test under 5 minutes on 2 cores
@pytest.mark.skipif(sys.platform != "linux", reason="the crash script forks its workers (Linux)")
def test_a_clip_that_kills_its_worker_is_isolated_and_skipped(raw, tmp_path):
    victim = cremad.read_split_list(raw / "test.csv")[1][0]
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", CRASH_SCRIPT, victim, str(raw), str(out)], cwd=root, check=True,
                   timeout=300, capture_output=True)
    split = json.loads((out / "manifest.json").read_text())["splits"]["test"]
    assert split["skipped"] == [[victim, "the decoder crashed its worker process on this clip"]]
    assert split["written"] == split["n"] - 1


@pytest.mark.parametrize("module,argv,message", [
    (cremad, ["--raw", "{t}/nowhere"], "CREMA-D raw folder not found: expected {t}/nowhere"),
    (cremad, ["--raw", "{t}"], "CREMA-D audio folder not found: expected {t}/AudioWAV"),
    (kinetics_sounds, ["--raw", "{t}"], "no video files (.mp4 .mkv .webm .avi .mov .flv .m4v) found under {t}"),
    (kinetics_sounds, ["--raw", "{t}", "--splits", "{t}/lists"],
     "Kinetics-Sounds train list not found: expected {t}/lists/my_train.txt"),
    (vggsound, ["--raw", "{t}"], "VGGSound video folder not found: expected {t}/video"),
    (ave, ["--raw", "{t}"], "AVE video folder not found: expected {t}/AVE"),
    (custom, ["--manifest", "{t}/clips.csv"], "custom manifest CSV not found: expected {t}/clips.csv"),
])
def test_missing_inputs_name_what_was_expected_where(tmp_path, module, argv, message):
    argv = [a.format(t=tmp_path) for a in argv]
    with pytest.raises(UserError) as e:
        module.main([*argv, "--out", str(tmp_path / "out")])
    assert str(e.value).startswith(message.format(t=tmp_path)) and "\n" not in str(e.value)


def test_missing_split_list(raw, tmp_path):
    with pytest.raises(UserError, match=r"CREMA-D train list not found: expected .*nowhere/train\.csv"):
        cremad.main(["--raw", str(raw), "--splits", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])


def test_bad_list_line_names_file_and_line(tmp_path):
    (tmp_path / "my_train.txt").write_text("abc,10,3\nnot a valid line\n")
    (tmp_path / "my_test.txt").write_text("abc,10,3\n")
    with pytest.raises(UserError, match=r"my_train\.txt line 2: expected `video_id,10,label_index`"):
        kinetics_sounds.main(["--raw", str(tmp_path), "--out", str(tmp_path / "o")])


def test_cli_prints_one_line_and_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "data_prep.ave", "--raw", str(tmp_path / "nowhere"), "--out",
                        str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr == f"error: AVE raw folder not found: expected {tmp_path / 'nowhere'}\n"


def test_non_finite_features_are_skipped_not_fatal(tmp_path):
    (tmp_path / "m").mkdir()
    lines = ["clip_id,label,split,audio,visual"]
    for k in range(3):
        np.save(tmp_path / "m" / f"a{k}.npy", np.full((4, 5), np.nan if k == 1 else 0.5, np.float32))
        np.save(tmp_path / "m" / f"v{k}.npy", np.zeros((1, 16, 16, 3), np.uint8))
        lines.append(f"k{k},x,train,m/a{k}.npy,m/v{k}.npy")
    (tmp_path / "clips.csv").write_text("\n".join(lines) + "\n")
    custom.main(["--manifest", str(tmp_path / "clips.csv"), "--out", str(tmp_path / "out"), *SMALL])
    split = json.loads((tmp_path / "out" / "manifest.json").read_text())["splits"]["train"]
    assert split["written"] == 2 and split["skipped"][0][0] == "k1" and "non-finite" in split["skipped"][0][1]


def test_workers_that_cannot_start_are_reported_not_blamed_on_clips(raw, tmp_path):
    # a script without a __main__ guard: the fork server re-imports it and no worker ever starts
    script = tmp_path / "unguarded.py"
    script.write_text("from data_prep import cremad\n"
                      f"cremad.main(['--raw', {str(raw)!r}, '--out', {str(tmp_path / 'out')!r}, '--frame-size', '32', '--workers', '2'])\n")
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert p.returncode != 0
    assert "worker processes cannot start" in p.stderr and "__main__" in p.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()
