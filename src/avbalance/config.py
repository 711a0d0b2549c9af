"""Value checks that fail before training, with one line naming the bad key and what is allowed.
Types and closed choices are the schema's job (schema.py); what it cannot express is checked here,
and a method's own values by its `check_config`."""
from __future__ import annotations

import re

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .registry import METHODS


def validate(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} must be set (add {missing[0]}=... to the command line)")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"device={cfg.device!r} is not allowed; expected one of ['auto', 'cpu', 'cuda', 'cuda:N']")
    for key in ("epochs", "batch_size", "eval_batch_size", "ckpt_every"):
        if cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]!r} must be a positive integer")
    if cfg.num_workers < 0:
        raise ConfigError(f"num_workers={cfg.num_workers!r} must be a non-negative integer")
    if cfg.mode == "eval" and not cfg.ckpt:
        raise ConfigError("mode=eval needs the checkpoint: add ckpt=<run dir>/ckpt/best.pt")
    name = cfg.modulation.name
    if name not in METHODS:
        raise ConfigError(f"modulation.name={name!r} is not a registered method; expected one of {METHODS.names()}")
    method = METHODS.get(name)  # what a method declares (methods/base.py), checked here for every one
    if cfg.model.get("modalities", "both") != "both" and method.needs_two_modalities:
        one = [m for m in METHODS.names() if not METHODS.get(m).needs_two_modalities]
        raise ConfigError(f"model.modalities={cfg.model.modalities} trains one encoder; modulation={name} "
                          f"balances two: expected modulation={' | '.join(one)}")
    if method.fusions is not None and cfg.fusion.name not in method.fusions:
        raise ConfigError(f"fusion={cfg.fusion.name} is not supported by modulation={name}; expected one of {sorted(method.fusions)}")
    method.check_config(cfg.modulation)


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; expected one of ['auto', 'cpu']")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
