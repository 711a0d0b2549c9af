"""On CUDA: no host synchronisation in the training step (data path included) or in evaluation,
under PyTorch's own detector (`torch.cuda.set_sync_debug_mode("error")`). Skips without CUDA;
on the CPU, tests/test_core_claims.py checks the same loop at the level of PyTorch's operators."""
import pytest
import torch

import avbalance.trainer as trainer_module
from avbalance.data.prepared import PreparedData
from avbalance.trainer import train

from conftest import make_cfg
from test_prepared_loader import make_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")


class SyncErrors:
    """Every host sync inside the block raises (set_sync_debug_mode 'error')."""

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("precision,preload", [("fp32", "off"), ("bf16", "off"), ("bf16", "all")])
def test_ogm_ge_steps_and_evaluate_on_prepared_data_never_sync(tmp_path, monkeypatch, precision, preload):
    root = make_dataset(tmp_path / "data", splits=(("train", 40), ("val", 9), ("test", 9)), skip=())
    steps = []

    def guarded_loop(iterable, **_):  # stands in for tqdm: from the second step on, syncs raise,
        it = iter(iterable)              # in the step and in fetching the next batch (the data path)
        for batch in it:
            steps.append(batch)
            yield batch  # the first step makes GE's noise buffer and cudnn's plans
            break
        with SyncErrors():
            for batch in it:
                steps.append(batch)
                yield batch
    monkeypatch.setattr(trainer_module, "tqdm", guarded_loop)
    real_eval = PreparedData.eval_batches

    def guarded_eval(self, split, device=None):
        it = real_eval(self, split, device)
        yield next(it)  # the first batch starts the reader
        with SyncErrors():
            yield from it
    monkeypatch.setattr(PreparedData, "eval_batches", guarded_eval)
    cfg = make_cfg("dataset=custom", f"dataset.root={root}", "dataset.num_classes=3", "dataset.image_size=16",
                   "dataset.frames=2", "dataset.selection_split=val", "model=tiny", "model.width=8", "batch_size=8",
                   "modulation=ogm_ge", "modulation.alpha=0.8", "epochs=2", "device=cuda", f"precision={precision}",
                   f"speed.preload={preload}", tiny=False)
    summary = train(cfg, tmp_path / "run")
    assert len(steps) == 2 * 5 and 0 <= summary["test/acc"] <= 1


@pytest.mark.parametrize("crop_per,preload", [("frame", "off"), ("clip", "off"), ("frame", "all")])
def test_train_batches_never_sync(tmp_path, crop_per, preload):
    # the data path on its own: the read, the pinned copies, the crop boxes and flips and the
    # normalisation of every batch after the first (which starts the reader, caches the constants)
    from test_prepared_loader import cfg as data_cfg
    data = PreparedData(data_cfg(make_dataset(tmp_path / "data"), crop_per=crop_per), seed=0, batch_size=4,
                        preload=preload)
    it = data.train_batches(0, torch.device("cuda"))  # preload=all: the first batch makes the copy
    first = next(it)
    n = 1
    with SyncErrors():
        for batch in it:
            n += 1
            assert batch.visual.is_cuda and batch.audio.is_cuda and batch.label.is_cuda
    assert first.visual.is_cuda and n == data.num_batches("train") > 2


@pytest.mark.parametrize("kept_views", [False, True])
def test_ge_noise_buffer_draws_what_randn_drew_on_cuda(kept_views):
    # the flat buffer refilled by normal_ gives the values torch.randn(n) gave (the owner-index form)
    from test_ogm_contract import _grads, old_modulate_
    from avbalance.methods.ogm import NoiseBuffer, modulate_
    a = [g.cuda() for g in _grads(torch.float32)]
    b = [g.clone() for g in a]
    buf = torch.empty(500, device="cuda")
    buf = NoiseBuffer(buf) if kept_views else buf
    k = torch.tensor(0.5, device="cuda")
    ga, gb = (torch.Generator(device="cuda").manual_seed(3) for _ in range(2))
    for _ in range(2):
        old_modulate_(a, k, ga)
        with SyncErrors():
            modulate_(b, k, gb, buf)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_bf16_runs_the_forward_in_bfloat16_and_keeps_fp32_weights(tmp_path, monkeypatch):
    # CUDA's autocast default is float16: a run that dropped dtype=bfloat16 would train in fp16
    # (no loss scaling) while saying bf16; on the CPU the default is bfloat16, so only here it shows
    seen, models = [], []
    real_build = trainer_module.build_model

    def recording_build(*a, **kw):
        model = real_build(*a, **kw)
        model.head.register_forward_hook(lambda m, i, out: seen.append(out.logits.dtype))
        models.append(model)
        return model
    monkeypatch.setattr(trainer_module, "build_model", recording_build)
    cfg = make_cfg("modulation=ogm_ge", "epochs=1", "device=cuda", "precision=bf16")
    train(cfg, tmp_path / "run")
    assert seen and set(seen) == {torch.bfloat16}
    assert {p.dtype for p in models[0].parameters()} == {torch.float32}


def test_speed_settings_are_in_force_while_training(tmp_path, monkeypatch):
    # speed.* defaults: channels_last weights, cudnn.benchmark, the fused SGD kernel
    made = {}
    real_opt = trainer_module.build_optimizer

    def recording_opt(cfg, groups, **kw):
        made["optimizer"] = real_opt(cfg, groups, **kw)
        return made["optimizer"]
    monkeypatch.setattr(trainer_module, "build_optimizer", recording_opt)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    train(make_cfg("modulation=ogm_ge", "epochs=1", "device=cuda", "precision=bf16"), tmp_path / "run")
    opt = made["optimizer"]
    assert opt.defaults["fused"] is True and torch.backends.cudnn.benchmark is True
    convs = [p for g in opt.param_groups for p in g["params"] if p.dim() == 4]
    assert convs and all(p.is_cuda and p.is_contiguous(memory_format=torch.channels_last) for p in convs)
