"""Fusion heads: `forward(feat_audio, feat_visual) -> FusionOutput`.

Each head also returns unimodal logits, the per-modality predictions that OGM scores. How they
are estimated differs by head and is documented on each class (docs/deviations.md lists the
departures from the reference). With `unimodal=probe`, detached linear probes give them instead;
`probe=True` tells the loss to train those probes (their inputs are detached, so the encoders'
gradients are unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import FUSIONS


@dataclass
class FusionOutput:
    logits: torch.Tensor          # [B, C] fused
    logits_audio: torch.Tensor    # [B, C] unimodal estimate
    logits_visual: torch.Tensor   # [B, C]
    probe: bool = False           # unimodal logits come from probes or heads that need their own loss
    features: dict | None = None  # {modality: [B, D]} the features the head saw (set by AVClassifier.fuse)
    scores: torch.Tensor | None = None  # [2] this step's reduced modality scores (Method.scores), made once


class FusionHead(nn.Module):
    """Base: `unimodal` picks how unimodal logits are estimated (head-specific or probe)."""
    native = "split"  # the head's own estimate

    def __init__(self, da: int, dv: int, num_classes: int, unimodal: str = "native"):
        super().__init__()
        self.num_classes = num_classes  # methods that add heads of their own (MMPareto) read it
        allowed = ("native", self.native, "zero", "mean", "probe")
        if unimodal not in allowed:
            raise ConfigError(f"fusion.unimodal={unimodal!r} is not supported by {type(self).__name__}; expected one of {sorted(set(allowed))}")
        self.unimodal = self.native if unimodal == "native" else unimodal
        if self.unimodal == "probe":
            self.probe_audio, self.probe_visual = nn.Linear(da, num_classes), nn.Linear(dv, num_classes)

    def fuse(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def native_unimodal(self, a, v):
        raise NotImplementedError

    def branch_params(self, modality: str) -> list[nn.Parameter]:
        """The head's parameters that act on one modality only (sum's branches); [] when shared."""
        return []

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> FusionOutput:
        logits = self.fuse(a, v)
        if self.unimodal == "probe":
            return FusionOutput(logits, self.probe_audio(a.detach()), self.probe_visual(v.detach()), probe=True)
        if self.unimodal == "zero":
            # maintainers' suggestion for non-linear heads: the other modality's feature set to zero
            return FusionOutput(logits, self.fuse(a, torch.zeros_like(v)), self.fuse(torch.zeros_like(a), v))
        if self.unimodal == "mean":
            # the other modality's feature replaced by its batch mean: it carries no per-sample
            # information, but the head still sees a typical input (zero is atypical after ReLU, and
            # with zero-initialised biases it silences a gated or FiLM-ed branch entirely)
            a_mean, v_mean = a.detach().mean(0).expand_as(a), v.detach().mean(0).expand_as(v)  # [D] -> [B, D]
            return FusionOutput(logits, self.fuse(a, v_mean), self.fuse(a_mean, v))
        return FusionOutput(logits, *self.native_unimodal(a, v))


@FUSIONS.register("concat")
class ConcatFusion(FusionHead):
    """W [a; v] + b. Unimodal: each modality's half of W plus half the bias (paper Eq. 8)."""

    def __init__(self, da, dv, num_classes, unimodal="native", **_):
        super().__init__(da, dv, num_classes, unimodal)
        self.da = da
        self.fc = nn.Linear(da + dv, num_classes)

    def fuse(self, a, v):
        return self.fc(torch.cat([a, v], dim=1))

    def native_unimodal(self, a, v):
        w, half_b = self.fc.weight, self.fc.bias / 2
        return F.linear(a, w[:, : self.da], half_b), F.linear(v, w[:, self.da:], half_b)


@FUSIONS.register("sum")
class SumFusion(FusionHead):
    """fc_a(a) + fc_v(v). Unimodal: each branch with its own full bias, in training and in
    evaluation (`eval_half_bias=true` restores the reference's bias/2 at evaluation)."""

    def __init__(self, da, dv, num_classes, unimodal="native", eval_half_bias=False, **_):
        super().__init__(da, dv, num_classes, unimodal)
        self.fc_a, self.fc_v = nn.Linear(da, num_classes), nn.Linear(dv, num_classes)
        self.eval_half_bias = eval_half_bias

    def fuse(self, a, v):
        return self.fc_a(a) + self.fc_v(v)

    def branch_params(self, modality):
        return list((self.fc_a if modality == "audio" else self.fc_v).parameters())

    def native_unimodal(self, a, v):
        out_a, out_v = self.fc_a(a), self.fc_v(v)
        if self.eval_half_bias and not self.training:  # reference's valid(): bias/2
            out_a, out_v = out_a - self.fc_a.bias / 2, out_v - self.fc_v.bias / 2
        return out_a, out_v


@FUSIONS.register("film")
class FiLMFusion(FusionHead):
    """Audio conditions visual (reference x_film=True): gamma, beta = fc(a); fc_out(gamma * v + beta).
    No split logits exist: unimodal logits replace the other modality's feature by its batch mean."""
    native = "mean"

    def __init__(self, da, dv, num_classes, unimodal="native", **_):
        super().__init__(da, dv, num_classes, unimodal)
        self.fc = nn.Linear(da, 2 * dv)
        self.fc_out = nn.Linear(dv, num_classes)

    def fuse(self, a, v):
        gamma, beta = self.fc(a).chunk(2, dim=1)  # [B, dv] each
        return self.fc_out(gamma * v + beta)


@FUSIONS.register("gated")
class GatedFusion(FusionHead):
    """Audio gates visual (reference x_gate=True): fc_out(sigmoid(fc_a(a)) * fc_v(v)).
    No split logits exist: unimodal logits replace the other modality's feature by its batch mean."""
    native = "mean"

    def __init__(self, da, dv, num_classes, unimodal="native", hidden=None, **_):
        super().__init__(da, dv, num_classes, unimodal)
        hidden = hidden or dv
        self.fc_a, self.fc_v = nn.Linear(da, hidden), nn.Linear(dv, hidden)
        self.fc_out = nn.Linear(hidden, num_classes)

    def fuse(self, a, v):
        return self.fc_out(torch.sigmoid(self.fc_a(a)) * self.fc_v(v))
