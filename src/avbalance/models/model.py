"""The audio-visual classifier: two encoders and a fusion head."""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from ..registry import ENCODERS, FUSIONS
from .fusion import FusionOutput


def reference_init(m: nn.Module) -> None:
    """The reference's weight_init: Kaiming (fan_out) convs, BatchNorm (1, 0), Xavier linears, zero bias."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.xavier_normal_(m.weight)
        nn.init.zeros_(m.bias)


class AVClassifier(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module], head: nn.Module):
        super().__init__()
        # methods select parameters through this dict, never by parsing parameter names
        self.encoders = nn.ModuleDict(encoders)
        self.head = head
        # modules a method adds (saved and trained with the model); `aux["unimodal"]`, when a
        # method installs it, gives the unimodal logits from trainable heads (see methods.base)
        self.aux = nn.ModuleDict()

    def encode(self, audio: torch.Tensor, visual: torch.Tensor) -> dict[str, torch.Tensor]:
        """{modality: [B, D]}; a unimodal model's missing modality is an empty [B, 0] feature."""
        x = {"audio": audio, "visual": visual}
        return {m: self.encoders[m](x[m]) if m in self.encoders else x[m].new_zeros(len(x[m]), 0) for m in x}

    def fuse(self, feats: dict[str, torch.Tensor]) -> FusionOutput:
        """The head on (possibly transformed) features; the output keeps the features (feature losses)."""
        out = self.head(feats["audio"], feats["visual"])
        if "unimodal" in self.aux:  # trainable unimodal heads replace the head's own estimate
            out = replace(out, **self.aux["unimodal"](feats))
        out.features = feats
        return out

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> FusionOutput:
        return self.fuse(self.encode(audio, visual))

    def encoder_params(self, modality: str, scope: str = "all") -> list[nn.Parameter]:
        """`scope=conv`: the 4-D conv kernels only (the reference's `len(grad.size()) == 4`)."""
        if modality not in self.encoders:  # a unimodal model
            return []
        params = [p for p in self.encoders[modality].parameters() if p.requires_grad]
        return [p for p in params if p.dim() == 4] if scope == "conv" else params

    def head_params(self) -> list[nn.Parameter]:
        return [p for p in self.head.parameters() if p.requires_grad]


class UnimodalHead(nn.Module):
    """`model.modalities=audio|visual`: one encoder and a linear head (the paper's unimodal
    columns). Both unimodal outputs are the model's own logits, so the loop and the metrics run
    unchanged; balancing methods do not apply (config.validate asks for modulation=none)."""

    def __init__(self, modality: str, dim: int, num_classes: int):
        super().__init__()
        self.modality = modality
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> FusionOutput:
        logits = self.fc(a if self.modality == "audio" else v)
        return FusionOutput(logits, logits, logits)


def build_model(model_cfg, fusion_cfg, num_classes: int) -> AVClassifier:
    modalities = str(model_cfg.get("modalities", "both"))
    enc_kwargs = {k: v for k, v in model_cfg.items() if k not in ("name", "modalities")}
    encoders = ENCODERS.get(model_cfg.name)(**enc_kwargs)
    if modalities != "both":
        encoders = {modalities: encoders[modalities]}
        head = UnimodalHead(modalities, encoders[modalities].out_dim, num_classes)
    else:
        fus_kwargs = {k: v for k, v in fusion_cfg.items() if k != "name"}
        head = FUSIONS.get(fusion_cfg.name)(encoders["audio"].out_dim, encoders["visual"].out_dim, num_classes, **fus_kwargs)
    model = AVClassifier(encoders, head)
    model.apply(reference_init)
    return model
