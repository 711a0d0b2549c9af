"""The custom manifest's errors: one line each, naming the file, the line and what is expected."""
import numpy as np
import pytest

from data_prep import custom
from data_prep.store import UserError


def write(tmp_path, header, rows):
    (tmp_path / "m").mkdir(exist_ok=True)
    for k in range(3):
        np.save(tmp_path / "m" / f"a{k}.npy", np.ones((4, 5), np.float32))
        np.save(tmp_path / "m" / f"v{k}.npy", np.zeros((1, 8, 8, 3), np.uint8))
        (tmp_path / "m" / f"a{k}.wav").write_bytes(b"")
    path = tmp_path / "clips.csv"
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


@pytest.mark.parametrize("header, rows, expected", [
    ("clip_id,label,split,audio", ["k0,0,train,m/a0.npy"],
     "header must name the columns clip_id,label,split,audio,visual (missing visual)"),
    ("id,label,split,audio,visual", ["k0,0,train,m/a0.npy,m/v0.npy"], "(missing clip_id)"),
    ("clip_id,label,split,audio,visual", ["k0,0,train,m/a0.npy,m/v0.npy", "k0,1,train,m/a1.npy,m/v1.npy"],
     "line 3: clip_id 'k0' appears twice in split train"),
    ("clip_id,label,split,audio,visual", ["k0,0,train,m/a0.npy,m/v0.npy", "k1,1,train,m/a1.wav,m/v1.npy"],
     "audio mixes .npy features and audio files; use one kind for all rows"),
    ("clip_id,label,split,audio,visual", ["k0,,train,m/a0.npy,m/v0.npy"], "line 2: empty label"),
    ("clip_id,label,split,audio,visual", ["k0,0,train/a,m/a0.npy,m/v0.npy"], "line 2: split must be a simple name"),
    ("clip_id,label,split,audio,visual", [], "lists no clips"),
])
def test_bad_manifests_are_one_line_errors(tmp_path, header, rows, expected):
    path = write(tmp_path, header, rows)
    with pytest.raises(UserError) as e:
        custom.main(["--manifest", str(path), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_the_same_clip_id_in_two_splits_is_allowed(tmp_path):
    path = write(tmp_path, "clip_id,label,split,audio,visual",
                 ["k0,0,train,m/a0.npy,m/v0.npy", "k0,1,val,m/a1.npy,m/v1.npy", "k2,1,test,m/a2.npy,m/v2.npy"])
    custom.main(["--manifest", str(path), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert (tmp_path / "out" / "manifest.json").exists()
