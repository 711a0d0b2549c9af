"""Accuracy and macro-F1 from confusion matrices, checked against hand counts and a per-sample oracle."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from avbalance.data.base import Batch
from avbalance.evaluate import evaluate, metrics_from_confusion
from avbalance.models.fusion import FusionOutput


def confusion(pairs, C):
    conf = torch.zeros(C, C, dtype=torch.long)
    for t, p in pairs:
        conf[t, p] += 1
    return conf


def oracle(pairs, C):
    """Accuracy and macro-F1 over the classes that occur as a label or a prediction, sample by sample."""
    acc = sum(t == p for t, p in pairs) / len(pairs)
    f1s = []
    for c in range(C):
        tp = sum(t == c and p == c for t, p in pairs)
        fp = sum(t != c and p == c for t, p in pairs)
        fn = sum(t == c and p != c for t, p in pairs)
        if tp + fp + fn == 0:
            continue  # class never seen: not part of the macro average
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return acc, sum(f1s) / len(f1s)


def test_hand_counted_matrix():
    # rows = true class. class 1 is only predicted (once), class 3 never occurs
    conf = torch.tensor([[3, 1, 0, 0],
                         [0, 0, 0, 0],
                         [1, 0, 1, 0],
                         [0, 0, 0, 0]])
    acc, f1 = metrics_from_confusion(conf)
    assert acc == pytest.approx(4 / 6)
    # F1: class 0 = 2*3/(4+4), class 1 = 0 (predicted once, never right), class 2 = 2*1/(2+1); class 3 absent
    assert f1 == pytest.approx((6 / 8 + 0.0 + 2 / 3) / 3)


def test_a_class_seen_once_counts_in_the_macro_average():
    # class 1 appears once, as a label only (support + predicted = 1): it is present, with F1 0
    conf = torch.tensor([[2, 0], [1, 0]])
    acc, f1 = metrics_from_confusion(conf)
    assert acc == pytest.approx(2 / 3)
    assert f1 == pytest.approx((2 * 2 / (2 + 3) + 0.0) / 2)


def test_single_sample():
    acc, f1 = metrics_from_confusion(torch.tensor([[0, 0, 0], [0, 1, 0], [0, 0, 0]]))
    assert acc == 1.0 and f1 == 1.0
    acc, f1 = metrics_from_confusion(torch.tensor([[0, 1], [0, 0]]))
    assert acc == 0.0 and f1 == 0.0


def test_perfect_and_all_wrong():
    assert metrics_from_confusion(torch.diag(torch.tensor([5, 2, 7]))) == (1.0, 1.0)
    acc, f1 = metrics_from_confusion(torch.tensor([[0, 4], [3, 0]]))
    assert acc == 0.0 and f1 == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_random_predictions_match_a_per_sample_oracle(seed):
    g = torch.Generator().manual_seed(seed)
    C, n = 7, 40
    true = torch.randint(0, C - 2, (n,), generator=g).tolist()   # the last two classes never a label
    pred = torch.randint(0, C - 1, (n,), generator=g).tolist()   # the last class never predicted either
    pairs = list(zip(true, pred))
    acc, f1 = metrics_from_confusion(confusion(pairs, C))
    ref_acc, ref_f1 = oracle(pairs, C)
    assert acc == pytest.approx(ref_acc, abs=1e-12) and f1 == pytest.approx(ref_f1, abs=1e-12)


# ----------------------------------------------------------------------------- evaluate() end to end


class FixedModel(nn.Module):
    """Logits written in the batch's audio tensor: [fused | audio | visual] along dim 1."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, audio, visual):
        fused, a, v = audio.chunk(3, dim=1)
        return FusionOutput(fused + self.w, a, v)


class FixedData:
    num_classes = 3

    def __init__(self, batches):
        self.batches = batches

    def eval_batches(self, split, device):
        assert split == "val"
        return iter(self.batches)


def test_evaluate_over_batches():
    g = torch.Generator().manual_seed(0)
    batches, all_logits, all_y = [], [], []
    for n in (5, 3):  # a last partial batch
        logits = torch.randn(n, 9, generator=g)
        y = torch.randint(0, 3, (n,), generator=g)
        batches.append(Batch(logits, torch.zeros(n, 1), y, torch.arange(n)))
        all_logits.append(logits)
        all_y.append(y)
    logits, y = torch.cat(all_logits), torch.cat(all_y)
    model = FixedModel()
    model.train()
    result = evaluate(model, FixedData(batches), "val", torch.device("cpu"))
    assert model.training  # evaluation leaves the model in training mode again
    assert result["loss"] == pytest.approx(F.cross_entropy(logits[:, :3], y).item(), rel=1e-6)
    for i, suffix in enumerate(("", "_audio", "_visual")):
        pred = logits[:, 3 * i: 3 * i + 3].argmax(1)
        ref_acc, ref_f1 = oracle(list(zip(y.tolist(), pred.tolist())), 3)
        assert result[f"acc{suffix}"] == pytest.approx(ref_acc) and result[f"f1{suffix}"] == pytest.approx(ref_f1)
    assert not math.isnan(result["loss"])
