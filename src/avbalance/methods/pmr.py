"""PMR, Prototypical Modal Rebalance (Fan et al., CVPR 2023), as fanyunfeng-bit/Modal-Imbalance-PMR
at 3615e48 (main_Prototype_grad.py; ../shared/docs/methods/pmr.md §3).

Prototypes: c^m_k = mean encoder feature of class k, over a seeded subset (`subset` of the train
batches, model in eval mode, no grad), recomputed before every epoch; from epoch 2 on (after the
reference's epoch >= 1) c <- (1 - momentum) c_new + momentum c_old. A class absent from the
subset keeps its previous prototype (the reference divides 0 by 0).
Per step, with z^m the encoder features the head saw:
  l^m_ik = -||z^m_i - c^m_k||_2             prototype logits [B, C], no temperature
  rho    = s_a / s_v,  s_m = sum_i softmax(l^m_i)[y_i]
  loss   = CE(fused) + alpha CE(l^v, y) if rho > 1, + alpha CE(l^a, y) if rho < 1, nothing at rho = 1
           (inside the inclusive window [start_epoch, end_epoch]; the prototypes are constants)
  per_weight > 0 (first per_epochs epochs): - per_weight * mean_i H(softmax(l^d_i)) for the dominant
           modality d: the paper's prototype entropy regularisation (PER), absent from the released
           script; this form is a reconstruction (docs/deviations.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.base import subset_rows
from ..errors import ConfigError
from ..registry import METHODS
from .base import MODALITIES, Method, MethodConfig, check_epoch_window


@dataclass
class PMRConfig(MethodConfig):
    alpha: float = 1.0          # argparse default (bash.sh, CREMA-D: concat 2, sum 5, film 3, gated 3)
    momentum: float = 0.2       # EMA of the prototypes: argparse default (every bash.sh command: 0.0)
    subset: float = 0.1         # fraction of the train batches the prototypes are computed on
    start_epoch: int = 0        # inclusive window (argparse: 0..100)
    end_epoch: int = 100
    per_weight: float = 0.0     # PER weight; 0 = off, as the released code
    per_epochs: int = 0         # PER acts in epochs 0 .. per_epochs - 1
    subset_stream: int = 103    # the subset's random stream (seeded by seed and epoch)


def prototype_logits(z: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """z [B, D], protos [C, D] -> [B, C] negative Euclidean distances (exact, not the matmul form)."""
    return -torch.cdist(z.float(), protos, compute_mode="donot_use_mm_for_euclid_dist")


@torch.no_grad()
def class_means(model, batches, num_classes: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """-> ({modality: [C, D] mean feature per class}, counts [C]); a class without samples: 0."""
    sums, counts = {}, None
    for batch in batches:
        feats = model.encode(batch.audio, batch.visual)
        if counts is None:
            counts = torch.zeros(num_classes, device=batch.label.device)
            sums = {m: torch.zeros(num_classes, feats[m].shape[1], device=batch.label.device) for m in MODALITIES}
        counts.index_add_(0, batch.label, torch.ones_like(batch.label, dtype=counts.dtype))
        for m in MODALITIES:
            sums[m].index_add_(0, batch.label, feats[m].float())
    return {m: s / counts.clamp(min=1).unsqueeze(1) for m, s in sums.items()}, counts


def update_prototypes(old: dict, new: dict, counts: torch.Tensor, momentum: float, ema: bool) -> dict:
    """Classes seen in the subset take the new mean (EMA with the old one when `ema`); the others
    keep the old prototype."""
    seen = (counts > 0).unsqueeze(1)                                    # [C, 1]
    out = {}
    for m in MODALITIES:
        c = (1 - momentum) * new[m] + momentum * old[m] if ema else new[m]
        out[m] = torch.where(seen, c, old[m])
    return out


@METHODS.register("pmr")
class PMR(Method):
    Config = PMRConfig
    needs_two_modalities = True
    trace = ("mod/ratio", "mod/proto_ratio", "mod/pce_audio", "mod/pce_visual")
    brief = {"pce_a": "mod/pce_audio", "pce_v": "mod/pce_visual"}

    @staticmethod
    def check_config(m) -> None:
        for key in ("alpha", "per_weight"):
            if m[key] < 0:
                raise ConfigError(f"modulation.{key}={m[key]!r} is not allowed; expected a number >= 0")
        if not 0 <= m.momentum <= 1:
            raise ConfigError(f"modulation.momentum={m.momentum!r} is not allowed; expected a number in [0, 1]")
        if not 0 < m.subset <= 1:
            raise ConfigError(f"modulation.subset={m.subset!r} is not allowed; expected a fraction in (0, 1]")
        check_epoch_window(m)

    def __init__(self, cfg, model, *, device, seed):
        super().__init__(cfg, model, device=device, seed=seed)
        self.alpha, self.momentum, self.fraction = float(cfg.alpha), float(cfg.momentum), float(cfg.subset)
        self.start, self.end = int(cfg.start_epoch), int(cfg.end_epoch)
        self.per_weight, self.per_epochs = float(cfg.per_weight), int(cfg.per_epochs)
        self.stream = int(cfg.subset_stream)
        self.protos: dict[str, torch.Tensor] = {}

    def on_epoch_start(self, epoch, ctx):
        """Prototypes from the current encoders: the reference computes them before epoch 0 and
        after each epoch, which is before each epoch here (the same weights)."""
        model, data = ctx["model"], ctx["data"]
        n = data.num_rows("train")
        k = max(1, int(data.num_batches("train") * self.fraction)) * data.batch_size  # first 10% of the batches
        rows, _ = subset_rows(n, min(1.0, k / n), self.seed, epoch, self.stream)
        model.eval()  # BatchNorm in inference mode, as the reference
        new, counts = class_means(model, data.eval_batches("train", self.device, rows=rows), data.num_classes)
        model.train()
        old = self.protos or {m: torch.zeros_like(new[m]) for m in MODALITIES}
        self.protos = update_prototypes(old, new, counts, self.momentum, ema=epoch >= 2 and bool(self.protos))

    def loss(self, out, batch, epoch):
        loss, logs = super().loss(out, batch, epoch)
        y = batch.label
        lp = {m: prototype_logits(out.features[m], self.protos[m]) for m in MODALITIES}   # [B, C] each
        with torch.no_grad():
            s = self.reduce(torch.stack([lp[m].softmax(1).gather(1, y.unsqueeze(1)).sum() for m in MODALITIES]))
            rho = s[0] / s[1]
        on = self.start <= epoch <= self.end  # Python ints: no device sync
        w_a = self.alpha * (rho < 1).float() * on    # the slower modality gets the prototype CE
        w_v = self.alpha * (rho > 1).float() * on
        loss = loss + w_a * F.cross_entropy(lp["audio"], y) + w_v * F.cross_entropy(lp["visual"], y)
        if self.per_weight > 0 and epoch < self.per_epochs:  # PER: raise the dominant modality's entropy
            ent = {m: -(lp[m].log_softmax(1) * lp[m].softmax(1)).sum(1).mean() for m in MODALITIES}
            dominant = torch.where(rho > 1, ent["audio"], ent["visual"]) * (rho != 1).float()  # none at a tie
            loss = loss - self.per_weight * dominant
        logs |= {"train/loss": loss.detach(), "mod/proto_ratio": rho, "mod/pce_audio": w_a, "mod/pce_visual": w_v}
        return loss, logs

    def after_backward(self, model, out, batch, epoch):
        return {}  # no gradient edit

    def state_dict(self):
        return {"protos": dict(self.protos)}

    def load_state_dict(self, state):
        self.protos = dict(state["protos"])
