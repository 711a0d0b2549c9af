"""Balancing-method plug-in interface.

The training loop calls these hooks in this order every step (and never names a method):
    feats = method.transform_features(model.encode(...))   # feature-level methods (OPM)
    out = model.head(feats)
    loss, logs = method.loss(out, batch, epoch)            # extra losses
    method.backward(loss)                                  # backward override (MMPareto)
    logs |= method.after_backward(model, out, batch, epoch)  # gradient edits (OGM), before the step
    optimizer.step()
Everything a hook logs is a 0-d device tensor; the loop reads it once per epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from omegaconf import MISSING

from ..data.base import Batch
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


@dataclass
class MethodConfig:
    """A method's config schema; a method with settings subclasses it as its `Config`."""
    name: str = MISSING


class Method:
    """The plain joint-training baseline (`modulation=none`); every hook has a no-op default."""
    Config = MethodConfig

    @staticmethod
    def check_config(cfg: Any) -> None:
        """Value checks the schema's types cannot express; raise ConfigError (one line)."""

    def __init__(self, cfg: Any, model: AVClassifier, *, device: torch.device, seed: int):
        self.cfg, self.device, self.seed = cfg, device, seed
        self.one = torch.ones((), device=device)

    # batch statistics go through here; under DDP this becomes an all-reduce so that the
    # statistics (and so the coefficients) equal those of one process on the global batch
    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def param_groups(self, model: AVClassifier) -> list[dict]:
        """Modality-keyed groups, so that learning-rate methods (MSLR) can address each one."""
        groups = [{"params": model.encoder_params(m), "modality": m} for m in MODALITIES]
        return groups + [{"params": model.head_params(), "modality": "head"}]

    def on_epoch_start(self, epoch: int, ctx: dict) -> None:
        pass

    def transform_features(self, feats: dict[str, torch.Tensor], batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return feats

    def loss(self, out: FusionOutput, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = batch.label
        loss = F.cross_entropy(out.logits, y)
        if out.probe:  # detached probes learn from their own loss; encoders are unaffected
            loss = loss + F.cross_entropy(out.logits_audio, y) + F.cross_entropy(out.logits_visual, y)
        with torch.no_grad():
            s = self.reduce(modality_scores(out, y))
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

    def on_epoch_end(self, epoch: int, ctx: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
