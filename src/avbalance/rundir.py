"""What every run leaves in its directory: meta.json, metrics.jsonl, summary.json, checkpoints.
Files are written atomically (tmp + os.replace): an interrupted write never corrupts a run."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _host_copy(obj):
    """`obj` with every tensor copied to host memory (the caller goes on changing the originals)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):  # the same mapping type, with a state_dict's `_metadata` (module versions)
        out = type(obj)((k, _host_copy(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple takes its fields one by one
        return type(obj)(*(_host_copy(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Checkpoints written by a background thread, in the order they were saved (speed.async_checkpoint):
    `save` copies the state to host memory at once and returns while the file is written (atomically,
    as save_checkpoint); `flush` waits for every pending write and raises the error of a failed one.
    A write still pending when the process ends is finished before it exits (the pool's thread is
    joined at exit). background=False: `save` writes before it returns."""

    def __init__(self, background: bool = True):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="avbalance-ckpt") if background else None
        self.pending: list[Future] = []

    def save(self, path: Path, state: dict) -> None:
        self._raise_failed()
        if self.pool is None:
            save_checkpoint(path, state)
        else:
            self.pending.append(self.pool.submit(save_checkpoint, path, _host_copy(state)))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for f in pending:
            f.result()

    def _raise_failed(self) -> None:
        done = [f for f in self.pending if f.done()]
        self.pending = [f for f in self.pending if not f.done()]
        for f in done:
            f.result()


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def git_state() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    return {"commit": commit or None, "dirty": dirty}


def meta(device: torch.device, choices: dict, seed: int) -> dict:
    import hydra
    import numpy
    import torchvision

    info = {
        "git": git_state(),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
                     "hydra": hydra.__version__, "numpy": numpy.__version__},
        "device": {"type": device.type, "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
                   "threads": torch.get_num_threads()},
        "host": platform.node(),
        "choices": choices,
        "seed": seed,
        "argv": sys.argv[1:],
    }
    return info


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:  # a line cut by a crash during the write
        return None


class MetricsLog:
    """metrics.jsonl, one line per epoch. On resume the lines of epochs before the checkpoint are
    kept, lines past it and an unreadable (truncated) line dropped, and the checkpoint's own epoch
    line is taken from the checkpoint (the crash may have come between the two writes)."""

    def __init__(self, path: Path, start_epoch: int, last_row: dict | None = None, write: bool = True):
        self.path, self.write = path, write  # write=False: a DDP process other than rank 0 keeps the rows only
        rows = [r for r in map(_json_or_none, path.read_text().splitlines() if start_epoch > 0 and path.exists() else [])
                if isinstance(r, dict) and r.get("epoch", start_epoch) < start_epoch]
        if last_row is not None:  # the checkpoint's own epoch comes from the checkpoint
            rows = [r for r in rows if r["epoch"] != last_row["epoch"]] + [last_row]
        self.rows = rows
        if write:
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if not self.write:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
