"""PMR's math on hand-made tensors: prototype distances and logits, class means with a missing
class, the EMA, which modality gets the prototype cross-entropy, the window, and PER."""
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from avbalance.data.base import Batch
from avbalance.errors import ConfigError
from avbalance.methods.pmr import PMR, class_means, prototype_logits, update_prototypes
from avbalance.models.fusion import FusionOutput

CPU = torch.device("cpu")


def test_prototype_logits_are_negative_euclidean_distances():
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    c = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    want = [[-0.0, -math.sqrt(2), -3.0], [-5.0, -math.sqrt(4 + 9), -4.0]]
    assert prototype_logits(z, c).flatten().tolist() == pytest.approx([x for row in want for x in row], abs=1e-6)


def test_prototype_logits_stay_exact_for_many_rows_far_from_the_origin():
    # > 25 rows: torch's default cdist switches to |x|^2 + |c|^2 - 2 x.c, off by ~0.1 here in float32
    z = torch.tensor([[1000.0 + i, 2000.0 - 0.5 * i] for i in range(26)])
    c = torch.tensor([[1000.0, 2000.0], [1003.0, 2004.0]])
    want = [-math.dist(zi, ck) for zi in z.tolist() for ck in c.tolist()]
    assert prototype_logits(z, c).flatten().tolist() == pytest.approx(want, abs=1e-4)


def test_the_distance_has_a_finite_gradient_into_the_features():
    z = torch.tensor([[1.0, 2.0], [0.5, -1.0]], requires_grad=True)
    F.cross_entropy(prototype_logits(z, torch.tensor([[0.0, 0.0], [2.0, 2.0]])), torch.tensor([1, 0])).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


class TwoFeatures(torch.nn.Module):
    """encode(audio, visual) -> the inputs themselves: features chosen by the test."""

    def encode(self, audio, visual):
        return {"audio": audio, "visual": visual}


def test_class_means_by_hand_and_a_missing_class_keeps_its_old_prototype():
    a = torch.tensor([[1.0, 0.0], [3.0, 2.0], [10.0, 10.0]])
    v = torch.tensor([[0.0], [2.0], [4.0]])
    y = torch.tensor([0, 0, 2])  # class 1 absent
    batches = [Batch(a[:2], v[:2], y[:2], torch.arange(2)), Batch(a[2:], v[2:], y[2:], torch.arange(2, 3))]
    new, counts = class_means(TwoFeatures(), batches, 3)
    assert counts.tolist() == [2, 0, 1]
    assert new["audio"].tolist() == [[2.0, 1.0], [0.0, 0.0], [10.0, 10.0]]
    assert new["visual"].tolist() == [[1.0], [0.0], [4.0]]
    old = {"audio": torch.full((3, 2), 7.0), "visual": torch.full((3, 1), 5.0)}
    out = update_prototypes(old, new, counts, momentum=0.25, ema=False)
    assert out["audio"].tolist() == [[2.0, 1.0], [7.0, 7.0], [10.0, 10.0]]   # no 0/0: class 1 keeps 7
    out = update_prototypes(old, new, counts, momentum=0.25, ema=True)
    assert out["audio"].tolist() == [[0.75 * 2 + 0.25 * 7, 0.75 * 1 + 0.25 * 7], [7.0, 7.0], [0.75 * 10 + 1.75] * 2]
    assert out["visual"].tolist() == [[0.75 * 1 + 0.25 * 5], [5.0], [0.75 * 4 + 0.25 * 5]]


def config(overrides=None):
    return OmegaConf.create({"name": "pmr", "alpha": 2.0, "momentum": 0.0, "subset": 0.1, "start_epoch": 0,
                             "end_epoch": 10, "per_weight": 0.0, "per_epochs": 0, "subset_stream": 103,
                             **(overrides or {})})


def method(overrides=None):
    m = PMR(config(overrides), None, device=CPU, seed=0)
    # prototypes: audio classes far apart (audio is confident), visual classes close (visual is not)
    m.protos = {"audio": torch.tensor([[0.0, 0.0], [4.0, 0.0]]), "visual": torch.tensor([[0.0], [0.5]])}
    return m


def step(za, zv, y):
    za, zv = za.clone().requires_grad_(), zv.clone().requires_grad_()
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])[: len(y)]
    out = FusionOutput(logits, logits, logits, features={"audio": za, "visual": zv})
    return out, Batch(torch.zeros(len(y), 1), torch.zeros(len(y), 1), y, torch.arange(len(y))), za, zv


def ce_by_hand(rows, y):
    return sum(math.log(sum(math.exp(v) for v in r)) - r[t] for r, t in zip(rows, y)) / len(y)


def proto_rows(z, c):
    return [[-math.dist(zi, ck) for ck in c] for zi in z]


def true_prob_sum(rows, y):
    return sum(math.exp(r[t]) / sum(math.exp(v) for v in r) for r, t in zip(rows, y))


def test_the_slower_modality_gets_alpha_times_its_prototype_cross_entropy():
    m = method()
    za, zv, y = torch.tensor([[0.5, 0.0], [3.0, 1.0]]), torch.tensor([[0.1], [0.3]]), torch.tensor([0, 1])
    out, batch, za_, zv_ = step(za, zv, y)
    loss, logs = m.loss(out, batch, epoch=0)
    la, lv = proto_rows(za.tolist(), m.protos["audio"].tolist()), proto_rows(zv.tolist(), m.protos["visual"].tolist())
    rho = true_prob_sum(la, [0, 1]) / true_prob_sum(lv, [0, 1])
    assert rho > 1 and logs["mod/proto_ratio"].item() == pytest.approx(rho, rel=1e-5)
    fused = ce_by_hand(out.logits.tolist(), [0, 1])
    assert loss.item() == pytest.approx(fused + 2.0 * ce_by_hand(lv, [0, 1]), rel=1e-5)  # visual is slower
    assert (logs["mod/pce_audio"].item(), logs["mod/pce_visual"].item()) == (0.0, 2.0)
    assert logs["train/loss"].item() == pytest.approx(loss.item())
    loss.backward()
    assert not za_.grad.any() and zv_.grad.abs().sum() > 0  # only the visual features are pulled to their prototypes


def test_audio_gets_it_when_visual_leads_and_nobody_at_a_tie():
    m = method()
    m.protos = {"audio": torch.tensor([[0.0], [0.5]]), "visual": torch.tensor([[0.0, 0.0], [4.0, 0.0]])}
    out, batch, _, _ = step(torch.tensor([[0.1], [0.3]]), torch.tensor([[0.5, 0.0], [3.0, 1.0]]), torch.tensor([0, 1]))
    loss, logs = m.loss(out, batch, 0)
    assert (logs["mod/pce_audio"].item(), logs["mod/pce_visual"].item()) == (2.0, 0.0)
    la = proto_rows([[0.1], [0.3]], m.protos["audio"].tolist())
    assert loss.item() == pytest.approx(ce_by_hand(out.logits.tolist(), [0, 1]) + 2.0 * ce_by_hand(la, [0, 1]), rel=1e-5)
    m.protos = {"audio": torch.tensor([[0.0], [1.0]]), "visual": torch.tensor([[0.0], [1.0]])}
    out, batch, _, _ = step(torch.tensor([[0.2], [0.9]]), torch.tensor([[0.2], [0.9]]), torch.tensor([0, 1]))
    loss, logs = m.loss(out, batch, 0)
    assert logs["mod/proto_ratio"].item() == 1.0 and (logs["mod/pce_audio"].item(), logs["mod/pce_visual"].item()) == (0.0, 0.0)
    assert loss.item() == pytest.approx(ce_by_hand(out.logits.tolist(), [0, 1]), rel=1e-6)


def test_outside_the_window_the_loss_is_the_fused_cross_entropy():
    m = method({"start_epoch": 2, "end_epoch": 3})
    for epoch, on in ((1, False), (2, True), (3, True), (4, False)):
        out, batch, _, _ = step(torch.tensor([[0.5, 0.0], [3.0, 1.0]]), torch.tensor([[0.1], [0.3]]), torch.tensor([0, 1]))
        loss, logs = m.loss(out, batch, epoch)
        assert logs["mod/pce_visual"].item() == (2.0 if on else 0.0), epoch
        if not on:
            assert loss.item() == pytest.approx(ce_by_hand(out.logits.tolist(), [0, 1]), rel=1e-6)


def test_per_subtracts_the_dominant_modalitys_prototype_entropy_in_its_first_epochs():
    m = method({"per_weight": 0.5, "per_epochs": 1})
    za, zv, y = torch.tensor([[0.5, 0.0], [3.0, 1.0]]), torch.tensor([[0.1], [0.3]]), torch.tensor([0, 1])
    la = proto_rows(za.tolist(), m.protos["audio"].tolist())
    probs = [[math.exp(v) / sum(math.exp(u) for u in r) for v in r] for r in la]
    entropy = sum(-sum(p * math.log(p) for p in row) for row in probs) / 2
    with_per, _ = m.loss(*step(za, zv, y)[:2], 0)
    after, _ = m.loss(*step(za, zv, y)[:2], 1)         # epoch 1: PER is over
    assert with_per.item() == pytest.approx(after.item() - 0.5 * entropy, rel=1e-5)


def entropy_by_hand(rows):
    probs = [[math.exp(v) / sum(math.exp(u) for u in r) for v in r] for r in rows]
    return sum(-sum(p * math.log(p) for p in row) for row in probs) / len(rows)


def test_per_takes_the_visual_entropy_when_visual_leads_and_none_at_a_tie():
    m = method({"per_weight": 0.5, "per_epochs": 1})
    m.protos = {"audio": torch.tensor([[0.0], [0.5]]), "visual": torch.tensor([[0.0, 0.0], [4.0, 0.0]])}
    za, zv, y = torch.tensor([[0.1], [0.3]]), torch.tensor([[0.5, 0.0], [3.0, 1.0]]), torch.tensor([0, 1])
    la, lv = proto_rows(za.tolist(), m.protos["audio"].tolist()), proto_rows(zv.tolist(), m.protos["visual"].tolist())
    loss, logs = m.loss(*step(za, zv, y)[:2], 0)
    assert logs["mod/proto_ratio"].item() < 1
    fused = ce_by_hand([[1.0, 0.0], [0.0, 1.0]], [0, 1])
    assert loss.item() == pytest.approx(fused + 2.0 * ce_by_hand(la, [0, 1]) - 0.5 * entropy_by_hand(lv), rel=1e-5)
    # a tie (rho = 1): no prototype CE and no PER, the loss is the fused CE
    m.protos = {"audio": torch.tensor([[0.0], [1.0]]), "visual": torch.tensor([[0.0], [1.0]])}
    loss, logs = m.loss(*step(torch.tensor([[0.2], [0.9]]), torch.tensor([[0.2], [0.9]]), y)[:2], 0)
    assert logs["mod/proto_ratio"].item() == 1.0
    assert loss.item() == pytest.approx(fused, rel=1e-6)


def test_state_dict_round_trip_restores_the_prototypes():
    m = method()
    assert PMR(config(), None, device=CPU, seed=0).state_dict() == {"protos": {}}  # before any epoch
    other = PMR(config(), None, device=CPU, seed=0)
    other.load_state_dict(m.state_dict())
    assert {k: v.tolist() for k, v in other.protos.items()} == {"audio": [[0.0, 0.0], [4.0, 0.0]], "visual": [[0.0], [0.5]]}
    za, zv, y = torch.tensor([[0.5, 0.0], [3.0, 1.0]]), torch.tensor([[0.1], [0.3]]), torch.tensor([0, 1])
    assert other.loss(*step(za, zv, y)[:2], 0)[0].item() == m.loss(*step(za, zv, y)[:2], 0)[0].item()


def test_the_prototype_subset_depends_on_the_seed_and_the_subset_stream():
    from conftest import make_cfg
    from avbalance.data.toy import build_toy
    from avbalance.models import build_model
    cfg = make_cfg("modulation=pmr", "dataset.n_train=640")  # 10 batches of 64
    data = build_toy(cfg.dataset, seed=0, batch_size=64, device=CPU)
    model = build_model(cfg.model, cfg.fusion, data.num_classes)
    seen, real = [], data.eval_batches
    data.eval_batches = lambda split, device, rows=None: seen.append(rows.tolist()) or real(split, device, rows)

    def chosen(seed=0, stream=103, epoch=0):
        """The train rows PMR's prototypes are computed on."""
        mcfg = OmegaConf.merge(cfg.modulation, {"subset_stream": stream})
        PMR(mcfg, model, device=CPU, seed=seed).on_epoch_start(epoch, {"model": model, "data": data})
        return seen[-1]

    base = chosen()
    assert len(base) == 64 and chosen() == base
    assert chosen(seed=1) != base and chosen(stream=104) != base and chosen(epoch=1) != base


def test_prototypes_before_each_epoch_from_a_seeded_train_subset_in_eval_mode(tmp_path):
    from conftest import make_cfg
    from avbalance.data.toy import build_toy
    from avbalance.models import build_model
    cfg = make_cfg("modulation=pmr", "dataset.n_train=640", "modulation.momentum=0.5")  # 10 batches: 1 for the prototypes
    data = build_toy(cfg.dataset, seed=0, batch_size=64, device=CPU)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.fusion, data.num_classes)
    m = PMR(cfg.modulation, model, device=CPU, seed=0)
    seen = []
    real = data.eval_batches
    data.eval_batches = lambda split, device, rows=None: seen.append((split, rows, model.training, device)) or real(split, device, rows)
    model.train()
    m.on_epoch_start(0, {"model": model, "data": data})
    split, rows, training, device = seen[0]
    assert split == "train" and len(rows) == 64 and not training and model.training
    assert device == CPU  # the batches come on the method's device (the data Protocol's argument)
    want, _ = class_means(model.eval(), real("train", rows=rows), 6)
    model.train()
    assert torch.allclose(m.protos["audio"], want["audio"]) and torch.allclose(m.protos["visual"], want["visual"])
    p0 = {k: v.clone() for k, v in m.protos.items()}
    m.on_epoch_start(1, {"model": model, "data": data})            # no EMA before epoch 2 (reference: epoch >= 1 after it)
    assert not torch.equal(seen[1][1], rows)                       # a new subset per epoch
    new1, _ = class_means(model.eval(), real("train", rows=seen[1][1]), 6)
    model.train()
    assert torch.allclose(m.protos["audio"], new1["audio"])
    m.on_epoch_start(2, {"model": model, "data": data})
    new2, _ = class_means(model.eval(), real("train", rows=seen[2][1]), 6)
    assert torch.allclose(m.protos["audio"], 0.5 * new2["audio"] + 0.5 * new1["audio"], atol=1e-6)
    assert not torch.allclose(p0["audio"], m.protos["audio"])


@pytest.mark.parametrize("key, value, expected", [
    ("alpha", -1.0, "modulation.alpha=-1.0 is not allowed; expected a number >= 0"),
    ("momentum", 1.5, "modulation.momentum=1.5 is not allowed; expected a number in [0, 1]"),
    ("subset", 0.0, "modulation.subset=0.0 is not allowed; expected a fraction in (0, 1]"),
    ("subset", 1.5, "modulation.subset=1.5 is not allowed; expected a fraction in (0, 1]"),
])
def test_bad_values_are_one_line_errors(key, value, expected):
    cfg = OmegaConf.create({"alpha": 1.0, "momentum": 0.2, "subset": 0.1, "start_epoch": 0, "end_epoch": 5,
                            "per_weight": 0.0, key: value})
    with pytest.raises(ConfigError) as info:
        PMR.check_config(cfg)
    assert str(info.value) == expected


@pytest.mark.parametrize("key, value", [("momentum", 0.0), ("momentum", 1.0), ("subset", 1.0), ("alpha", 0.0)])
def test_the_bounds_of_the_ranges_are_allowed(key, value):
    PMR.check_config(OmegaConf.create({"alpha": 1.0, "momentum": 0.2, "subset": 0.1, "start_epoch": 0, "end_epoch": 5,
                                       "per_weight": 0.0, key: value}))
