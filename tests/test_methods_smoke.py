"""Every registered method trains with every fusion it supports (one tiny epoch), writes the trace
it declares, logs only `mod/` keys it declares, and resumes. Methods come from the registry:
a new method is tested here without a line added. One fusion per method runs in the fast suite."""
import json

import pytest

from avbalance.config import validate
from avbalance.errors import ConfigError
from avbalance.registry import FUSIONS, METHODS
from avbalance.trainer import train

from conftest import make_cfg

FAST_FUSION = "concat"


def cells(fast: bool):
    for name in METHODS.names():
        supported = METHODS.get(name).fusions or FUSIONS.names()
        for fusion in FUSIONS.names():
            if fusion in supported and (fusion == (FAST_FUSION if FAST_FUSION in supported else supported[0])) == fast:
                yield name, fusion


def check_run(name, fusion, run_dir):
    overrides = [f"modulation={name}", f"fusion={fusion}", "dataset.n_train=96"]
    if "start_epoch" in make_cfg(*overrides).modulation:  # a windowed method acts from the first step
        overrides.append("modulation.start_epoch=0")
    cfg = make_cfg(*overrides, "epochs=1")
    validate(cfg)
    summary = train(cfg, run_dir)
    method = METHODS.get(name)
    assert summary["status"] == "ok"
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    logged = {k[: -len("_mean")] for k in row if k.startswith("mod/")}
    assert logged == set(method.trace), f"{name}: logs {sorted(logged)}, declares {sorted(method.trace)}"
    assert all(key in method.trace for key in method.brief.values())
    lines = (run_dir / "steps.csv").read_text().splitlines()
    assert lines[0] == ",".join(["epoch", "step"] + [k.removeprefix("mod/") for k in method.trace])
    assert len(lines) == 1 + 2 and all(len(ln.split(",")) == 2 + len(method.trace) for ln in lines[1:])  # 2 steps
    # one more epoch from the checkpoint: the method's state round-trips
    train(make_cfg(*overrides, "epochs=2", "resume=true"), run_dir)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("name, fusion", list(cells(fast=True)))
def test_every_method_trains_and_resumes(name, fusion, tmp_path):
    check_run(name, fusion, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name, fusion", list(cells(fast=False)))
def test_every_method_trains_with_every_fusion_it_supports(name, fusion, tmp_path):
    check_run(name, fusion, tmp_path)


def test_an_unsupported_fusion_is_a_one_line_error(monkeypatch):
    from avbalance.methods.base import Method
    METHODS.names()

    class ConcatOnly(Method):
        fusions = ("concat",)
    monkeypatch.setitem(METHODS._entries, "none", ConcatOnly)
    validate(make_cfg("modulation=none", "fusion=concat"))
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("modulation=none", "fusion=gated"))
    assert str(info.value) == "fusion=gated is not supported by modulation=none; expected one of ['concat']"
