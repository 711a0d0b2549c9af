"""speed.async_checkpoint: checkpoints copied to the host when saved and written by a background
thread, in order; flushed before anything reads them; the same files as written in line."""
import threading

import pytest
import torch

from avbalance.rundir import CheckpointWriter, load_checkpoint
from avbalance.trainer import train

from conftest import TIMINGS, make_cfg


def test_the_file_holds_the_state_as_it_was_when_saved(tmp_path):
    w = CheckpointWriter()
    t = torch.arange(6.0)
    state = {"model": {"w": t}, "opt": [{"m": t * 2}], "epoch": 3, "name": "x"}
    gate = threading.Event()
    w.pool.submit(gate.wait)  # hold the writer thread: the save below is queued, not written
    w.save(tmp_path / "a.pt", state)
    t.add_(100)  # training goes on changing the tensors
    assert not (tmp_path / "a.pt").exists()
    gate.set()
    w.flush()
    got = load_checkpoint(tmp_path / "a.pt")
    assert torch.equal(got["model"]["w"], torch.arange(6.0)) and torch.equal(got["opt"][0]["m"], 2 * torch.arange(6.0))
    assert got["epoch"] == 3 and got["name"] == "x" and w.pending == []


def test_the_host_copy_keeps_every_container_type():
    from collections import OrderedDict, namedtuple
    from avbalance.rundir import _host_copy
    Pair = namedtuple("Pair", "a b")
    sd = OrderedDict(w=torch.ones(2))
    sd._metadata = {"": {"version": 2}}
    obj = {"sd": sd, "pair": Pair(torch.zeros(1), 3), "t": (torch.ones(1), "x"), "l": [torch.ones(1), None]}
    got = _host_copy(obj)
    assert type(got["sd"]) is OrderedDict and got["sd"]._metadata == {"": {"version": 2}}
    assert type(got["pair"]) is Pair and got["pair"].b == 3 and type(got["t"]) is tuple and got["l"][1] is None
    assert got["sd"]["w"] is not sd["w"] and torch.equal(got["sd"]["w"], sd["w"])


def test_writes_land_in_the_order_saved(tmp_path):
    w = CheckpointWriter()
    for k in range(5):
        w.save(tmp_path / "last.pt", {"epoch": k, "x": torch.full((1000,), float(k))})
    w.flush()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 4
    assert not list(tmp_path.glob("*.tmp"))


def test_a_failed_write_is_raised_by_the_next_save_or_flush(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    w = CheckpointWriter()
    w.save(tmp_path / "file" / "ckpt" / "a.pt", {"x": torch.zeros(1)})  # its folder cannot be made
    with pytest.raises(OSError):
        w.flush()
    w.save(tmp_path / "file" / "ckpt" / "b.pt", {"x": torch.zeros(1)})
    w.pending[0].exception()  # wait for it to fail
    with pytest.raises(OSError):
        w.save(tmp_path / "ok.pt", {"x": torch.zeros(1)})


def test_in_line_writes_when_not_in_the_background(tmp_path):
    w = CheckpointWriter(background=False)
    w.save(tmp_path / "a.pt", {"x": torch.ones(2)})
    assert w.pool is None and w.pending == [] and torch.equal(load_checkpoint(tmp_path / "a.pt")["x"], torch.ones(2))


def test_a_run_leaves_the_same_checkpoints_and_summary_either_way(tmp_path):
    runs = {}
    for flag in ("false", "true"):
        runs[flag] = train(make_cfg("modulation=ogm_ge", "epochs=3", "ckpt_every=2", f"speed.async_checkpoint={flag}"),
                           tmp_path / flag)
        for k in TIMINGS:
            runs[flag]["last"].pop(k)
    assert runs["false"] == runs["true"]
    for name in ("best.pt", "last.pt"):
        a, b = (load_checkpoint(tmp_path / f / "ckpt" / name) for f in ("false", "true"))
        assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert b["model"]._metadata == a["model"]._metadata  # module versions, which load_state_dict reads
        assert (tmp_path / "false" / "ckpt" / name).stat().st_size == (tmp_path / "true" / "ckpt" / name).stat().st_size
    last = load_checkpoint(tmp_path / "true" / "ckpt" / "last.pt")
    assert last["epoch"] == 2 and "optimizer" in last  # ckpt_every=2 and the last epoch


def test_a_resumed_run_reads_what_the_background_wrote(tmp_path):
    """The callbacks see the epoch's files (flushed before them); a run stopped there resumes from them."""
    class Stop(Exception):
        pass

    def stop_after_1(epoch, row):
        assert (tmp_path / "run" / "ckpt" / "last.pt").exists()
        if epoch == 1:
            raise Stop
    with pytest.raises(Stop):
        train(make_cfg("modulation=ogm_ge", "epochs=3"), tmp_path / "run", callbacks=[stop_after_1])
    assert load_checkpoint(tmp_path / "run" / "ckpt" / "last.pt")["epoch"] == 1
    resumed = train(make_cfg("modulation=ogm_ge", "epochs=3", "resume=true"), tmp_path / "run")
    whole = train(make_cfg("modulation=ogm_ge", "epochs=3"), tmp_path / "whole")
    for r in (resumed, whole):
        for k in TIMINGS:
            r["last"].pop(k)
    assert resumed["last"] == whole["last"]


def test_the_checkpoint_benchmark_runs_tiny():
    import bench_checkpoint  # scripts/ is on pytest's path (pyproject.toml)
    res = bench_checkpoint.main(["--shape", "tiny", "--device", "cpu", "--repeats", "2"])
    assert set(res) == {"in line", "background"} and res["in line"]["bytes"] == res["background"]["bytes"] > 0
    assert all(r["written_s"] >= r["blocked_s"] > 0 for r in res.values())
