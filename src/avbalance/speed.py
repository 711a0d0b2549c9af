"""GPU speed settings (`speed.*`): applied on CUDA only, so a CPU run is the same program with or
without them. Shared by the trainer and scripts/bench_train.py (which must not import Hydra)."""
from __future__ import annotations

import torch
import torch.nn as nn


def on_cuda(device: torch.device) -> bool:
    return torch.device(device).type == "cuda"


def configure(cfg, device: torch.device) -> None:
    """Process-wide switches. cudnn.benchmark times the convolution algorithms for each new input
    shape once (the first steps are slower) and keeps the fastest; results are not bit-identical
    between runs, as CUDA training already is not."""
    if on_cuda(device):
        torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark)


def prepare_model(model: nn.Module, cfg, device: torch.device) -> nn.Module:
    """channels_last: NHWC weights, so the convolutions (and their outputs) run in the layout the
    tensor cores want; NCHW inputs are converted by the first convolution. compile: each encoder
    through torch.compile (the fusion head and the method stay eager: they change per method)."""
    if on_cuda(device) and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        for enc in model.encoders.values():
            enc.compile(mode=str(cfg.compile_mode))
    return model


def fused_optimizer(cfg, device: torch.device) -> bool:
    """The optimizer's fused CUDA kernel (one launch for all parameters; the same update rule)."""
    return on_cuda(device) and bool(cfg.fused_optimizer)
