"""Tests for ecnreid/models/dsbn.py: every BatchNorm split per domain, training picks the domain's copy,
eval the target's; on the backbones in ecnreid/models (ResNet and MobileNetV2) and SpCL's model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecnreid.models.backbones import build_backbone
from ecnreid.models.dsbn import DomainBatchNorm, batchnorm_domain, convert_to_domain_batchnorm
from ecnreid.models.spcl import SpCLModel


def test_converted_norm_starts_as_the_original_in_both_domains() -> None:
    norm = nn.BatchNorm2d(3)
    norm.running_mean.fill_(0.5)
    norm.weight.data.fill_(2.0)
    holder = nn.Sequential(nn.Identity(), norm)
    assert convert_to_domain_batchnorm(holder) == 1
    split = holder[1]
    assert isinstance(split, DomainBatchNorm)
    for copy in (split.source, split.target):
        assert torch.equal(copy.running_mean, norm.running_mean) and torch.equal(copy.weight, norm.weight)
    assert split.source.weight is not split.target.weight


def test_each_domain_updates_only_its_own_statistics_and_eval_uses_the_target() -> None:
    split = DomainBatchNorm(nn.BatchNorm1d(2))
    source, target = torch.randn(8, 2) + 5.0, torch.randn(8, 2) - 5.0
    with batchnorm_domain(split, "source"):
        split(source)
    assert split.source.running_mean.min() > 0.1 and torch.count_nonzero(split.target.running_mean) == 0
    assert split.domain == "target"  # restored after the block
    split(target)
    assert split.target.running_mean.max() < -0.1
    split.eval()
    with batchnorm_domain(split, "source"):
        assert torch.equal(split(source), split.target(source))
    with pytest.raises(ValueError, match="unknown domain"), batchnorm_domain(split, "query"):
        pass


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_backbone_norms_all_split_and_domains_train_apart(arch: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(arch, pretrained=False)
    count = sum(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    model = SpCLModel(backbone)
    splits = [m for m in model.modules() if isinstance(m, DomainBatchNorm)]
    assert len(splits) == count + 1  # every backbone BatchNorm and the feature BatchNorm
    assert not any(isinstance(m, nn.BatchNorm2d) and not isinstance(p, DomainBatchNorm)
                   for p in model.modules() for m in p.children())
    assert not model.feature_bn.source.bias.requires_grad and not model.feature_bn.target.bias.requires_grad
    source, target = torch.randn(4, 3, 64, 32), torch.randn(4, 3, 64, 32) * 3 + 1
    f_s, f_t = model.train().forward_domains(source, target)
    assert f_s.shape == f_t.shape == (4, backbone.out_channels)
    assert torch.allclose(f_s.norm(dim=1), torch.ones(4), atol=1e-5)
    norms = [m for m in model.modules() if isinstance(m, DomainBatchNorm)]
    assert all(not torch.equal(m.source.running_mean, m.target.running_mean) for m in norms[:3])
    # the source loss trains only the source copies' affine parameters
    (f_s * torch.randn_like(f_s)).sum().backward()
    assert all(m.source.weight.grad is not None and m.target.weight.grad is None for m in norms)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(target).norm(dim=1), torch.ones(4), atol=1e-5)
