"""What a preparation refuses: a split that ends up empty, and a re-run with other parameters."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep import ave, cremad, synth
from data_prep.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--frame-size", "32", "--workers", "0"]


def cli_error(main, argv, capsys) -> str:
    """Run a CLI in this process as the shell would: exit status 2 and exactly one `error:` line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main(argv))
    assert e.value.code == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1
    return errors[0]


# ----------------------------------------------------------------------------- A: an empty split fails

def test_videos_without_audio_fail_with_the_fix_and_no_manifest(tmp_path):
    raw, wavs, out = tmp_path / "raw", tmp_path / "wavs", tmp_path / "out"
    synth.make_ave(raw, per_split=(2, 1, 1), audio_dir=wavs)          # video-only mp4s, wavs elsewhere
    r = subprocess.run([sys.executable, "-m", "data_prep.ave", "--raw", str(raw), "--out", str(out), *SMALL],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ave split 'train' has no usable clip, all 2 were skipped (2 x no audio track in")
    assert "--audio-dir" in err.split("expected")[1] and str(raw) not in err    # counted without the paths
    assert not (out / "manifest.json").exists() and not (out / "train").exists()
    # the fix the message names: the same command with --audio-dir resumes and finishes
    ave.main(["--raw", str(raw), "--out", str(out), "--audio-dir", str(wavs), *SMALL])
    m = json.loads((out / "manifest.json").read_text())
    assert {s: v["written"] for s, v in m["splits"].items()} == {"train": 2, "val": 1, "test": 1}


def test_every_clip_missing_names_the_raw_layout(tmp_path, capsys):
    raw = tmp_path / "raw"
    synth.make_ave(raw, per_split=(2, 1, 1))
    for f in (raw / "AVE").glob("*.mp4"):
        f.unlink()
    err = cli_error(ave.main, ["--raw", str(raw), "--out", str(tmp_path / "out"), *SMALL], capsys)
    assert "split 'train'" in err and "2 x missing AVE/<id>.mp4" in err and "check --raw" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


# ----------------------------------------------------------------------------- B: other parameters need --overwrite

@pytest.fixture(scope="module")
def cremad_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("cremad_raw")
    synth.make_cremad(root, n_actors=10, n_clips=20)
    return root


@pytest.mark.parametrize("change,named", [(["--val-fraction", "0.5"], "val_fraction: 0.1 -> 0.5"),
                                          (["--frame-size", "40"], "frames.hw: [32, 32] -> [40, 40]"),
                                          (["--split-mode", "speaker_independent"], "split_mode")])
def test_rerun_with_other_parameters_is_refused_unless_overwrite(cremad_raw, tmp_path, capsys, change, named):
    out = tmp_path / "out"
    argv = ["--raw", str(cremad_raw), "--out", str(out), *SMALL]
    cremad.main(argv)
    (out / "notes.txt").write_text("mine")
    err = cli_error(cremad.main, [*argv, *change], capsys)
    assert named in err and "--overwrite" in err
    cremad.main(argv)                                                  # identical parameters: accepted
    cremad.main([*argv, *change, "--overwrite"])
    params = json.loads((out / "manifest.json").read_text())["params"]
    assert params == json.loads((out / "params.json").read_text())
    assert {"--val-fraction": params["val_fraction"] == 0.5, "--frame-size": params["frames"]["hw"] == [40, 40],
            "--split-mode": params["split_mode"] == "speaker_independent"}[change[0]]
    assert (out / "notes.txt").read_text() == "mine"                    # --overwrite deletes only the preparation


def test_unfinished_run_with_other_parameters_is_refused(cremad_raw, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--raw", str(cremad_raw), "--out", str(out), *SMALL]
    cremad.main([*argv, "--limit", "3"])
    assert "seed: 0 -> 1" in cli_error(cremad.main, [*argv, "--seed", "1"], capsys)
    cremad.main([*argv, "--seed", "1", "--overwrite"])
    assert json.loads((out / "manifest.json").read_text())["params"]["seed"] == 1
