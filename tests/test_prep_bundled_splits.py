"""The split lists bundled in data_prep/splits: found from the project (never ../shared), used when
neither --splits nor the raw folder gives lists, and named on stderr."""
import json
from pathlib import Path

import pytest

from data_prep import ave, cremad, kinetics_sounds, synth
from data_prep.common import BUNDLED_SPLITS

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--frame-size", "32", "--workers", "0"]
NEEDED = {"cremad": ["train.csv", "test.csv"], "ave": list(ave.LISTS.values()),
          "kinetics_sounds": ["my_train.txt", "my_test.txt"], "vggsound": ["stat.csv", "test.csv", "LICENCE.txt"]}


def test_bundled_lists_are_in_the_project_with_their_provenance():
    assert BUNDLED_SPLITS == ROOT / "data_prep" / "splits"
    assert (BUNDLED_SPLITS / "README.md").is_file()
    for dataset, names in NEEDED.items():
        for name in ["SOURCE.md", *names]:
            assert (BUNDLED_SPLITS / dataset / name).is_file(), f"{dataset}/{name}"


@pytest.fixture(scope="module")
def picked():
    """Two clips of each reference split (val = the seeded 10% of the train actors)."""
    lists = {s: cremad.read_split_list(BUNDLED_SPLITS / "cremad" / f"{s}.csv") for s in ("train", "test")}
    rows = cremad.reference_splits(lists, 0.1, seed=0)
    return {s: [c for c, _ in r[:2]] for s, r in rows.items()}


def test_cremad_without_splits_uses_the_bundled_lists(picked, tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    synth.make_cremad(raw, ids=[c for ids in picked.values() for c in ids], lists=False, seconds=1.0)
    cremad.main(["--raw", str(raw), "--out", str(out), *SMALL])
    assert f"split lists: {BUNDLED_SPLITS / 'cremad'} (bundled with the project)" in capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"]["splits"] == str(BUNDLED_SPLITS / "cremad")
    assert {s: v["written"] for s, v in m["splits"].items()} == {"train": 2, "val": 2, "test": 2}
    assert sum(v["n"] for v in m["splits"].values()) == 7442          # the rest of the list: missing, skipped
    assert m["splits"]["test"]["skipped"][0][1].startswith("missing AudioWAV/")


def test_lists_in_the_raw_folder_win_over_the_bundled_ones_and_splits_over_both(tmp_path, capsys):
    raw = tmp_path / "raw"
    synth.make_kinetics_sounds(raw, n_train=6, n_test=3)
    kinetics_sounds.main(["--raw", str(raw), "--out", str(tmp_path / "a"), "--val-fraction", "0.3", *SMALL])
    assert f"split lists: {raw}\n" in capsys.readouterr().err
    other = tmp_path / "lists"
    other.mkdir()
    for name in ("my_train.txt", "my_test.txt"):
        (other / name).write_bytes((raw / name).read_bytes())
    kinetics_sounds.main(["--raw", str(raw), "--splits", str(other), "--out", str(tmp_path / "b"),
                          "--val-fraction", "0.3", *SMALL])
    assert f"split lists: {other}\n" in capsys.readouterr().err


def test_speaker_independent_without_lists_takes_every_wav_not_the_bundled_lists(tmp_path, capsys):
    raw = tmp_path / "raw"
    ids = synth.make_cremad(raw, n_actors=10, n_clips=20, lists=False, seconds=1.0)
    cremad.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--split-mode", "speaker_independent", *SMALL])
    assert "split lists:" not in capsys.readouterr().err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum(v["written"] for v in m["splits"].values()) == len(ids)
