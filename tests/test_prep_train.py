"""Each raw layout goes through prepare, load and one training epoch of the real entrypoint code."""
import json

import pytest

from data_prep import ave, cremad, custom, kinetics_sounds, synth, vggsound
from avbalance.trainer import train
from conftest import make_cfg

SMALL = ["--frame-size", "32", "--workers", "0"]


def _prepare(name, raw, out):
    if name == "cremad":
        synth.make_cremad(raw, n_actors=10, n_clips=40)
        cremad.main(["--raw", str(raw), "--out", str(out), *SMALL])
    elif name == "ave":
        synth.make_ave(raw)
        ave.main(["--raw", str(raw), "--out", str(out), *SMALL])
    elif name == "kinetics_sounds":
        synth.make_kinetics_sounds(raw)
        kinetics_sounds.main(["--raw", str(raw), "--out", str(out), "--val-fraction", "0.3", *SMALL])
    elif name == "vggsound":
        synth.make_vggsound(raw)
        vggsound.main(["--raw", str(raw), "--out", str(out), "--jpeg", *SMALL])
    else:
        custom.main(["--manifest", str(synth.make_custom(raw)), "--out", str(out), *SMALL])


@pytest.mark.parametrize("name", ["cremad", "ave", "kinetics_sounds", "vggsound", "custom"])
def test_prepare_load_and_train(tmp_path, name):
    out = tmp_path / "data" / name
    _prepare(name, tmp_path / "raw", out)
    classes = len(json.loads((out / "manifest.json").read_text())["class_names"])
    # the dataset's own config (recipe shapes, frames, crops), with a tiny model and small images
    cfg = make_cfg(f"dataset={name}", f"dataset.root={out}", "dataset.num_classes=null", "dataset.image_size=24",
                   "model=tiny", "model.width=4", "epochs=1", "batch_size=4", "device=cpu", "modulation=ogm_ge",
                   tiny=False)
    summary = train(cfg, tmp_path / "run")
    assert summary["selection_split"] == "val" and 0.0 <= summary["best"]["val/acc"] <= 1.0
    assert "test/acc" in summary
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert row["epoch"] == 0 and row["samples_per_second"] > 0
    assert classes >= 2
