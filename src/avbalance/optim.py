"""Optimizers and schedulers from the `optim` config group."""
from __future__ import annotations

import torch

from .errors import ConfigError


def build_optimizer(cfg, param_groups: list[dict], fused: bool = False, capturable: bool = False) -> torch.optim.Optimizer:
    """`fused`: the CUDA kernel that updates every parameter in one launch (speed.fused_optimizer).
    `capturable`: Adam's step count kept on the device, so a CUDA graph can replay the update
    (speed.cuda_graph); SGD keeps no count and needs nothing."""
    groups = [g for g in param_groups if g["params"]]
    kw = {"fused": True} if fused else {}
    adam_kw = kw | ({"capturable": True} if capturable else {})
    if cfg.name == "sgd":  # reference: SGD(lr 1e-3, momentum 0.9, weight_decay 1e-4) on all parameters
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **kw)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **adam_kw)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **adam_kw)
    raise ConfigError(f"optim.name={cfg.name!r}; expected one of ['adam', 'adamw', 'sgd']")


KERNEL_FLAGS = ("capturable", "fused", "foreach", "differentiable")  # how a step runs, not what it computes


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """optimizer.load_state_dict(saved), keeping this run's kernel flags. torch takes every group option
    from the saved groups: a run resumed with speed.cuda_graph would get the saving run's capturable=False
    (and its capture would fail), a run resumed on another device the other's fused. The flags go into the
    saved groups before loading, so that torch also places the step counts as they ask (on the device
    when capturable or fused)."""
    groups = [{**sg, **{k: g[k] for k in KERNEL_FLAGS if k in g}}
              for sg, g in zip(saved["param_groups"], optimizer.param_groups)]
    groups += saved["param_groups"][len(groups):]  # a count that differs stays torch's error
    optimizer.load_state_dict({**saved, "param_groups": groups})


def build_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """Stepped once per epoch (the reference's fixed schedule: x0.1 at epoch 70)."""
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "none":  # chainable (x1 on the current rate): a method may set a group's rate (MSLR)
        return torch.optim.lr_scheduler.MultiplicativeLR(optimizer, lambda _: 1.0)
    raise ConfigError(f"optim.scheduler={cfg.scheduler!r}; expected one of ['none', 'step']")
