"""Checks that fail before training, with one line naming the bad key and what is allowed."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError

CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "precision": ("fp32", "bf16"),
    "modulation.scope": ("all", "conv"),
    "modulation.coefficient": ("power", "tanh"),
    "fusion.unimodal": ("native", "probe", "split", "zero"),
}


def _get(cfg: DictConfig, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if node is None or part not in node:
            return None
        node = node[part]
    return node


def validate(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} must be set (add {missing[0]}=... to the command line)")
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value is not None and value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; expected one of {list(allowed)}")
    for key in ("epochs", "batch_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]!r} must be a positive integer")
    if not isinstance(cfg.num_workers, int) or cfg.num_workers < 0:
        raise ConfigError(f"num_workers={cfg.num_workers!r} must be a non-negative integer")
    m = cfg.modulation
    if "alpha" in m:
        if m.alpha is None or m.alpha < 0:
            raise ConfigError(f"modulation.alpha={m.alpha!r} must be >= 0")
        if m.coefficient == "power" and not m.beta > 0:
            raise ConfigError(f"modulation.beta={m.beta!r} must be > 0 with modulation.coefficient=power")
        if m.start_epoch < 0 or m.start_epoch > m.end_epoch:
            raise ConfigError(f"modulation.start_epoch={m.start_epoch} must be >= 0 and <= modulation.end_epoch={m.end_epoch}")
    if cfg.resume and not isinstance(cfg.resume, bool):
        raise ConfigError(f"resume={cfg.resume!r} must be true or false (set the run with hydra.run.dir=<run dir>)")


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but CUDA is not available here; expected one of ['auto', 'cpu']")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def check_group_overrides(argv: list[str], config_dir: Path) -> None:
    """Hydra's own message for an unknown group option spans many lines; check `group=a,b` first
    so that the user sees one line naming the bad option and the allowed ones."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        group = config_dir / key
        if "." in key or not group.is_dir() or value.startswith(("glob(", "range(", "choice(", "${")):
            continue
        allowed = sorted(p.stem for p in group.glob("*.yaml"))
        for option in value.split(","):
            if option and option not in allowed and option != "null":
                raise ConfigError(f"{key}={option!r} is not a {key} option; expected one of {allowed}")
