"""Multi-process training (DDP) and the sweep launchers.

Fast: each process's share of the batches, the refusals, the launcher configs. Slow: `torchrun
--nproc_per_node=2` on the CPU (gloo) through train.py, compared with one process on the same
global batches: OGM-GE's coefficients, the replicas' weights, the gathered test predictions, the
run directory, and a resume; a joblib-launched sweep."""
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from avbalance import distributed, schema
from avbalance.data.base import rank_batches
from avbalance.data.prepared import PreparedData
from avbalance.data.toy import ToyData
from avbalance.errors import ConfigError
from avbalance.registry import METHODS
import avbalance.trainer as trainer_module
from avbalance.logger import NoLogger
from avbalance.trainer import check_ddp, train

from conftest import CONFIG_DIR, ROOT, make_cfg
from test_prepared_loader import cfg as prepared_cfg, make_dataset


# --- each process's share ------------------------------------------------------------------------
@pytest.mark.parametrize("n,bs,world", [(100, 16, 2), (10, 4, 3), (65, 64, 2), (7, 8, 4), (64, 16, 4), (5, 3, 3)])
def test_rank_batches_cover_every_row_once_and_rebuild_the_one_process_batches(n, bs, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    one = rank_batches(order, bs)
    assert [len(b) for b in one] == [min(bs, n - s) for s in range(0, n, bs)]  # world 1: the reference's batches
    shares = [rank_batches(order, bs, r, world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # every process takes the same number of steps
    seen = torch.cat([b for s in shares for b in s])
    assert sorted(seen.tolist()) == list(range(n))  # each row once per epoch
    for k in range(len(shares[0])):
        assert all(len(s[k]) > 0 for s in shares)  # no process gets an empty batch
        merged = set(torch.cat([s[k] for s in shares]).tolist())
        if k < len(shares[0]) - 1:  # the global batch k is the one-process batch k
            assert merged == set(one[k].tolist())
    sizes = [len(s[k]) for s in shares for k in range(len(s))]
    assert max(sizes) <= -(-bs // world) + world  # a share is about batch/world (the last may hold the tail)


def test_rank_batches_fold_a_tail_smaller_than_the_processes_into_the_batch_before():
    order = np.arange(9)  # batches 4, 4, 1: the 1-row tail cannot be shared by 2 processes
    assert [b.tolist() for b in rank_batches(order, 4, 0, 2)] == [[0, 2], [4, 6, 8]]
    assert [b.tolist() for b in rank_batches(order, 4, 1, 2)] == [[1, 3], [5, 7]]
    assert [b.tolist() for b in rank_batches(order, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]


def test_toy_and_prepared_data_give_each_process_its_share(tmp_path):
    cfg = make_cfg("dataset.n_train=50")
    kw = dict(seed=3, batch_size=8, device=torch.device("cpu"))
    one = [b.index for b in ToyData(cfg.dataset, **kw).train_batches(0)]
    parts = [[b.index for b in ToyData(cfg.dataset, rank=r, world=2, **kw).train_batches(0)] for r in range(2)]
    assert [torch.cat([p[k] for p in parts]).sort().values.tolist() for k in range(len(one))] == \
           [b.sort().values.tolist() for b in one]
    assert len(torch.cat(parts[0])) == 25 and not set(torch.cat(parts[0]).tolist()) & set(torch.cat(parts[1]).tolist())

    root = make_dataset(tmp_path / "data", splits=(("train", 21), ("test", 5)), skip=())
    one = [b.index for b in PreparedData(prepared_cfg(root), seed=1, batch_size=6).train_batches(0)]
    parts = [[b.index for b in PreparedData(prepared_cfg(root), seed=1, batch_size=6, rank=r, world=2).train_batches(0)]
             for r in range(2)]
    assert [torch.cat([p[k] for p in parts]).sort().values.tolist() for k in range(len(one))] == \
           [b.sort().values.tolist() for b in one]


# --- refusals --------------------------------------------------------------------------------------
class _Data:
    def __init__(self, n):
        self.n = n

    def num_rows(self, split):
        return self.n if split == "train" else 0


TWO = distributed.Env(rank=0, world=2)


def test_ddp_refuses_a_method_whose_own_backward_bypasses_the_gradient_all_reduce():
    with pytest.raises(ConfigError) as e:
        check_ddp(make_cfg("modulation=mmpareto"), TWO, torch.device("cpu"), _Data(100))
    ok = " | ".join(m for m in METHODS.names() if m not in ("mmpareto", "umt"))
    assert str(e.value) == (f"modulation=mmpareto does not support multi-process training (2 processes); "
                            f"expected one process or modulation={ok}")
    check_ddp(make_cfg("modulation=ogm_ge"), TWO, torch.device("cpu"), _Data(100))  # accepted


def test_ddp_refuses_sync_batchnorm_without_cuda_and_fewer_rows_than_processes():
    with pytest.raises(ConfigError, match=r"^ddp.sync_batchnorm=true needs CUDA devices \(SyncBatchNorm has no CPU kernel\); "
                                          r"set ddp.sync_batchnorm=false$"):
        check_ddp(make_cfg("ddp.sync_batchnorm=true"), TWO, torch.device("cpu"), _Data(100))
    check_ddp(make_cfg("ddp.sync_batchnorm=true"), TWO, torch.device("cuda"), _Data(100))  # a device name: no GPU needed
    with pytest.raises(ConfigError, match=r"^dataset 'toy': 1 train rows for 2 processes; expected at least one row per process$"):
        check_ddp(make_cfg(), TWO, torch.device("cpu"), _Data(1))
    with pytest.raises(ConfigError, match=r"^batch_size=1 is the global batch, shared by 2 processes; expected batch_size >= 2$"):
        check_ddp(make_cfg("batch_size=1"), TWO, torch.device("cpu"), _Data(100))
    check_ddp(make_cfg("batch_size=2"), TWO, torch.device("cpu"), _Data(2))  # one sample and one row per process: enough


def test_single_process_helpers_are_identities():
    x = torch.tensor([1.0, 2.0])
    assert not distributed.active()
    assert distributed.all_sum(x) is x and distributed.all_mean(x) is x and distributed.gather(5) == [5]
    assert distributed.broadcast("a") == "a" and distributed.env() == distributed.Env(0, 1, 0)


def test_one_process_on_a_numbered_gpu_makes_it_the_current_device(monkeypatch):
    """device=cuda:N: streams, CUDA graphs and the pin thread follow the current device (GPU 0 otherwise)."""
    made_current = []
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    gpu1 = torch.device("cuda", 1)
    assert distributed.setup(gpu1) == (distributed.Env(0, 1, 0), gpu1) and made_current == [gpu1]
    distributed.setup(torch.device("cuda"))  # the current one already
    distributed.setup(torch.device("cpu"))
    assert made_current == [gpu1] and not distributed.active()


# --- launcher configs ------------------------------------------------------------------------------
def hydra_cfg(*overrides):
    schema.register()
    with initialize_config_dir(version_base=None, config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=list(overrides), return_hydra_config=True).hydra


def test_a_slurm_task_knows_its_rank_before_the_process_group_and_keeps_a_sites_master_port(monkeypatch):
    import submitit.helpers

    class Job:  # what submitit reads from SLURM_* for task 1 of 2 on one node
        master_addr, master_port, rank, world_size, local_rank, local_world_size = "node7", 29511, 1, 2, 1, 2
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.setenv(k, "-")  # recorded, so that what the code exports is removed after the test
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("MASTER_PORT", "40000")  # set by the site's job script
    monkeypatch.setenv("MASTER_ADDR", "login1")  # exported by the shell that submitted the job
    monkeypatch.setattr(submitit.helpers, "TorchDistributedEnvironment", Job)
    assert distributed.env() == distributed.Env(rank=1, world=2, local_rank=1)  # before any setup(): not rank 0
    assert os.environ["MASTER_PORT"] == "40000" and os.environ["MASTER_ADDR"] == "node7"


def test_slurm_launcher_config_composes_with_one_task_per_gpu():
    launcher = hydra_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4").launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == ("gpu", 4, 4, 1)
    assert list(launcher.setup) == ["export SLURM_KILL_BAD_EXIT=1"]  # srun ends the job's tasks when one fails


def test_pack_launcher_config_is_joblib():
    launcher = hydra_cfg("hydra/launcher=pack", "hydra.launcher.n_jobs=3").launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 3


# --- two processes on the CPU ----------------------------------------------------------------------
RUN = ["dataset.n_train=100", "dataset.n_val=32", "dataset.n_test=33", "dataset.spec_shape=[16,12]",
       "dataset.image_size=12", "model.width=4", "model.norm=none", "batch_size=16", "device=cpu",
       "modulation=ogm_ge", "modulation.alpha=0.5"]  # no BatchNorm: a sample's output does not depend on its batch


def torchrun(cwd: Path, dump: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_worker.py"), str(dump), *args]
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def steps(run: Path) -> np.ndarray:
    return np.loadtxt(run / "steps.csv", delimiter=",", skiprows=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    work = base / "cwd"
    work.mkdir()
    ddp = torchrun(work, base / "dump", *RUN, "epochs=2", f"hydra.run.dir={base / 'ddp'}")
    torchrun(work, base / "dump_r1", *RUN, "epochs=1", f"hydra.run.dir={base / 'resumed'}")
    torchrun(work, base / "dump_r", "resume=true", f"hydra.run.dir={base / 'resumed'}", "epochs=2")
    one = train(make_cfg(*RUN, "epochs=2", tiny=False), base / "one")
    return {"base": base, "work": work, "stderr": ddp.stderr, "one_summary": one}


@pytest.mark.slow
def test_two_processes_give_the_one_process_coefficients(runs):
    two, one = steps(runs["base"] / "ddp"), steps(runs["base"] / "one")
    assert two.shape == one.shape == (2 * 7, 5)  # 100 rows, global batch 16: 7 steps per epoch
    assert (one[:, 3:] < 1).any()  # OGM damped some step (else equal coefficients say little)
    np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-6)  # ratio, k_audio, k_visual per step


@pytest.mark.slow
def test_each_process_trains_on_its_own_half_and_together_on_every_row_once(runs):
    rows = [torch.load(runs["base"] / "dump" / f"rank{r}.pt")["train_rows"] for r in range(2)]
    for epoch in (0, 1):
        assert len(rows[0][epoch]) == len(rows[1][epoch]) == 50  # 100 rows, 7 global batches of 16 (last 4)
        assert sorted(rows[0][epoch] + rows[1][epoch]) == list(range(100))


@pytest.mark.slow
def test_replicas_stay_identical_with_ge_noise(runs):
    r0, r1 = (torch.load(runs["base"] / "dump" / f"rank{r}.pt") for r in range(2))
    assert r0["world"] == r1["world"] == 2 and {r0["local_rank"], r1["local_rank"]} == {0, 1}
    for k, v in r0["trained"].items():  # after the last epoch's steps, before any reload
        assert torch.equal(v, r1["trained"][k]), k
    last = torch.load(runs["base"] / "ddp" / "ckpt" / "last.pt")["model"]  # rank 0's, written after that
    assert all(torch.equal(last[k], v) for k, v in r0["trained"].items())
    best = torch.load(runs["base"] / "ddp" / "ckpt" / "best.pt")["model"]  # the test reloads the selected weights
    assert all(torch.equal(best[k], v) and torch.equal(r1["state"][k], v) for k, v in r0["state"].items())


@pytest.mark.slow
def test_evaluation_gathers_every_test_sample_once(runs):
    dumps = [torch.load(runs["base"] / "dump" / f"rank{r}.pt") for r in range(2)]
    assert dumps[1]["pred"]["index"].tolist() == list(range(33))  # gathered: every row once, in order
    # each process evaluated its own share of the rows: 33 test rows = 17 + 16, read 4 times (the
    # last checkpoint, the selected one, and once with each input zeroed) -> 4 x share
    assert [d["eval_rows"]["test"] for d in dumps] == [4 * 17, 4 * 16]
    assert [d["eval_rows"]["val"] for d in dumps] == [2 * 16, 2 * 16]  # one pass per epoch
    summary = json.loads((runs["base"] / "ddp" / "summary.json").read_text())
    one = runs["one_summary"]
    assert abs(summary["test/acc"] - one["test/acc"]) <= 1 / 33 + 1e-9  # float noise may flip one near-tie at most


@pytest.mark.slow
def test_only_rank_zero_writes(runs):
    ddp, one = runs["base"] / "ddp", runs["base"] / "one"
    assert sorted(p.name for p in ddp.iterdir() if p.name not in (".hydra",)) == \
           sorted(p.name for p in one.iterdir()) + ["train.log"]
    assert list(runs["work"].iterdir()) == []  # no run directory of another rank beside the real one
    log = (ddp / "train.log").read_text()
    assert log.count("epoch 0 ") == 1 and log.count("epoch 1 ") == 1
    assert json.loads((ddp / "meta.json").read_text())["processes"] == 2
    assert len((ddp / "metrics.jsonl").read_text().splitlines()) == 2
    assert len((ddp / "steps.csv").read_text().splitlines()) == 1 + 2 * 7  # header + one line per step, once


@pytest.mark.slow
def test_resume_under_ddp_continues_the_same_run(runs):
    full, resumed = steps(runs["base"] / "ddp"), steps(runs["base"] / "resumed")
    np.testing.assert_allclose(resumed, full, rtol=1e-6, atol=1e-7)
    a = torch.load(runs["base"] / "dump" / "rank0.pt")["trained"]
    b = torch.load(runs["base"] / "dump_r" / "rank1.pt")["trained"]  # the weights after epoch 1 of each run
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_joblib_launcher_runs_a_two_run_sweep(tmp_path):
    out = tmp_path / "sweep"
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=pack", "seed=0,1", "epochs=1",
                        "dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16", "model.width=4",
                        f"hydra.sweep.dir={out}"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = sorted(out.glob("*/summary.json"))
    assert [json.loads(s.read_text())["seed"] for s in summaries] == [0, 1]
    assert all(json.loads(s.read_text())["status"] == "ok" for s in summaries)
    shutil.rmtree(out)


# --- the multi-process branches of train(), in one process ------------------------------------------
class FakeWorld:
    """Rank `rank` of 2 seen from one process: the collectives behave as if the other process held the
    same values (sums double, means and maxima stay, a gather repeats), and DDP's wrapper is left out,
    so train() runs its multi-process branches in the fast tier. What they write and call is recorded."""

    def __init__(self, monkeypatch, rank: int):
        self.env, self.calls = distributed.Env(rank, 2, 0), []
        record = lambda name, f: lambda *a, **k: (self.calls.append(name), f(*a, **k))[1]  # noqa: E731
        for name, f in {"setup": lambda device, backend="auto": (self.env, device), "active": lambda: True,
                        "env": lambda: self.env, "all_sum": lambda x: x * 2, "all_mean": lambda x: x,
                        "all_max": lambda x: x, "gather": lambda obj: [obj, obj], "broadcast": lambda obj: obj,
                        "broadcast_buffers": lambda model: None, "barrier": lambda: None}.items():
            monkeypatch.setattr(distributed, name, record(name, f))
        monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel",
                            lambda module, **kw: (self.calls.append(("ddp", tuple(sorted(kw.items())))), module)[1])
        rows = self.train_rows = []
        real = ToyData.train_batches

        def counting(data, epoch, device=None, rows_=None):
            for b in real(data, epoch, device, rows_):
                rows.append(b.index.tolist())
                yield b
        monkeypatch.setattr(ToyData, "train_batches", counting)
        level = logging.getLogger("avbalance").level
        monkeypatch.setattr(logging.getLogger("avbalance"), "level", level)  # rank 1 raises it; restored after


FAKE = ("epochs=2", "dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16", "batch_size=16",
        "modulation=ogm_ge", "ddp.find_unused_parameters=true")


def snapshot(run: Path) -> dict:
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_rank_0_of_2_writes_the_run_and_takes_every_multiprocess_branch(tmp_path, monkeypatch):
    world = FakeWorld(monkeypatch, rank=0)
    train(make_cfg(*FAKE), tmp_path / "run")
    files = {str(p) for p in snapshot(tmp_path / "run")}
    assert {"config_resolved.yaml", "meta.json", "metrics.jsonl", "steps.csv", "summary.json", "curves.png",
            "ckpt/last.pt", "ckpt/best.pt"} <= files
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["processes"] == 2
    assert [len(b) for b in world.train_rows] == [8] * 8  # 64 rows, global batch 16: 8 per process, 4 steps x 2 epochs
    assert ("ddp", (("device_ids", None), ("find_unused_parameters", True))) in world.calls
    per_epoch = [c for c in world.calls if c in ("all_max", "broadcast_buffers", "barrier")]
    # then one more barrier: rank 0's checkpoint files are written before any process reads best.pt
    assert per_epoch == ["all_max", "broadcast_buffers", "barrier"] * 2 + ["barrier"]
    assert world.calls.count("broadcast") == 1 and "setup" in world.calls


def test_skip_done_follows_rank_0_on_every_process(tmp_path, monkeypatch):
    """Under torchrun the other ranks' run dir is scratch: rank 0's finished run must skip on them too,
    or they would train alone and wait for rank 0 at the first collective."""
    from avbalance import cli
    world = FakeWorld(monkeypatch, rank=1)
    monkeypatch.setattr(distributed, "broadcast", lambda obj: (world.calls.append(("broadcast", obj)), True)[1])
    trained = []
    monkeypatch.setattr(trainer_module, "train", lambda *a, **k: trained.append(a))
    cfg = make_cfg(*FAKE, "skip_done=true")
    assert cli.run(cfg, tmp_path / "scratch", {}, multirun=True) is None  # no summary here: rank 0's decides
    assert trained == [] and ("broadcast", False) in world.calls and "setup" in world.calls


def test_a_run_failing_in_one_of_several_processes_stops_the_sweep(tmp_path, monkeypatch):
    """Going on to the next run would pair this process's collectives with the others' current run."""
    from avbalance import cli
    FakeWorld(monkeypatch, rank=0)

    def out_of_memory(*a, **k):
        raise RuntimeError("CUDA out of memory")
    monkeypatch.setattr(trainer_module, "train", out_of_memory)
    (tmp_path / "run").mkdir()  # Hydra's run dir
    with pytest.raises(SystemExit) as e:  # not the error itself: Hydra's run_job would catch it and go on
        cli.run(make_cfg(*FAKE), tmp_path / "run", {}, multirun=True)
    assert e.value.code == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"].endswith("CUDA out of memory")


FAILING_RANK_0 = """
import runpy, sys
from avbalance import distributed
import avbalance.trainer as trainer
env = distributed.Env(0, 2, 0)  # rank 0 of 2, the collectives stood in for
distributed.env, distributed.setup, distributed.broadcast = (lambda: env), (lambda d, b="auto": (env, d)), (lambda o: o)

def train(cfg, run_dir, choices=None, callbacks=()):
    print("TRAIN seed", cfg.seed, flush=True)
    raise RuntimeError("CUDA out of memory")
trainer.train = train
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow  # a train.py subprocess through Hydra's launcher (~10 s)
def test_through_hydra_a_failed_run_of_several_processes_ends_the_sweep(tmp_path):
    script = tmp_path / "rank0.py"
    script.write_text(FAILING_RANK_0)
    p = subprocess.run([sys.executable, str(script), str(ROOT / "train.py"), "-m", "seed=0,1", "epochs=1",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]
    assert p.stdout.count("TRAIN seed") == 1  # the second run never started
    assert "run failed in one of 2 processes: the sweep stops here" in p.stdout


def test_rank_1_of_2_trains_its_own_share_and_writes_nothing(tmp_path, monkeypatch, caplog):
    FakeWorld(monkeypatch, rank=0)
    train(make_cfg(*FAKE), tmp_path / "run")  # what rank 0 leaves: rank 1 reads its checkpoints
    monkeypatch.undo()
    before = snapshot(tmp_path / "run")
    world = FakeWorld(monkeypatch, rank=1)
    loggers = []
    monkeypatch.setattr(trainer_module, "build_logger", lambda *a: loggers.append(a) or NoLogger())
    with caplog.at_level(logging.INFO, logger="avbalance"):
        train(make_cfg(*FAKE), tmp_path / "run")
        assert logging.getLogger("avbalance").level == logging.WARNING
    assert snapshot(tmp_path / "run") == before  # not a byte written, not a file added
    assert loggers == []  # no experiment logger (wandb would make its own folder)
    assert not [r for r in caplog.records if r.levelno < logging.WARNING]
    one = [b.index.tolist() for b in ToyData(make_cfg(*FAKE).dataset, seed=0, batch_size=16,
                                             device=torch.device("cpu")).train_batches(0)]
    assert world.train_rows[:4] == [b[1::2] for b in one]  # rows 1, 3, 5, ... of each global batch


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_the_ddp_backend_setting_reaches_the_process_group(tmp_path, monkeypatch, backend):
    # train() hands ddp.backend to distributed.setup, which starts the process group with it
    seen = []

    class Stop(Exception):
        pass

    def recording_setup(device, backend="auto"):
        seen.append((device, backend))
        raise Stop
    monkeypatch.setattr(distributed, "setup", recording_setup)
    with pytest.raises(Stop):
        train(make_cfg(f"ddp.backend={backend}"), tmp_path / "run")
    assert seen == [(torch.device("cpu"), backend)]


def test_under_two_processes_train_applies_the_ddp_refusals(tmp_path, monkeypatch):
    # the checks of check_ddp run inside train() as soon as there are two processes
    FakeWorld(monkeypatch, rank=0)
    with pytest.raises(ConfigError, match="modulation=mmpareto does not support multi-process"):
        train(make_cfg(*FAKE, "modulation=mmpareto"), tmp_path / "a")
    with pytest.raises(ConfigError, match="ddp.sync_batchnorm=true needs CUDA"):
        train(make_cfg(*FAKE, "ddp.sync_batchnorm=true"), tmp_path / "b")
    # heads of the method's own in place of the probes: the probes' parameters would never get a gradient
    probes = ["modulation=multitask", "fusion.unimodal=probe"]
    with pytest.raises(ConfigError, match=r"^modulation=multitask replaces the unimodal probes of fusion.unimodal=probe "
                                          r"with its own heads, .* set fusion.unimodal=native or ddp.find_unused_parameters=true$"):
        train(make_cfg(*FAKE, *probes, "ddp.find_unused_parameters=false"), tmp_path / "c")
    assert train(make_cfg(*FAKE, *probes), tmp_path / "d")["status"] == "ok"  # DDP told to expect them
    assert train(make_cfg(*FAKE, "modulation=multitask", "ddp.find_unused_parameters=false"), tmp_path / "e")["status"] == "ok"


@pytest.mark.parametrize("world, sync, converted", [(1, True, False), (2, False, False), (2, True, True)])
def test_batchnorm_is_made_synchronous_only_when_asked_and_several_processes_run(tmp_path, monkeypatch, world, sync,
                                                                                 converted):
    # ddp.* acts only under several processes; there sync_batchnorm=false keeps per-process BatchNorm.
    # (2, True) needs CUDA for real: here check_ddp's CPU refusal is lifted and the conversion recorded
    if world == 2:
        FakeWorld(monkeypatch, rank=0)
        monkeypatch.setattr(trainer_module, "check_ddp", lambda *a: None)
    calls, built = [], []
    monkeypatch.setattr(torch.nn.SyncBatchNorm, "convert_sync_batchnorm", lambda model, *a, **k: calls.append(model) or model)
    real_build = trainer_module.build_model
    monkeypatch.setattr(trainer_module, "build_model", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    train(make_cfg(*FAKE, f"ddp.sync_batchnorm={str(sync).lower()}", "epochs=1"), tmp_path / "run")
    assert calls == (built if converted else [])  # the run's own model, converted once
