"""After training: how much the fused prediction leans on each input (missing-modality accuracy),
and what each frozen encoder knows on its own (a linear probe on its features)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .evaluate import evaluate, metrics_from_confusion

MODALITIES = ("audio", "visual")


def missing_modality(model, data, split: str, device: torch.device, precision: str = "fp32") -> dict[str, float]:
    """Fused metrics of `split` with each input replaced by zeros in turn.
    -> {acc_without_audio, f1_without_audio, acc_without_visual, f1_without_visual}"""
    result = {}
    for m in MODALITIES:
        r = evaluate(model, data, split, device, precision, zero=m)
        result[f"acc_without_{m}"], result[f"f1_without_{m}"] = r["acc"], r["f1"]
    return result


@torch.no_grad()
def _features(model, data, split: str, device, precision: str, modalities) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The frozen encoders on `split` with the evaluation transform -> ({modality: [N, D]}, labels [N]), on the device."""
    feats, labels = {m: [] for m in modalities}, []
    for batch in data.eval_batches(split, device):
        x = {"audio": batch.audio, "visual": batch.visual}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            for m in modalities:
                feats[m].append(model.encoders[m](x[m]).float())
        labels.append(batch.label)
    return {m: torch.cat(f) for m, f in feats.items()}, torch.cat(labels)


def _fit_probe(x, y, x_sel, y_sel, num_classes: int, epochs: int, lr: float, batch_size: int, g: torch.Generator) -> nn.Linear:
    """Adam on cached features [N, D]; keeps the weights of the epoch with the best accuracy on
    (x_sel, y_sel), chosen on the device (no host read per epoch; the earliest epoch wins ties)."""
    probe = nn.utils.skip_init(nn.Linear, x.shape[1], num_classes, device=x.device)  # no draw from the global RNG
    for p in probe.parameters():  # a convex problem: zero is a fine start
        nn.init.zeros_(p)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    best = {k: v.clone() for k, v in probe.state_dict().items()}
    best_acc = torch.full((), -1.0, device=x.device)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g, device=x.device).split(batch_size):
            loss = F.cross_entropy(probe(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = (probe(x_sel).argmax(1) == y_sel).float().mean()
            better = acc > best_acc
            best_acc = torch.maximum(acc, best_acc)
            best = {k: torch.where(better, v, best[k]) for k, v in probe.state_dict().items()}
    probe.load_state_dict(best)
    return probe


def linear_probe(model, data, device: torch.device, *, epochs: int = 50, lr: float = 1e-3, batch_size: int = 256,
                 seed: int = 0, precision: str = "fp32") -> dict[str, float]:
    """A new linear classifier per modality on the frozen encoders' train-split features (evaluation
    transform), its epoch selected on `data.selection_split`. Leaves the model's weights, its
    train/eval mode and the global RNG as they were. -> {probe/<split>/acc_<m>, probe/<split>/f1_<m>}
    for the selection split and test, for each modality the model has an encoder for."""
    modalities = [m for m in MODALITIES if m in model.encoders]
    sel = data.selection_split
    report = list(dict.fromkeys([sel] + (["test"] if "test" in data.split_names else [])))
    splits = list(dict.fromkeys(["train", *report]))
    was_training = model.training
    model.eval()  # BatchNorm uses (and keeps) its running statistics
    try:
        feats = {s: _features(model, data, s, device, precision, modalities) for s in splits}
    finally:
        model.train(was_training)
    C, result = data.num_classes, {}
    y = {s: labels for s, (_, labels) in feats.items()}
    for m in modalities:
        # standardised with the train split's statistics (as MAE's affine-free BatchNorm before its
        # probe): Adam from zero then converges in few steps whatever the features' scale
        mu, sd = feats["train"][0][m].mean(0), feats["train"][0][m].std(0, correction=0).clamp(min=1e-6)
        x = {s: (f[m] - mu) / sd for s, (f, _) in feats.items()}  # {split: [N, D]}
        g = torch.Generator(device=device).manual_seed(seed)  # per modality: a probe does not depend on the other
        with torch.enable_grad():
            probe = _fit_probe(x["train"], y["train"], x[sel], y[sel], C, epochs, lr, batch_size, g)
        for s in report:
            with torch.no_grad():
                pred = probe(x[s]).argmax(1)
            conf = torch.bincount((y[s] * C + pred).cpu(), minlength=C * C).view(C, C)
            result[f"probe/{s}/acc_{m}"], result[f"probe/{s}/f1_{m}"] = metrics_from_confusion(conf)
    return result
