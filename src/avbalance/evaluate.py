"""Batched evaluation: confusion matrices accumulated on the device, read once per split."""
from __future__ import annotations

import torch
import torch.nn.functional as F

HEADS = ("", "_audio", "_visual")  # fused, then the two unimodal estimates


def metrics_from_confusion(conf: torch.Tensor) -> tuple[float, float]:
    """conf [C, C] (rows = true) -> (accuracy, macro-F1 over classes seen in labels or predictions)."""
    conf = conf.double()
    tp = conf.diag()
    support, predicted = conf.sum(1), conf.sum(0)
    present = (support + predicted) > 0
    f1 = (2 * tp / (support + predicted).clamp(min=1))[present].mean()
    return (tp.sum() / conf.sum().clamp(min=1)).item(), f1.item()


@torch.no_grad()
def evaluate(model, data, split: str, device: torch.device, precision: str = "fp32") -> dict[str, float]:
    model.eval()
    C = data.num_classes
    conf = torch.zeros(len(HEADS), C * C, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    n = 0
    for batch in data.eval_batches(split, device):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(batch.audio, batch.visual)
        y = batch.label
        loss_sum += F.cross_entropy(out.logits.float(), y, reduction="sum")
        ones = torch.ones_like(y)
        for i, logits in enumerate((out.logits, out.logits_audio, out.logits_visual)):
            # index_add_, not bincount: bincount reads the max back to the host (a sync per batch)
            conf[i].index_add_(0, y * C + logits.argmax(1), ones)
        n += len(y)
    conf = conf.view(len(HEADS), C, C).cpu()  # the one host transfer
    result = {"loss": loss_sum.item() / max(n, 1)}
    for i, suffix in enumerate(HEADS):
        result[f"acc{suffix}"], result[f"f1{suffix}"] = metrics_from_confusion(conf[i])
    model.train()
    return result
