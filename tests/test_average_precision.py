"""One-vs-rest average precision (evaluate's `map`), against hand values and a threshold-by-threshold oracle."""
import math

import pytest
import torch

from avbalance.evaluate import average_precision


def oracle_ap(scores, y, c):
    """sklearn's definition, written out: AP = sum over distinct thresholds t (high to low) of
    (R(t) - R(previous t)) * P(t), predicting positive every sample with score >= t."""
    n_pos = sum(1 for label in y if label == c)
    if n_pos == 0:
        return math.nan
    ap, last_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        picked = [label for s, label in zip(scores, y) if s >= t]
        tp = sum(1 for label in picked if label == c)
        recall = tp / n_pos
        ap += (recall - last_recall) * tp / len(picked)
        last_recall = recall
    return ap


def ap_of_one_column(scores, positive):
    """AP of class 1 from a single score column (class 0 gets the complement, unused)."""
    s = torch.tensor(scores, dtype=torch.float64)
    y = torch.tensor([1 if p else 0 for p in positive])
    return average_precision(torch.stack([1 - s, s], 1), y)[1].item()


def test_distinct_scores_by_hand():
    # positives at ranks 1 and 3 of 4: (1/2)(1/1) + (1/2)(2/3)
    assert ap_of_one_column([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.5 + 1 / 3)
    # positives last: (1/2)(1/3) + (1/2)(2/4)
    assert ap_of_one_column([0.9, 0.8, 0.7, 0.6], [0, 0, 1, 1]) == pytest.approx(1 / 6 + 1 / 4)
    # perfect ranking
    assert ap_of_one_column([0.9, 0.8, 0.7, 0.6], [1, 1, 0, 0]) == pytest.approx(1.0)


def test_tied_scores_count_at_the_end_of_their_block():
    # ranks 0 | 1 2 (tied) | 3; positives at 0 and in the tie: (1/2)(1/1) + (1/2)(2/3)
    assert ap_of_one_column([0.9, 0.5, 0.5, 0.1], [1, 0, 1, 0]) == pytest.approx(0.5 + 1 / 3)
    # the positive's place inside the tie does not matter
    assert ap_of_one_column([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.5 + 1 / 3)
    # a positive in the tie and one last: (1/2)(1/3) + (1/2)(2/4)
    assert ap_of_one_column([0.9, 0.5, 0.5, 0.1], [0, 1, 0, 1]) == pytest.approx(1 / 6 + 1 / 4)
    # everything tied: precision = the positive rate, at recall 1
    assert ap_of_one_column([0.3, 0.3, 0.3, 0.3], [0, 1, 0, 0]) == pytest.approx(1 / 4)
    # a tie at the top, then the rest
    assert ap_of_one_column([0.8, 0.8, 0.2], [0, 1, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_a_class_without_positive_is_nan():
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    ap = average_precision(scores, torch.tensor([0, 1]))
    assert ap[0].item() == 1.0 and ap[1].item() == 1.0 and math.isnan(ap[2].item())


def test_single_sample():
    ap = average_precision(torch.tensor([[0.4, 0.6]]), torch.tensor([1]))
    assert math.isnan(ap[0].item()) and ap[1].item() == 1.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [0, 4])  # 0: continuous scores; 4: rounded, many ties
def test_random_scores_match_the_threshold_oracle(seed, levels):
    g = torch.Generator().manual_seed(seed)
    N, C = 23, 5
    scores = torch.rand(N, C, generator=g, dtype=torch.float64)
    if levels:
        scores = (scores * levels).round() / levels
    y = torch.randint(0, C - 1, (N,), generator=g)  # the last class has no positive
    ap = average_precision(scores, y)
    assert ap.shape == (C,) and ap.dtype == torch.float64
    for c in range(C):
        want = oracle_ap(scores[:, c].tolist(), y.tolist(), c)
        if math.isnan(want):
            assert math.isnan(ap[c].item())
        else:
            assert ap[c].item() == pytest.approx(want, abs=1e-12), c


def test_float32_scores_are_ranked_in_double():
    scores = torch.tensor([[0.25, 0.75], [0.75, 0.25], [0.5, 0.5]], dtype=torch.float32)
    ap = average_precision(scores, torch.tensor([1, 0, 1]))
    assert ap.dtype == torch.float64
    # class 1: scores .75(+) .5(+) .25(-) -> 1; class 0: .75(+) .5(-) .25(-) -> 1
    assert ap.tolist() == [1.0, 1.0]


def test_follows_the_inputs_device_not_torchs_default_device():
    # everything average_precision creates must live on the scores' device: with another default
    # device (here meta), a tensor made without device= would not meet the inputs
    s, y = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]), torch.tensor([1, 0, 0])
    expected = average_precision(s, y)
    torch.set_default_device("meta")
    try:
        got = average_precision(s, y)
    finally:
        torch.set_default_device(None)
    assert got.device.type == "cpu" and torch.equal(got, expected)
