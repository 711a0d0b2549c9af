"""Encoders: `forward(x) -> [B, out_dim]`, each with `out_dim`.

Audio input is [B, 1, F, T]; visual input is [B, 3, T, H, W] and frames are encoded one by one,
then mean-pooled over time and space together (as the reference's adaptive_avg_pool3d).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import resnet18

from ..registry import ENCODERS


def _resnet18_trunk(in_channels: int) -> nn.Module:
    """torchvision ResNet-18 without avgpool/fc, with an `in_channels` stem (reference backbone)."""
    net = resnet18(weights=None)  # trained from scratch, as the reference
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)


def _small_trunk(in_channels: int, width: int, depth: int, norm: str = "batch") -> nn.Module:
    """`depth` strided conv blocks, width doubling each block: a CPU-sized conv net. norm="none":
    no BatchNorm (a sample's output does not depend on its batch; the DDP tests use it)."""
    layers, c_in = [], in_channels
    for i in range(depth):
        c_out = width * 2**i
        bn = nn.BatchNorm2d(c_out) if norm == "batch" else nn.Identity()
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=norm != "batch"), bn, nn.ReLU(inplace=True)]
        c_in = c_out
    return nn.Sequential(*layers)


class AudioEncoder(nn.Module):
    def __init__(self, trunk: nn.Module, out_dim: int):
        super().__init__()
        self.trunk, self.out_dim = trunk, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 1, F, T]
        return self.trunk(x).mean(dim=(2, 3))            # [B, C, f, t] -> [B, C]


class VisualEncoder(nn.Module):
    def __init__(self, trunk: nn.Module, out_dim: int):
        super().__init__()
        self.trunk, self.out_dim = trunk, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, T, H, W]
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)  # [B*T, 3, H, W]
        fmap = self.trunk(frames)                           # [B*T, D, h, w]
        fmap = fmap.view(B, T, *fmap.shape[1:])             # [B, T, D, h, w]
        return fmap.mean(dim=(1, 3, 4))                     # pool over time and space -> [B, D]


@ENCODERS.register("resnet18")
def resnet18_pair(**_) -> dict[str, nn.Module]:
    return {"audio": AudioEncoder(_resnet18_trunk(1), 512), "visual": VisualEncoder(_resnet18_trunk(3), 512)}


@ENCODERS.register("tiny")
def tiny_pair(width: int = 16, depth: int = 2, norm: str = "batch", **_) -> dict[str, nn.Module]:
    """Two blocks: enough for the toy textures, seconds on a CPU."""
    out = width * 2 ** (depth - 1)
    return {"audio": AudioEncoder(_small_trunk(1, width, depth, norm), out),
            "visual": VisualEncoder(_small_trunk(3, width, depth, norm), out)}


@ENCODERS.register("small")
def small_pair(width: int = 16, depth: int = 4, norm: str = "batch", **_) -> dict[str, nn.Module]:
    """Four blocks: a receptive field that covers a spoken digit's spectrogram or an MNIST digit."""
    return tiny_pair(width, depth, norm)
