"""eval_batch_size: evaluation passes cut a split into batches of that size (training keeps
batch_size), and what they compute does not depend on it (eval-mode BatchNorm)."""
import pytest
import torch
from omegaconf import OmegaConf

from avbalance.data.base import HeldOut
from avbalance.data.prepared import build
from avbalance.data.toy import build_toy
from avbalance.errors import ConfigError
from avbalance.evaluate import evaluate
from avbalance.models import build_model
from avbalance.trainer import train

from conftest import make_cfg
from test_prepared_loader import cfg as prepared_cfg
from test_prepared_loader import make_dataset

CPU = torch.device("cpu")


def _toy(eval_batch_size=None):
    cfg = make_cfg()
    return cfg, build_toy(cfg.dataset, seed=0, batch_size=16, eval_batch_size=eval_batch_size, device=CPU)


def test_toy_eval_batches_use_eval_batch_size_and_train_keeps_batch_size():
    cfg, data = _toy(eval_batch_size=50)
    n_val, n_train = data.num_rows("val"), data.num_rows("train")
    sizes = [len(b) for b in data.eval_batches("val")]
    assert sizes == [50] * (n_val // 50) + ([n_val % 50] if n_val % 50 else [])
    assert torch.equal(torch.cat([b.index for b in data.eval_batches("val")]), torch.arange(n_val))  # every row, in order
    assert data.num_batches("val") == len(sizes) and data.num_batches("train") == -(-n_train // 16)
    assert {len(b) for b in list(data.train_batches(0))[:-1]} == {16}
    assert _toy()[1].eval_batch_size == 16  # not given: the training batch


def test_heldout_split_counts_in_eval_batches():
    _, data = _toy(eval_batch_size=7)
    view = HeldOut(data, 0.25, seed=0)
    n = view.num_rows("heldout")
    assert view.num_batches("heldout") == -(-n // 7) == len(list(view.eval_batches("heldout")))
    assert view.num_batches("train") == -(-view.num_rows("train") // 16)


def test_prepared_eval_batches_use_eval_batch_size(tmp_path):
    root = make_dataset(tmp_path / "data", skip=())
    data = build(prepared_cfg(root), seed=0, batch_size=4, eval_batch_size=5)
    assert [len(b) for b in data.eval_batches("test")] == [5, 4] and data.num_batches("test") == 2
    assert {len(b) for b in list(data.train_batches(0))[:-1]} == {4} and data.num_batches("train") == 6


def test_evaluation_does_not_depend_on_the_eval_batch():
    cfg, small = _toy(eval_batch_size=7)
    _, large = _toy(eval_batch_size=256)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.fusion, small.num_classes)
    model.train()
    for b in list(small.train_batches(0))[:3]:  # move the BatchNorm statistics off their initial values
        model(b.audio, b.visual)
    a, b = evaluate(model, small, "val", CPU), evaluate(model, large, "val", CPU)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k


@pytest.mark.parametrize("value", [0, -4])
def test_a_non_positive_eval_batch_size_is_refused(tmp_path, value):
    with pytest.raises(ConfigError, match=f"eval_batch_size={value}"):
        train(make_cfg(f"eval_batch_size={value}"), tmp_path / "run")


def test_the_trainer_hands_eval_batch_size_to_the_dataset(tmp_path, monkeypatch):
    import avbalance.trainer as trainer_module
    seen = []
    real = trainer_module.evaluate

    def recording(model, data, split, *a, **kw):
        seen.append((split, data.eval_batch_size, [len(b) for b in data.eval_batches(split)]))
        return real(model, data, split, *a, **kw)
    monkeypatch.setattr(trainer_module, "evaluate", recording)
    cfg = make_cfg("eval_batch_size=33", "epochs=1")
    train(cfg, tmp_path / "run")
    assert seen and all(ebs == 33 and max(sizes) == 33 for _, ebs, sizes in seen)
    assert OmegaConf.to_container(make_cfg())["eval_batch_size"] == 256
