"""AVClassifier and build_model: features per modality, the forward pass, which parameters each
selection returns, unimodal models, the settings handed to encoders and heads, and the reference init."""
import math

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from avbalance.models import build_model
from avbalance.models.fusion import ConcatFusion, FusionOutput, SumFusion
from avbalance.models.model import AVClassifier, UnimodalHead, reference_init


def cfgs(model=None, fusion=None):
    return (OmegaConf.create({"name": "tiny", "width": 4, **(model or {})}),
            OmegaConf.create({"name": "concat", "unimodal": "native", **(fusion or {})}))


def inputs(B=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, 1, 16, 12, generator=g), torch.randn(B, 3, 2, 12, 12, generator=g)


def built(model=None, fusion=None, C=5):
    torch.manual_seed(0)
    return build_model(*cfgs(model, fusion), C)


def test_encode_and_forward_use_each_modalitys_encoder():
    model = built()
    audio, visual = inputs()
    f = model.encode(audio, visual)
    assert set(f) == {"audio", "visual"}
    assert torch.equal(f["audio"], model.encoders["audio"](audio))
    assert torch.equal(f["visual"], model.encoders["visual"](visual))
    out = model(audio, visual)
    want = model.head(f["audio"], f["visual"])
    assert torch.equal(out.logits, want.logits) and torch.equal(out.logits_audio, want.logits_audio)
    assert torch.equal(out.logits_visual, want.logits_visual) and out.logits.shape == (3, 5)


def test_encoder_width_and_depth_come_from_the_model_settings():
    model = built({"width": 6, "depth": 3})
    assert model.encoders["audio"].out_dim == 24 and model.encoders["visual"].out_dim == 24
    assert model.head.fc.in_features == 48 and model.head.fc.out_features == 5
    assert sum(1 for p in model.encoders["audio"].parameters() if p.dim() == 4) == 3


def test_fusion_settings_reach_the_head():
    model = built(fusion={"name": "sum", "unimodal": "probe", "eval_half_bias": True})
    assert isinstance(model.head, SumFusion) and model.head.unimodal == "probe" and model.head.eval_half_bias is True
    assert model.head.probe_audio.in_features == model.encoders["audio"].out_dim


def test_encoder_params_by_scope_and_trainability():
    model = built()
    audio = list(model.encoders["audio"].parameters())
    conv = [p for p in audio if p.dim() == 4]
    assert len(conv) == 2 and len(audio) > len(conv)
    assert [id(p) for p in model.encoder_params("audio")] == [id(p) for p in audio]
    assert [id(p) for p in model.encoder_params("audio", "all")] == [id(p) for p in audio]
    assert [id(p) for p in model.encoder_params("audio", "conv")] == [id(p) for p in conv]
    visual_conv = [p for p in model.encoders["visual"].parameters() if p.dim() == 4]
    assert [id(p) for p in model.encoder_params("visual", "conv")] == [id(p) for p in visual_conv]
    conv[0].requires_grad_(False)  # a frozen parameter is never selected
    assert [id(p) for p in model.encoder_params("audio", "conv")] == [id(conv[1])]
    assert id(conv[0]) not in [id(p) for p in model.encoder_params("audio")]
    head = list(model.head.parameters())
    assert [id(p) for p in model.head_params()] == [id(p) for p in head]
    head[0].requires_grad_(False)
    assert [id(p) for p in model.head_params()] == [id(p) for p in head[1:]]


@pytest.mark.parametrize("modality", ["audio", "visual"])
def test_a_unimodal_model_has_one_encoder_and_a_linear_head(modality):
    model = built({"modalities": modality})
    other = "visual" if modality == "audio" else "audio"
    assert list(model.encoders) == [modality]
    assert isinstance(model.head, UnimodalHead) and model.head.modality == modality
    assert model.head.fc.in_features == model.encoders[modality].out_dim and model.head.fc.out_features == 5
    assert model.encoder_params(other) == [] and model.encoder_params(other, "conv") == []
    assert len(model.encoder_params(modality, "conv")) == 2
    audio, visual = inputs()
    f = model.encode(audio, visual)
    assert f[other].shape == (3, 0)
    x = audio if modality == "audio" else visual
    assert torch.equal(f[modality], model.encoders[modality](x))
    out = model(audio, visual)
    want = f[modality] @ model.head.fc.weight.T + model.head.fc.bias
    assert torch.allclose(out.logits, want, atol=1e-6)
    assert torch.equal(out.logits_audio, out.logits) and torch.equal(out.logits_visual, out.logits)


def test_unimodal_head_reads_only_its_modality():
    torch.manual_seed(0)
    head = UnimodalHead("visual", 3, 2)
    a, v = torch.randn(4, 0), torch.randn(4, 3)
    out = head(a, v)
    assert isinstance(out, FusionOutput) and out.probe is False
    assert torch.allclose(out.logits, v @ head.fc.weight.T + head.fc.bias)
    head = UnimodalHead("audio", 3, 2)
    assert torch.allclose(head(v, a).logits, v @ head.fc.weight.T + head.fc.bias)


def test_both_modalities_is_the_default():
    model = built({"modalities": "both"})
    assert set(model.encoders) == {"audio", "visual"} and isinstance(model.head, ConcatFusion)


# ----------------------------------------------------------------------------- the reference's init


def test_reference_init_by_module_type():
    torch.manual_seed(0)
    conv, bn, linear, other = nn.Conv2d(8, 64, 3), nn.BatchNorm2d(6), nn.Linear(300, 100), nn.Conv1d(2, 2, 3)
    with torch.no_grad():
        for m in (bn, linear, conv):
            for p in m.parameters():
                p.uniform_(0.5, 1.5)
    other_before = [p.clone() for p in other.parameters()]
    conv_bias_before = conv.bias.clone()
    for m in (conv, bn, linear, other):
        reference_init(m)
    # Kaiming normal, fan_out, ReLU gain: std sqrt(2 / (out_channels * k * k)); fan_in would be 8 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    assert abs(conv.weight.mean().item()) < 0.01
    assert torch.equal(conv.bias, conv_bias_before)  # the reference leaves conv biases alone
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    # Xavier normal: std sqrt(2 / (fan_in + fan_out)); zero bias
    assert linear.weight.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.05)
    assert torch.count_nonzero(linear.bias) == 0
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), other_before))


def test_build_model_applies_the_reference_init_everywhere():
    model = built({"width": 16})
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        if isinstance(m, nn.Linear):
            assert torch.count_nonzero(m.bias) == 0
    conv = model.encoders["visual"].trunk[3]  # 16 -> 32 channels, 3x3: fan_out 288, fan_in 144
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 288), rel=0.1)


def test_avclassifier_keeps_the_encoders_in_a_module_dict():
    enc = {"audio": nn.Linear(2, 3), "visual": nn.Linear(2, 3)}
    head = ConcatFusion(3, 3, 2)
    model = AVClassifier(enc, head)
    assert isinstance(model.encoders, nn.ModuleDict) and model.head is head
    assert len(list(model.parameters())) == 6


def test_plug_ins_get_only_their_own_settings(monkeypatch):
    """An encoder factory or fusion head need not accept `name` or `modalities`: build_model hands
    each only the settings that are its own."""
    from avbalance.models.encoders import tiny_pair
    from avbalance.registry import ENCODERS, FUSIONS
    ENCODERS.names(), FUSIONS.names()  # load the registries
    seen = {}

    def strict_encoders(width):
        seen["encoder"] = width
        return tiny_pair(width=width)

    class StrictHead(ConcatFusion):
        def __init__(self, da, dv, num_classes, unimodal):
            seen["head"] = unimodal
            super().__init__(da, dv, num_classes, unimodal)
    monkeypatch.setitem(ENCODERS._entries, "strict", strict_encoders)
    monkeypatch.setitem(FUSIONS._entries, "strict", StrictHead)
    model = build_model(OmegaConf.create({"name": "strict", "width": 3, "modalities": "both"}),
                        OmegaConf.create({"name": "strict", "unimodal": "zero"}), 4)
    assert seen == {"encoder": 3, "head": "zero"} and isinstance(model.head, StrictHead)
    model = build_model(OmegaConf.create({"name": "strict", "width": 2, "modalities": "audio"}),
                        OmegaConf.create({"name": "strict", "unimodal": "zero"}), 4)
    assert list(model.encoders) == ["audio"] and seen["encoder"] == 2
