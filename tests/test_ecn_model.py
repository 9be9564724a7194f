"""Tests for ecnreid/models/head.py and ecnreid/models/ecn.py: outputs, freezing, parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ecnreid.errors import EcnreidError
from ecnreid.models.backbones import build_backbone
from ecnreid.models.ecn import ECNModel
from ecnreid.models.head import ECNHead

KEYS = {"feature_map", "pool5", "source_logits", "target_embedding"}


def _model(arch: str = "resnet18", **kwargs) -> ECNModel:
    torch.manual_seed(0)
    kwargs.setdefault("embedding_dim", 64)
    return ECNModel(build_backbone(arch, pretrained=False), num_source_classes=5, **kwargs)


@pytest.mark.parametrize(("arch", "channels"), [("resnet18", 512), ("mobilenet_v2", 1280)])
def test_train_and_eval_outputs(arch: str, channels: int) -> None:
    model = _model(arch)
    x = torch.randn(3, 3, 64, 32)
    out = model.train()(x)
    assert set(out) == KEYS
    assert out["feature_map"].shape == (3, channels, 2, 1)
    assert out["pool5"].shape == (3, channels)
    assert out["source_logits"].shape == (3, 5)
    assert out["target_embedding"].shape == (3, 64)
    model.eval()
    with torch.no_grad():
        feature = model(x)
        feature_map = model.backbone(x)
    assert feature.shape == (3, channels)
    assert torch.allclose(feature.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(feature, F.normalize(feature_map.mean(dim=(2, 3)), dim=1), atol=1e-6)


def test_default_embedding_dim() -> None:
    model = _model(embedding_dim=4096)
    out = model(torch.randn(2, 3, 64, 32))
    assert out["target_embedding"].shape == (2, 4096)


def test_head_matches_hand_computation() -> None:
    torch.manual_seed(0)
    head = ECNHead(in_channels=8, num_source_classes=3, embedding_dim=6, dropout=0.0).train()
    feature_map = torch.randn(4, 8, 3, 2)
    out = head(feature_map)
    pool5 = feature_map.mean(dim=(2, 3))
    z = pool5 @ head.embed.weight.t() + head.embed.bias
    # Train-mode BatchNorm1d: batch statistics with the biased variance; weight 1, bias 0 at init.
    z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)
    assert torch.allclose(out["pool5"], pool5)
    assert torch.allclose(out["target_embedding"], z / z.norm(dim=1, keepdim=True), atol=1e-5)
    logits = z.clamp(min=0) @ head.classifier.weight.t() + head.classifier.bias
    assert torch.allclose(out["source_logits"], logits, atol=1e-5)


def test_target_dropout_comes_after_normalisation() -> None:
    torch.manual_seed(0)
    head = ECNHead(in_channels=8, num_source_classes=3, embedding_dim=512, dropout=0.5).train()
    feature_map = torch.randn(4, 8, 1, 1)
    torch.manual_seed(5)
    dropped = head(feature_map)["target_embedding"]
    head.target_dropout.p = 0.0
    head.source_dropout.p = 0.0
    clean = head(feature_map)["target_embedding"]
    kept = dropped != 0
    assert 0.3 < kept.float().mean() < 0.7
    # Survivors are the unit-norm embedding scaled by 1 / (1 - p) = 2.
    assert torch.allclose(dropped[kept], 2 * clean[kept], atol=1e-6)


def test_head_initialisation() -> None:
    torch.manual_seed(0)
    head = ECNHead(in_channels=2048, num_source_classes=751)
    assert head.embed.weight.shape == (4096, 2048)
    # Kaiming normal, fan_out = 4096: std = sqrt(2 / 4096).
    assert head.embed.weight.std().item() == pytest.approx(math.sqrt(2 / 4096), rel=0.02)
    assert torch.count_nonzero(head.embed.bias) == 0
    assert torch.all(head.embed_bn.weight == 1) and torch.count_nonzero(head.embed_bn.bias) == 0
    assert head.classifier.weight.std().item() == pytest.approx(0.001, rel=0.02)
    assert torch.count_nonzero(head.classifier.bias) == 0


def _frozen_and_trainable(model: ECNModel) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    stages = model.backbone.stages
    frozen = [p for name in ("stem", "layer1", "layer2") for p in stages[name].parameters()]
    trainable = [p for name in ("layer3", "layer4") for p in stages[name].parameters()]
    return frozen, trainable + list(model.head.parameters())


def test_frozen_stages_get_no_gradients() -> None:
    model = _model()
    frozen, trainable = _frozen_and_trainable(model)
    out = model.train()(torch.randn(2, 3, 64, 32))
    loss = F.cross_entropy(out["source_logits"], torch.tensor([0, 3])) + out["target_embedding"].sum()
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    assert all(p.requires_grad for p in trainable)
    assert model.backbone.stages["stem"].conv1.weight.grad is None
    for module in (model.backbone.stages["layer3"], model.backbone.stages["layer4"], model.head):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_frozen_batchnorm_stats_stay_fixed_in_train_mode() -> None:
    model = _model()
    model.eval()
    model.train()  # the override must put the frozen BatchNorms back in eval mode every time
    stem_bn = model.backbone.stages["stem"].bn1
    layer2_bn = model.backbone.stages["layer2"][1].bn2
    layer3_bn = model.backbone.stages["layer3"][0].bn1
    assert not stem_bn.training and not layer2_bn.training and layer3_bn.training
    before = [bn.running_mean.clone() for bn in (stem_bn, layer2_bn, layer3_bn)]
    model(torch.randn(2, 3, 64, 32) * 3 + 1)
    assert torch.equal(stem_bn.running_mean, before[0])
    assert torch.equal(layer2_bn.running_mean, before[1])
    assert not torch.equal(layer3_bn.running_mean, before[2])
    assert stem_bn.num_batches_tracked.item() == 0


def test_frozen_stages_zero_and_range() -> None:
    model = _model(frozen_stages=0)
    assert all(p.requires_grad for p in model.parameters())
    assert model.backbone.stages["stem"].bn1.training
    with pytest.raises(EcnreidError, match="frozen stages"):
        _model(frozen_stages=6)


def test_forward_head_reruns_head_on_a_map() -> None:
    model = _model()
    model.head.source_dropout.p = 0.0
    model.head.target_dropout.p = 0.0
    x = torch.randn(2, 3, 64, 32)
    out = model(x)
    again = model.forward_head(out["feature_map"])
    assert set(again) == KEYS
    assert torch.allclose(again["source_logits"], out["source_logits"], atol=1e-6)
    masked = model.forward_head(torch.zeros_like(out["feature_map"]))
    assert torch.count_nonzero(masked["pool5"]) == 0


def test_forward_domains_without_dg_modules_gives_the_plain_outputs() -> None:
    model = _model()
    model.head.source_dropout.p = 0.0
    model.head.target_dropout.p = 0.0
    source, target = torch.randn(3, 3, 64, 32), torch.randn(2, 3, 64, 32)
    out_x, out_u = model.forward_domains(source, target)
    assert set(out_x) == KEYS and set(out_u) == KEYS
    assert out_x["source_logits"].shape == (3, 5) and out_u["target_embedding"].shape == (2, 64)
    # Training-mode BatchNorm uses each batch's own statistics: side by side equals one batch at a time.
    for out, x in ((out_x, source), (out_u, target)):
        alone = model(x)
        assert set(alone) == KEYS
        for key in KEYS:
            torch.testing.assert_close(out[key], alone[key])
    only_source, none = model.forward_domains(source, None)
    assert none is None and set(only_source) == KEYS
    torch.testing.assert_close(only_source["source_logits"], out_x["source_logits"])


def test_forward_domains_puts_each_batchs_snr_vectors_in_its_own_dict() -> None:
    from ecnreid.models.snr import SNR, SNRPooled

    model = _model()
    for stage in ("layer2", "layer4"):
        model.backbone.insert_after(stage, SNR(model.backbone.stage_channels[stage]))
    source, target = torch.randn(3, 3, 64, 32), torch.randn(2, 3, 64, 32) * 2 + 1
    out_x, out_u = model.forward_domains(source, target)
    assert set(out_x) == KEYS | {"snr"} and set(out_u) == KEYS | {"snr"}
    for out, x in ((out_x, source), (out_u, target)):
        assert list(out["snr"]) == ["layer2", "layer4"]
        assert all(isinstance(p, SNRPooled) for p in out["snr"].values())
        alone = model(x)["snr"]  # the batch alone, in a separate call: the same vectors
        for stage in ("layer2", "layer4"):
            for got, expected in zip(out["snr"][stage], alone[stage], strict=True):
                assert got.shape == (x.shape[0], model.backbone.stage_channels[stage])
                torch.testing.assert_close(got, expected)
    model.eval()
    with torch.no_grad():
        assert model(source).shape == (3, 512)  # eval: the test feature alone


def test_auxiliary_outputs_may_not_shadow_the_head_outputs() -> None:
    class Shadow(nn.Module):
        aux_name = "pool5"

        def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x.mean()

    model = _model()
    model.backbone.insert_after("layer3", Shadow())
    with pytest.raises(ValueError, match="pool5"):
        model(torch.randn(2, 3, 64, 32))


def test_parameter_groups_cover_trainable_parameters_once() -> None:
    model = _model()
    model.backbone.insert_after("layer1", nn.BatchNorm2d(64))  # a DG-style module added later
    groups = model.parameter_groups(lr=0.1)
    assert [g["name"] for g in groups] == ["new", "backbone"]
    assert groups[0]["lr"] == 0.1 and groups[1]["lr"] == pytest.approx(0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    new_ids = {id(p) for p in groups[0]["params"]}
    expected_new = [*model.head.parameters(), *model.backbone.inserted.parameters()]
    assert new_ids == {id(p) for p in expected_new}
    backbone_ids = {id(p) for p in groups[1]["params"]}
    layer34 = [*model.backbone.stages["layer3"].parameters(), *model.backbone.stages["layer4"].parameters()]
    assert backbone_ids == {id(p) for p in layer34}
    torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def test_parameter_groups_everything_frozen() -> None:
    model = _model(frozen_stages=5)
    groups = model.parameter_groups(lr=0.2, backbone_lr_mult=0.5)
    assert [g["name"] for g in groups] == ["new"]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.head.parameters()}
