"""Evaluation beyond accuracy: mAP by hand, per-sample predictions, zeroed inputs, and mode=eval
(run_eval) on a trained toy run: eval.json, predictions CSVs, one-line checkpoint errors."""
import csv
import json

import pytest
import torch
import torch.nn as nn

from avbalance.data.base import Batch
from avbalance.errors import ConfigError
from avbalance.evalmode import run_eval
from avbalance.evaluate import average_precision, evaluate
from avbalance.models.fusion import FusionOutput
from avbalance.rundir import read_json
from avbalance.trainer import train

from conftest import make_cfg, shared_unless_mutating

CPU = torch.device("cpu")

# 6 samples, 4 classes; class 3 has no positive (left out of the mean). Rows sum to 1.
PROBS = torch.tensor([[0.70, 0.10, 0.10, 0.10],
                      [0.20, 0.50, 0.20, 0.10],
                      [0.45, 0.10, 0.15, 0.30],
                      [0.30, 0.40, 0.20, 0.10],
                      [0.10, 0.30, 0.50, 0.10],
                      [0.10, 0.20, 0.60, 0.10]])
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


class Rows:
    """A data module whose samples carry their row number as the audio input (batches of 4 and 2)."""
    num_classes, split_names, selection_split = 4, ["test"], "test"

    def eval_batches(self, split, device):
        for idx in torch.arange(6).split(4):
            yield Batch(idx.float().view(-1, 1), torch.ones(len(idx), 1), LABELS[idx], idx)


class LookUp(nn.Module):
    """Fused logits log(PROBS[row]) (softmax gives PROBS back); audio/visual heads: fixed rows' argmax."""

    def forward(self, audio, visual):
        rows = audio.view(-1).long()
        logits = PROBS[rows].log()
        return FusionOutput(logits, PROBS[rows].roll(1, dims=1), PROBS[rows] * visual)


def ap_by_hand(scores: list[float], positive: list[bool]) -> float:
    """Sort by score, precision at each positive's rank, mean over positives (no tied scores)."""
    ranked = [p for _, p in sorted(zip(scores, positive), key=lambda t: -t[0])]
    hits, precisions = 0, []
    for rank, p in enumerate(ranked, start=1):
        if p:
            hits += 1
            precisions.append(hits / rank)
    return sum(precisions) / len(precisions)


def test_map_is_the_mean_ap_over_classes_with_a_positive():
    """Guards: classes without a positive averaged in as 0 (or NaN), AP from unsorted scores,
    recall steps dropped (a plain mean of precisions over all ranks)."""
    # class 0: positives at ranks 1, 3 -> (1 + 2/3) / 2; class 1: ranks 1, 3 -> 5/6; class 2: ranks 1, 5 -> (1 + 2/5) / 2
    expected = [5 / 6, 5 / 6, 0.7]
    by_hand = [ap_by_hand(PROBS[:, c].tolist(), (LABELS == c).tolist()) for c in range(3)]
    assert by_hand == pytest.approx(expected)
    ap = average_precision(PROBS, LABELS)
    assert ap[:3].tolist() == pytest.approx(expected) and ap[3].isnan()
    r = evaluate(LookUp(), Rows(), "test", CPU)
    assert r["map"] == pytest.approx(sum(expected) / 3, rel=1e-6)


def test_average_precision_matches_sklearn_on_tied_scores():
    """Tied scores are one threshold (sklearn's rule), not ranked in input order."""
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randint(0, 4, (30, 3), generator=g).float()  # many ties
        y = torch.randint(0, 3, (30,), generator=g)
        ap = average_precision(scores, y)
        for c in range(3):
            if (y == c).any():
                assert ap[c].item() == pytest.approx(metrics.average_precision_score((y == c).numpy(), scores[:, c].numpy()))


def test_predictions_are_per_sample_and_leave_metrics_and_mode_alone():
    model, data = LookUp(), Rows()
    plain = evaluate(model.train(), data, "test", CPU)
    assert model.training  # the caller's mode comes back
    metrics, preds = evaluate(model.eval(), data, "test", CPU, predictions=True)
    assert metrics == plain and not model.training
    assert list(preds) == ["index", "label", "pred", "pred_audio", "pred_visual", "score"]
    assert preds["index"].tolist() == list(range(6)) and preds["label"].tolist() == LABELS.tolist()
    assert preds["pred"].tolist() == PROBS.argmax(1).tolist()
    assert preds["pred_audio"].tolist() == PROBS.roll(1, dims=1).argmax(1).tolist()
    assert torch.allclose(preds["score"], PROBS.max(1).values)


@pytest.mark.parametrize("zero", ["audio", "visual"])
def test_zero_replaces_that_input_by_zeros(zero):
    seen = []

    class Record(LookUp):
        def forward(self, audio, visual):
            seen.append((audio.clone(), visual.clone()))
            return super().forward(audio, visual)
    evaluate(Record(), Rows(), "test", CPU, zero=zero)
    a, v = (torch.cat(t) for t in zip(*seen))
    zeroed, kept = (a, v) if zero == "audio" else (v, a)
    assert torch.count_nonzero(zeroed) == 0 and torch.count_nonzero(kept) > 0
    with pytest.raises(ValueError):
        evaluate(LookUp(), Rows(), "test", CPU, zero="video")


# --- run_eval on a trained toy run ------------------------------------------------------------------
@pytest.fixture(scope=shared_unless_mutating)
def run(tmp_path_factory):
    cfg = make_cfg("epochs=2", "modulation=none")
    run_dir = tmp_path_factory.mktemp("run")
    return cfg, run_dir, train(cfg, run_dir)


def test_run_eval_writes_eval_json_and_predictions_that_reproduce_it(run, tmp_path, capsys):
    """Guards: a model built or loaded differently from train() (test/* must match summary.json's
    evaluation of best.pt), CSV rows out of step with labels or with the reported accuracy."""
    cfg, run_dir, summary = run
    result = run_eval(make_cfg("epochs=2", "modulation=none", "probe.enabled=true", "probe.epochs=2"),
                      run_dir / "ckpt" / "best.pt", tmp_path)
    assert read_json(tmp_path / "eval.json") == json.loads(json.dumps(result))
    assert result["epoch"] == summary["selected_epoch"]
    assert {k: result[k] for k in summary if k.startswith("test/")} == {k: v for k, v in summary.items() if k.startswith("test/")}
    assert {"test/map", "test/acc_without_audio", "test/acc_without_visual", "test/f1_without_audio",
            "test/f1_without_visual", "probe/val/acc_audio", "probe/test/f1_visual"} <= set(result)
    assert "fused" in capsys.readouterr().out
    from avbalance.data.toy import make_toy
    truth = make_toy(cfg.dataset, cfg.seed)
    for split in ("train", "val", "test"):
        rows = list(csv.DictReader((tmp_path / f"predictions_{split}.csv").open()))
        labels = truth[split][2]
        assert len(rows) == cfg.dataset[f"n_{split}"] == len(labels)
        assert [int(r["label"]) for r in rows] == labels[[int(r["index"]) for r in rows]].tolist()
        for col, key in (("pred", "acc"), ("pred_audio", "acc_audio"), ("pred_visual", "acc_visual")):
            acc = sum(r[col] == r["label"] for r in rows) / len(rows)
            assert acc == pytest.approx(result[f"{split}/{key}"]), (split, col)
        assert all(0 < float(r["score"]) <= 1 for r in rows)


def test_a_missing_checkpoint_is_one_line_naming_it(run, tmp_path):
    cfg, run_dir, _ = run
    with pytest.raises(ConfigError) as e:
        run_eval(cfg, run_dir / "ckpt" / "nope.pt", tmp_path)
    assert "\n" not in str(e.value) and "nope.pt" in str(e.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError) as e:
        run_eval(cfg, tmp_path / "junk.pt", tmp_path)
    assert "\n" not in str(e.value) and "junk.pt" in str(e.value)
    assert not (tmp_path / "eval.json").exists()


@pytest.mark.parametrize("override, named", [("fusion=sum", "head.fc_a.weight"),       # other keys
                                              ("model.width=8", "encoders.audio.trunk.0.weight")])  # other shapes
def test_a_checkpoint_that_does_not_fit_the_config_is_one_line_naming_the_keys(run, tmp_path, override, named):
    _, run_dir, _ = run
    with pytest.raises(ConfigError) as e:
        run_eval(make_cfg("modulation=none", override), run_dir / "ckpt" / "last.pt", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "last.pt" in msg and named in msg
    if override == "fusion=sum":
        assert "head.fc.weight" in msg  # the unexpected key, too


def test_run_eval_under_several_processes_is_refused_in_one_line(run, tmp_path, monkeypatch):
    from avbalance import distributed
    cfg, run_dir, _ = run
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match=r"^mode=eval runs in one process, got 2 \(torchrun or a SLURM job with several "
                                          r"tasks\); run it with python train.py$"):
        run_eval(cfg, run_dir / "ckpt" / "best.pt", tmp_path)
    assert not (tmp_path / "eval.json").exists() and distributed.env().world == 2
