"""Batched evaluation: per-sample outputs collected on the device, read once per split."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import distributed

HEADS = ("", "_audio", "_visual")  # fused, then the two unimodal estimates
PRED_COLUMNS = ("index", "label", "pred", "pred_audio", "pred_visual", "score")


def metrics_from_confusion(conf: torch.Tensor) -> tuple[float, float]:
    """conf [C, C] (rows = true) -> (accuracy, macro-F1 over classes seen in labels or predictions)."""
    conf = conf.double()
    tp = conf.diag()
    support, predicted = conf.sum(1), conf.sum(0)
    present = (support + predicted) > 0
    f1 = (2 * tp / (support + predicted).clamp(min=1))[present].mean()
    return (tp.sum() / conf.sum().clamp(min=1)).item(), f1.item()


def average_precision(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """scores [N, C], y [N] -> one-vs-rest AP per class [C], NaN for a class with no positive.
    sklearn's AP = sum_n (R_n - R_{n-1}) P_n over the distinct thresholds: each positive adds
    1/P times the precision at the last rank of its block of tied scores."""
    N, C = scores.shape
    s, order = scores.double().sort(0, descending=True)                          # [N, C] each
    pos = (y[order] == torch.arange(C, device=y.device)).double()                # [N, C]: rank i of class c is positive
    rank = torch.arange(N, device=y.device).unsqueeze(1).expand(N, C)            # [N, C]
    precision = pos.cumsum(0) / (rank + 1)
    block_end = torch.ones_like(pos, dtype=torch.bool)
    block_end[:-1] = s[:-1] != s[1:]
    end = torch.where(block_end, rank, N).flip(0).cummin(0).values.flip(0)      # next block end at or after each rank
    return (pos * precision.gather(0, end)).sum(0) / pos.sum(0)


@torch.no_grad()
def evaluate(model, data, split: str, device: torch.device, precision: str = "fp32", *,
             zero: str | None = None, predictions: bool = False):
    """-> {loss, acc, f1, acc_audio, f1_audio, acc_visual, f1_visual, map} of `split`; map is the mean
    over classes (with a positive) of the fused softmax's one-vs-rest AP. `zero="audio"|"visual"`:
    that input is replaced by zeros (a missing modality). `predictions=True` returns (metrics,
    {column: [N] CPU tensor} for PRED_COLUMNS); score is the fused softmax of the predicted class."""
    if zero not in (None, "audio", "visual"):
        raise ValueError(f"zero={zero!r}; expected None, 'audio' or 'visual'")
    was_training = model.training
    model.eval()
    C = data.num_classes
    loss_sum = torch.zeros((), device=device)
    ids, probs = [], []  # per batch: [5, B] index, label and the three heads' argmax; [B, C] fused softmax
    # under DDP each process evaluates every world-th row and the outputs are gathered below
    shard = distributed.active()
    if shard:
        e = distributed.env()
        batches = data.eval_batches(split, device, torch.arange(data.num_rows(split))[e.rank::e.world])
    else:
        batches = data.eval_batches(split, device)
    for batch in batches:
        x = {"audio": batch.audio, "visual": batch.visual}
        if zero is not None:
            x[zero] = torch.zeros_like(x[zero])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x["audio"], x["visual"])
        logits = out.logits.float()
        loss_sum += F.cross_entropy(logits, batch.label, reduction="sum")
        ids.append(torch.stack([batch.index, batch.label, out.logits.argmax(1), out.logits_audio.argmax(1),
                                out.logits_visual.argmax(1)]))
        probs.append(logits.softmax(1))
    model.train(was_training)
    # the host transfers, once per split
    ids = torch.cat(ids, 1).cpu() if ids else torch.zeros(5, 0, dtype=torch.long)   # [5, N]
    probs = torch.cat(probs).cpu() if probs else torch.zeros(0, C)                   # [N, C]
    loss_sum = loss_sum.cpu()
    if shard:  # every process gets the whole split, in row order: each sample counted once
        parts = distributed.gather((ids, probs, loss_sum))
        ids, probs = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts])
        loss_sum = sum(p[2] for p in parts)
        order = ids[0].argsort()
        ids, probs = ids[:, order], probs[order]
    index, y, *preds = ids
    result = {"loss": loss_sum.item() / max(len(y), 1)}
    for suffix, p in zip(HEADS, preds):
        conf = torch.bincount(y * C + p, minlength=C * C).view(C, C)
        result[f"acc{suffix}"], result[f"f1{suffix}"] = metrics_from_confusion(conf)
    result["map"] = average_precision(probs, y).nanmean().item()
    if not predictions:
        return result
    score = probs.gather(1, preds[0].unsqueeze(1)).squeeze(1)                        # [N]
    return result, dict(zip(PRED_COLUMNS, (index, y, *preds, score)))
