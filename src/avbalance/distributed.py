"""Multi-process training (DDP): one process per device, started by torchrun or by SLURM.

    torchrun --nproc_per_node=4 train.py dataset=cremad modulation=ogm_ge
    python train.py -m hydra/launcher=slurm ...      # configs/hydra/launcher/slurm.yaml: tasks = GPUs

The processes learn their place from the environment (torchrun: RANK, WORLD_SIZE, LOCAL_RANK;
a SLURM task: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, through submitit). `batch_size` stays
the GLOBAL batch: each process takes its share of every batch (data/base.py `rank_batches`), so
N processes compute what one process computes on the same batch, up to float summation order.
Everything here is a no-op in a single process.
"""
from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Env:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes the run directory, checkpoints and logs."""
        return self.rank == 0


def _slurm_env() -> None:
    """A SLURM job with several tasks (Hydra's submitit launcher): export torchrun's variables."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment  # lazy: only inside a SLURM job
    # MASTER_ADDR/PORT from the job's first node, RANK, WORLD_SIZE, LOCAL_RANK; the GPUs stay visible
    # (the local rank picks one in `setup`). A MASTER_PORT the job script set is kept (submitit's export
    # refuses to run then); the rest comes from this job, not from the shell that submitted it
    t = TorchDistributedEnvironment()
    os.environ.setdefault("MASTER_PORT", str(t.master_port))
    os.environ.update({"MASTER_ADDR": t.master_addr, "RANK": str(t.rank), "WORLD_SIZE": str(t.world_size),
                       "LOCAL_RANK": str(t.local_rank), "LOCAL_WORLD_SIZE": str(t.local_world_size)})


def env() -> Env:
    _slurm_env()  # a SLURM task knows its rank from SLURM_PROCID before any process group exists
    if dist.is_available() and dist.is_initialized():
        return Env(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Env(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device, backend: str = "auto") -> tuple[Env, torch.device]:
    """-> (env, this process's device), made the current CUDA device (new streams, CUDA graphs and the
    pin-memory thread use the current one: device=cuda:N). Starts the process group when the
    environment names more than one process and none is running yet; it stays up for the process's
    next runs (a sweep under torchrun) and is closed at exit."""
    e = env()
    if e.world == 1:
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return e, device
    if device.type == "cuda":  # one GPU per process: the local rank picks it (modulo: a task shown only its own GPU)
        device = torch.device("cuda", e.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = ("nccl" if device.type == "cuda" else "gloo") if backend == "auto" else backend
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        atexit.register(shutdown)
    return env(), device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a new tensor; `x` itself is left alone). The methods' `reduce`."""
    if not active():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x


def all_mean(x: torch.Tensor) -> torch.Tensor:
    return all_sum(x) / dist.get_world_size() if active() else x


def all_max(x: torch.Tensor) -> torch.Tensor:
    if not active():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def gather(obj) -> list:
    """Every process's `obj` (picklable, e.g. CPU tensors), in rank order: [obj] in one process."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj):
    """Rank 0's `obj` on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every process: without SyncBatchNorm each
    process updates them from its own share of the batch."""
    if active():
        for b in model.buffers():
            dist.broadcast(b, src=0)


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
