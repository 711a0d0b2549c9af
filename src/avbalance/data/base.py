"""Data contracts shared by every dataset.

A dataset is a `DataModule`: it yields `Batch`es already on the target device, with the
train-time augmentation applied there in batch. The training loop only sees this interface.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator, Protocol

import torch


@dataclass
class Batch:
    audio: torch.Tensor   # [B, 1, F, T] float (log spectrogram or features)
    visual: torch.Tensor  # [B, 3, T, H, W] float, normalised
    label: torch.Tensor   # [B] int64
    index: torch.Tensor   # [B] int64, row of the sample in its split

    def to(self, device, non_blocking: bool = True) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def __len__(self) -> int:
        return self.label.shape[0]


class DataModule(Protocol):
    name: str
    num_classes: int
    class_names: list[str]
    split_names: list[str]     # e.g. ["train", "val", "test"]
    selection_split: str       # the split whose metrics select the best epoch

    def train_batches(self, epoch: int, device: torch.device) -> Iterator[Batch]:
        """Shuffled, augmented training batches; the order depends only on (seed, epoch)."""

    def eval_batches(self, split: str, device: torch.device) -> Iterator[Batch]:
        """Deterministic batches of `split` with the evaluation transform."""

    def num_batches(self, split: str) -> int:
        ...


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """CPU generator that depends only on (seed, epoch, stream): shuffling and augmentation
    are then reproducible and a resumed run needs no data-loader RNG state."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + stream) % (2**63 - 1))
    return g
