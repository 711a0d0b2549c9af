"""Balancing-method plug-in interface.

A method is one file here (or in the plug-in folder, registry.py) that registers a `Method`
subclass, and one `configs/modulation/<name>.yaml`. The loop calls the hooks below and never
names a method. Once per run:
    data = method.prepare_data(data)                       # a held-out split, a train subset
    method.pretrain(ctx)                                   # a stage before epoch 0 (fresh runs only)
Every epoch:
    method.on_epoch_start(epoch, ctx)                      # epoch state (PMR's prototypes)
    for batch: method.train_step(step, batch, epoch, ctx)  # default: step(batch, epoch), i.e.
        feats = method.transform_features(model.encode(...))   # feature-level methods (OPM)
        out = model.fuse(feats)                                # out.features: what the head saw
        loss, logs = method.loss(out, batch, epoch)            # extra losses (PMR, from out.features)
        method.backward(loss)                                  # backward override (MMPareto)
        logs |= method.after_backward(model, out, batch, epoch)  # gradient edits (OGM), before the step
        optimizer.step()
    (validation)
    method.on_epoch_end(epoch, ctx)                        # ctx["val"]: this epoch's metrics (MSLR)
A method whose standard step has no host sync and no per-step Python state sets `graph_safe`: under
speed.cuda_graph that step is replayed from a CUDA graph (speed.GraphedStep), recaptured when
`graph_key(epoch)` changes, with `graph_generators()` registered so its random draws stay fresh. A replay
reads the tensors the capture saw: state the step reads must be updated in place, or be in graph_key.
ctx = {"model", "data", "optimizer", "run_dir"}. Everything a hook logs is a 0-d device tensor; the loop
reads it once per epoch. Keys under `mod/` are the method's trace: each gets a `<key>_mean`
column in metrics.jsonl, and those in `trace` a steps.csv column (one value per step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..data.base import Batch
from ..errors import ConfigError
from ..models.fusion import FusionOutput
from ..models.model import AVClassifier

MODALITIES = ("audio", "visual")


@torch.no_grad()
def modality_scores(out: FusionOutput, label: torch.Tensor) -> torch.Tensor:
    """[2] = (s_audio, s_visual): summed softmax probability of the true class (reference §1.2),
    by one gather instead of the reference's O(B^2) per-sample loop."""
    y = label.unsqueeze(1)
    s_a = out.logits_audio.float().softmax(1).gather(1, y).sum()
    s_v = out.logits_visual.float().softmax(1).gather(1, y).sum()
    return torch.stack([s_a, s_v])


class UnimodalHeads(nn.Module):
    """Trainable linear heads on the (not detached) features: installed as `model.aux["unimodal"]`
    they give the unimodal logits, in training and evaluation, and the loss trains them with the
    encoders (MMPareto, the multitask baseline)."""

    def __init__(self, dims: dict[str, int], num_classes: int):
        super().__init__()
        self.fc = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})

    def forward(self, feats: dict[str, torch.Tensor]) -> dict:
        return {"logits_audio": self.fc["audio"](feats["audio"]), "logits_visual": self.fc["visual"](feats["visual"]),
                "probe": True}


def check_epoch_window(m: Any) -> None:
    """The inclusive epoch window [modulation.start_epoch, modulation.end_epoch] of a method config."""
    if m.start_epoch < 0 or m.start_epoch > m.end_epoch:
        raise ConfigError(f"modulation.start_epoch={m.start_epoch} is not allowed; expected 0 <= start_epoch <= "
                          f"modulation.end_epoch={m.end_epoch}")


@dataclass
class MethodConfig:
    """A method's config schema; a method with settings subclasses it as its `Config`."""
    name: str = "???"  # omegaconf.MISSING (required), spelled out: methods import without omegaconf


class Method:
    """The plain joint-training baseline (`modulation=none`); every hook has a no-op default."""
    Config = MethodConfig
    fusions: tuple[str, ...] | None = None  # the fusions it supports; None: every one
    needs_two_modalities = False            # True: refused with model.modalities=audio|visual
    supports_ddp = True                     # False: refused under torchrun/SLURM with more than one process
    graph_safe = False                      # True: its step may be replayed from a CUDA graph (speed.cuda_graph)
    trace = ("mod/ratio", "mod/coeff_audio", "mod/coeff_visual")  # per-step steps.csv columns
    brief = {"k_a": "mod/coeff_audio", "k_v": "mod/coeff_visual"}  # the epoch log line's labels

    @staticmethod
    def check_config(cfg: Any) -> None:
        """Value checks the schema's types cannot express; raise ConfigError (one line)."""

    def __init__(self, cfg: Any, model: AVClassifier, *, device: torch.device, seed: int):
        self.cfg, self.device, self.seed = cfg, device, seed
        self.one = torch.ones((), device=device)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Batch statistics that are SUMS over samples go through here: under DDP an all-reduce, so
        that the statistics (and so the coefficients) equal those of one process on the global batch."""
        return distributed.all_sum(x)

    def scores(self, out: FusionOutput, label: torch.Tensor) -> torch.Tensor:
        """[2] (s_audio, s_visual) of this step's output, reduced once and kept on `out`: the loss
        logs them and a method that modulates by them (OGM) reads the same tensor after backward."""
        if out.scores is None:
            out.scores = self.reduce(modality_scores(out, label))
        return out.scores

    def param_groups(self, model: AVClassifier) -> list[dict]:
        """Modality-keyed groups, so that learning-rate methods (MSLR) can address each one."""
        groups = [{"params": model.encoder_params(m), "modality": m} for m in MODALITIES]
        groups.append({"params": model.head_params(), "modality": "head"})
        if len(model.aux):  # modules a method added (trainable unimodal heads)
            groups.append({"params": [p for p in model.aux.parameters() if p.requires_grad], "modality": "aux"})
        return groups

    def prepare_data(self, data):
        """The data the run trains on. A method that needs rows of its own returns a view: e.g.
        `data.base.HeldOut(data, fraction, seed)` (train minus a seeded held-out split "heldout");
        `data.base.subset_rows` draws a seeded train subset per epoch (PMR's prototypes)."""
        return data

    def pretrain(self, ctx: dict) -> None:
        """A stage before epoch 0 of a fresh run (teachers, unimodal warm starts). What it produces
        must live in the model, in `state_dict` or under ctx["run_dir"] (resumes skip it: UMT
        reloads its teachers from the run dir)."""

    def on_epoch_start(self, epoch: int, ctx: dict) -> None:
        pass

    def train_step(self, step: Callable, batch: Batch, epoch: int, ctx: dict) -> tuple[torch.Tensor, dict]:
        """One training step -> (loss, logs). `step(batch, epoch)` is the loop's standard step;
        a method with its own step (alternating or staged updates) replaces or wraps it."""
        return step(batch, epoch)

    def transform_features(self, feats: dict[str, torch.Tensor], batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return feats

    def loss(self, out: FusionOutput, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = batch.label
        loss = F.cross_entropy(out.logits, y)
        if out.probe:  # probes (detached) or unimodal heads learn from their own loss
            loss = loss + F.cross_entropy(out.logits_audio, y) + F.cross_entropy(out.logits_visual, y)
        with torch.no_grad():
            s = self.scores(out, y)
            logs = {
                "train/loss": loss.detach(),
                "train/loss_audio": F.cross_entropy(out.logits_audio, y),
                "train/loss_visual": F.cross_entropy(out.logits_visual, y),
                "train/acc": (out.logits.argmax(1) == y).float().mean(),
                "mod/ratio": s[0] / s[1],  # rho_audio = s_a / s_v (> 1: audio dominates)
            }
        return loss, logs

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def after_backward(self, model: AVClassifier, out: FusionOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return {"mod/coeff_audio": self.one, "mod/coeff_visual": self.one}

    def graph_key(self, epoch: int):
        """speed.cuda_graph: what of the method's step depends on the epoch on the host (an epoch
        window); a new value makes a new capture. Only read when `graph_safe`."""
        return None

    def graph_generators(self) -> list[torch.Generator]:
        """speed.cuda_graph: the method's own CUDA generators, registered with the graph."""
        return []

    def on_epoch_end(self, epoch: int, ctx: dict) -> None:
        """After the epoch's validation: ctx["val"] holds its metrics (acc, acc_audio, ...)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
