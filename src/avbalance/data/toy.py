"""`toy`: a synthetic two-stream dataset generated from the seed (no files, no downloads).

Each class owns a random local texture per modality (a 5x5 kernel filtering white noise). A
sample is texture * snr + N(0, 1). Audio is the easy stream: strong texture, but only on a
fraction of the samples (the rest carry noise only); the visual texture is weak but present in
every sample. So audio wins the early optimisation and starves the visual encoder, while the
best fused model needs both, which is the situation OGM-GE is for.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..registry import DATASETS
from .base import Batch, epoch_generator, rank_batches, split_batch_size

SPLIT_STREAMS = {"train": 1, "val": 2, "test": 3}


def _textures(n: int, kernels: torch.Tensor, labels: torch.Tensor, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Unit-variance class textures: white noise filtered by the class's kernel. -> [n, *shape]"""
    if n == 0:  # an empty split (dataset.n_val=0): the trainer names it
        return torch.zeros(0, *shape)
    c, h, w = shape[-3], shape[-2], shape[-1]
    lead = shape[:-3]
    field = torch.randn(n * math.prod(lead) * c, 1, h + 4, w + 4, generator=g)
    k = kernels[labels].repeat_interleave(field.shape[0] // n, dim=0)           # [N', 5, 5]
    out = F.conv2d(field.view(1, -1, h + 4, w + 4), k.unsqueeze(1), groups=k.shape[0])  # [1, N', h, w]
    out = out.view(n, *lead, c, h, w)
    return out / out.flatten(1).std(dim=1).view(n, *([1] * (out.dim() - 1)))


def make_toy(cfg, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """-> {split: (audio [N,1,F,T], visual [N,3,T,H,W], label [N])}, deterministic in `seed`."""
    g = torch.Generator().manual_seed(10_000 + seed)
    C = int(cfg.num_classes)
    kernels = {m: torch.randn(C, 5, 5, generator=g) for m in ("audio", "visual")}
    F_, T_ = cfg.spec_shape
    S, T = int(cfg.image_size), int(cfg.frames)
    splits = {}
    for split, stream in SPLIT_STREAMS.items():
        gs = torch.Generator().manual_seed(10_000 + seed * 10 + stream)
        n = int(cfg[f"n_{split}"])
        y = torch.arange(n) % C
        y = y[torch.randperm(n, generator=gs)]
        clean = (torch.rand(n, generator=gs) < cfg.audio_clean_frac).float().view(n, 1, 1, 1)
        audio = clean * cfg.audio_snr * _textures(n, kernels["audio"], y, (1, F_, T_), gs) + torch.randn(n, 1, F_, T_, generator=gs)
        # visual texture shared by the clip's frames: [N, T, 3, S, S] -> [N, 3, T, S, S]
        vis = cfg.visual_snr * _textures(n, kernels["visual"], y, (3, S, S), gs).unsqueeze(1).expand(n, T, 3, S, S)
        visual = (vis + torch.randn(n, T, 3, S, S, generator=gs)).transpose(1, 2).contiguous()
        splits[split] = (audio, visual, y)
    return splits


class ToyData:
    name = "toy"

    def __init__(self, cfg, *, seed: int, batch_size: int, device: torch.device, rank: int = 0, world: int = 1,
                 eval_batch_size: int | None = None, **_):
        self.seed, self.batch_size, self.rank, self.world = seed, batch_size, rank, world
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_classes = int(cfg.num_classes)
        self.class_names = [f"class{i}" for i in range(self.num_classes)]
        self.selection_split = cfg.selection_split
        # the whole dataset lives on the device: a batch is an index_select, nothing to wait for
        self.data = {s: tuple(t.to(device) for t in v) for s, v in make_toy(cfg, seed).items()}
        self.split_names = list(self.data)
        train = list(cfg.get("train_splits") or ["train"])  # protocol=paper: train + val
        self.data["train"] = tuple(torch.cat(parts) for parts in zip(*(self.data[s] for s in train)))

    def num_rows(self, split: str) -> int:
        return len(self.data[split][2])

    def num_batches(self, split: str) -> int:
        return -(-self.num_rows(split) // split_batch_size(self, split))

    def _batches(self, split: str, batches: list[torch.Tensor]):
        audio, visual, label = self.data[split]
        for idx in batches:
            idx = idx.to(label.device)
            yield Batch(audio[idx], visual[idx], label[idx], idx)

    def train_batches(self, epoch: int, device=None, rows: torch.Tensor | None = None):
        n = self.num_rows("train") if rows is None else len(rows)
        order = torch.randperm(n, generator=epoch_generator(self.seed, epoch))
        order = order if rows is None else rows[order]
        return self._batches("train", rank_batches(order, self.batch_size, self.rank, self.world))

    def eval_batches(self, split: str, device=None, rows: torch.Tensor | None = None):
        order = torch.arange(self.num_rows(split)) if rows is None else torch.as_tensor(rows)
        return self._batches(split, rank_batches(order, self.eval_batch_size))


@DATASETS.register("toy")
def build_toy(cfg, **kw) -> ToyData:
    return ToyData(cfg, **kw)
