"""What every run leaves in its directory: meta.json, metrics.jsonl, summary.json, checkpoints.
Files are written atomically (tmp + os.replace): an interrupted write never corrupts a run."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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


class MetricsLog:
    """metrics.jsonl, one line per epoch; on resume the lines past the checkpoint are dropped."""

    def __init__(self, path: Path, start_epoch: int):
        self.path = path
        kept = []
        if start_epoch > 0 and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["epoch"] < start_epoch]
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))
        self.rows = [json.loads(ln) for ln in kept]

    def append(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
