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

    def train_batches(self, epoch: int, device: torch.device, rows=None) -> Iterator[Batch]:
        """Shuffled, augmented training batches; the order depends only on (seed, epoch).
        `rows` (positions in the train split): only those rows."""

    def eval_batches(self, split: str, device: torch.device, rows=None) -> Iterator[Batch]:
        """Deterministic batches of `split` (or of its `rows`, in that order) with the evaluation transform."""

    def num_rows(self, split: str) -> int:
        ...

    def num_batches(self, split: str) -> int:
        ...


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """CPU generator that depends only on (seed, epoch, stream): shuffling and augmentation
    are then reproducible and a resumed run needs no data-loader RNG state."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + stream) % (2**63 - 1))
    return g


def split_batch_size(data, split: str) -> int:
    """Training batches are `batch_size` (the optimisation's); every other pass over a split is an
    evaluation-mode one, in batches of `eval_batch_size` (speed only: eval-mode BatchNorm makes a
    sample's output independent of its batch)."""
    return data.batch_size if split == "train" else data.eval_batch_size


def rank_batches(order, batch_size: int, rank: int = 0, world: int = 1) -> list:
    """The epoch's batches: `order` (a tensor or array of rows) cut into batches of `batch_size`,
    the last one partial as in the reference. Under DDP `batch_size` is the global batch and each
    process keeps its share of every batch, rows rank, rank + world, ...: every row is seen once
    per epoch and the processes together hold the one-process batches. A last batch with fewer
    rows than processes joins the one before it, so that no process gets an empty batch."""
    n = len(order)
    starts = list(range(0, n, batch_size))
    if world > 1 and len(starts) > 1 and n - starts[-1] < world:
        starts.pop()
    return [order[s:e][rank::world] for s, e in zip(starts, starts[1:] + [n])]


def subset_rows(n: int, fraction: float, seed: int, epoch: int = 0, stream: int = 101) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random `fraction` of the rows 0..n-1 and the rest, each sorted: (chosen, rest).
    Depends only on (seed, epoch, stream), so it is the same after a resume."""
    perm = torch.randperm(n, generator=epoch_generator(seed, epoch, stream))
    k = min(n, max(1, round(n * fraction))) if n else 0
    return perm[:k].sort().values, perm[k:].sort().values


class HeldOut:
    """`data` with a seeded `fraction` of its train rows held out as the split "heldout" (a method's
    own validation set, G-Blending's V): training batches come from the other rows only, and
    "heldout" batches use the evaluation transform. Returned by `Method.prepare_data`."""

    def __init__(self, data, fraction: float, seed: int):
        self.inner = data
        self.held, self.kept = subset_rows(data.num_rows("train"), fraction, seed, stream=102)

    def __getattr__(self, name):  # everything else is the wrapped data's
        return getattr(self.inner, name)

    def _rows(self, split: str):
        """The train rows a split of this view stands for; None: the wrapped data's own split."""
        return {"train": self.kept, "heldout": self.held}.get(split)

    def num_rows(self, split: str) -> int:
        rows = self._rows(split)
        return self.inner.num_rows(split) if rows is None else len(rows)

    def num_batches(self, split: str) -> int:
        return -(-self.num_rows(split) // split_batch_size(self.inner, split))

    def train_batches(self, epoch: int, device=None, rows=None):
        return self.inner.train_batches(epoch, device, rows=self.kept if rows is None else self.kept[rows])

    def eval_batches(self, split: str, device=None, rows=None):
        own = self._rows(split)
        if own is None:
            return self.inner.eval_batches(split, device, rows)
        return self.inner.eval_batches("train", device, rows=own if rows is None else own[rows])
