"""The uniform multitask baseline of MMPareto (Wei and Hu, ICML 2024), as MMPareto_ICML2024 at
a339db3 (code/uniform_baseline.py; ../shared/docs/methods/mmpareto.md §3 "Uniform baseline"):

  loss = CE(fused, y) + CE(h_a(z_a), y) + CE(h_v(z_v), y)      one plain backward, no reweighting

h_a, h_v are trainable linear heads on the (not detached) encoder features (`heads=separate`,
installed as model.aux["unimodal"]; they also give the unimodal accuracies). `heads=fusion` takes
the fusion head's own unimodal estimate instead (concat: the split W, b/2), which is what
BalanceBenchmark's "MMPareto" row effectively trains (docs/deviations.md). MMPareto and InfoReg
build on this class: the same three losses, then their own gradient rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..registry import METHODS
from ..schema import Choice
from .base import MODALITIES, Method, MethodConfig, UnimodalHeads

Heads = Choice("Heads", {v: v for v in ("separate", "fusion")})


@dataclass
class MultitaskConfig(MethodConfig):
    heads: Heads = Heads.separate   # separate = own linear heads (MMPareto) | fusion = the fusion head's estimate


@METHODS.register("multitask")
class Multitask(Method):
    Config = MultitaskConfig
    needs_two_modalities = True
    trace = ("mod/ratio",)
    brief = {"rho": "mod/ratio"}

    def __init__(self, cfg, model, *, device, seed):
        super().__init__(cfg, model, device=device, seed=seed)
        if str(cfg.heads) == "separate":
            dims = {m: model.encoders[m].out_dim for m in MODALITIES}
            model.aux["unimodal"] = UnimodalHeads(dims, model.head.num_classes).to(device)
        self.losses: dict[str, torch.Tensor] = {}  # this step's three losses, for a backward override

    def loss(self, out, batch, epoch):
        y = batch.label
        self.losses = {"fused": F.cross_entropy(out.logits, y), "audio": F.cross_entropy(out.logits_audio, y),
                       "visual": F.cross_entropy(out.logits_visual, y)}
        loss = self.losses["fused"] + self.losses["audio"] + self.losses["visual"]
        with torch.no_grad():
            s = self.scores(out, y)
            logs = {"train/loss": loss.detach(), "train/loss_audio": self.losses["audio"].detach(),
                    "train/loss_visual": self.losses["visual"].detach(),
                    "train/acc": (out.logits.argmax(1) == y).float().mean(),
                    "mod/ratio": s[0] / s[1]}
        return loss, logs

    def after_backward(self, model, out, batch, epoch):
        return {}  # no gradient edit: the plain sum
