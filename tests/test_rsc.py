"""RSC: exact top-fraction masks from a known gradient, batch selection, zero gradient, eval passthrough."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecnreid.errors import EcnreidError
from ecnreid.models.rsc import RSC, masked_count


def _linear_head(weight: torch.Tensor):
    """logits[b, k] = Σ weight[k]·fm[b], so d logit_y / d fm[b] = weight[y]: the gradient is known."""
    return lambda fm: torch.einsum("bchw,kchw->bk", fm, weight)


def test_masked_count_is_ceil_of_fraction_with_at_least_one():
    assert masked_count(1 / 3, 12) == 4
    assert masked_count(1 / 3, 10) == 4  # 3.33 -> 4
    assert masked_count(1 / 3, 3) == 1  # exact products do not round up
    assert masked_count(1 / 3, 7) == 3
    assert masked_count(1 / 3, 1) == 1
    assert masked_count(1 / 3.2, 512) == 160
    assert masked_count(1 / 3.2, 2048) == 640
    assert masked_count(1 / 3.2, 10) == 4  # 3.125 -> 4
    assert masked_count(1.0, 5) == 5


@pytest.mark.parametrize("height,width", [(4, 3), (5, 2)])
def test_spatial_mask_zeroes_exactly_the_top_positions(height, width):
    torch.manual_seed(0)
    batch, channels, classes = 4, 3, 5
    weight = torch.randn(classes, channels, height, width)
    labels = torch.tensor([0, 3, 3, 1])
    rsc = RSC(spatial_prob=1.0, batch_fraction=1.0).train()
    fm = torch.randn(batch, channels, height, width)

    mask = rsc.compute_mask(fm, labels, _linear_head(weight))

    assert mask.shape == (batch, 1, height, width)
    count = masked_count(1 / 3, height * width)
    for b in range(batch):
        scores = weight[labels[b]].mean(dim=0).flatten()  # channel mean of the gradient per position
        top = set(scores.argsort(descending=True)[:count].tolist())
        zeros = set((mask[b, 0].flatten() == 0).nonzero().flatten().tolist())
        assert zeros == top
        assert set(mask[b].unique().tolist()) <= {0.0, 1.0}


def test_channel_mask_zeroes_exactly_the_top_channels():
    torch.manual_seed(1)
    batch, channels, classes = 3, 10, 4
    weight = torch.randn(classes, channels, 3, 2)
    labels = torch.tensor([2, 0, 2])
    rsc = RSC(spatial_prob=0.0, batch_fraction=1.0).train()
    fm = torch.randn(batch, channels, 3, 2)

    mask = rsc.compute_mask(fm, labels, _linear_head(weight))

    assert mask.shape == (batch, channels, 1, 1)
    for b in range(batch):
        scores = weight[labels[b]].mean(dim=(1, 2))  # spatial mean of the gradient per channel
        top = set(scores.argsort(descending=True)[:4].tolist())  # ceil(10 / 3.2) = 4
        zeros = set((mask[b].flatten() == 0).nonzero().flatten().tolist())
        assert zeros == top


@pytest.mark.parametrize("batch,spatial_prob", [(7, 1.0), (7, 0.0), (5, 1.0), (4, 0.0)])
def test_only_samples_with_largest_confidence_drop_keep_their_mask(batch, spatial_prob):
    torch.manual_seed(2)
    channels, height, width, classes = 6, 3, 3, 4
    weight = torch.randn(classes, channels, height, width)
    head = _linear_head(weight)
    labels = torch.randint(0, classes, (batch,))
    fm = torch.randn(batch, channels, height, width) * torch.linspace(0.5, 2.0, batch).view(-1, 1, 1, 1)

    full = RSC(spatial_prob=spatial_prob, batch_fraction=1.0).train().compute_mask(fm, labels, head)
    mask = RSC(spatial_prob=spatial_prob).train().compute_mask(fm, labels, head)

    def confidence(logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1)[torch.arange(batch), labels]

    drop = confidence(head(fm)) - confidence(head(fm * full))
    expected = set(drop.argsort(descending=True)[: -(-batch // 3)].tolist())  # ceil(B / 3)
    masked = {b for b in range(batch) if (mask[b] == 0).any()}
    assert masked == expected
    for b in range(batch):
        expected_row = full[b] if b in expected else torch.ones_like(full[b])
        assert torch.equal(mask[b], expected_row)


def test_masked_positions_get_zero_gradient_and_no_graph_reaches_the_backbone():
    torch.manual_seed(3)
    backbone = nn.Conv2d(2, 6, 1)
    weight = torch.randn(3, 6, 4, 3)
    head = _linear_head(weight)
    labels = torch.tensor([0, 1, 2, 0, 1])
    rsc = RSC(spatial_prob=1.0, batch_fraction=1.0).train()

    fm = backbone(torch.randn(5, 2, 4, 3))
    fm.retain_grad()
    mask = rsc.compute_mask(fm, labels, head)
    assert backbone.weight.grad is None  # the probe's gradient stops at its detached copy
    assert not mask.requires_grad

    loss = nn.functional.cross_entropy(head(fm * mask), labels)
    loss.backward()
    grad = fm.grad
    zeros = (mask == 0).expand_as(grad)
    assert torch.count_nonzero(grad[zeros]) == 0
    assert torch.count_nonzero(grad[~zeros]) == (~zeros).sum()


def test_eval_and_disabled_return_the_same_tensor_without_calling_the_head():
    calls = []

    def head(fm: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return fm.mean(dim=(2, 3))

    fm = torch.randn(3, 4, 2, 2)
    labels = torch.tensor([0, 1, 2])
    rsc = RSC().eval()
    assert rsc(fm, labels, head) is fm
    rsc.train()
    rsc.enabled = False
    assert rsc(fm, labels, head) is fm
    assert calls == []

    rsc.enabled = True
    out = rsc(fm, labels, head)
    assert out is not fm and out.shape == fm.shape
    assert len(calls) == 2  # the gradient probe and the masked confidence check


def test_eval_module_keeps_batchnorm_statistics_and_restores_modes():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12), nn.Dropout(0.5), nn.Linear(12, 3), nn.BatchNorm1d(3))
    model.train()
    model[4].eval()  # a frozen BatchNorm must stay frozen afterwards
    fm = torch.randn(6, 3, 2, 2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    rsc = RSC().train()

    before = model[1].running_mean.clone()
    rsc(fm, labels, model, eval_module=model)
    torch.testing.assert_close(model[1].running_mean, before)
    assert model.training and model[1].training and model[2].training and not model[4].training

    rsc(fm, labels, model)  # without it, the probe passes update the running statistics
    assert not torch.equal(model[1].running_mean, before)


def test_bad_settings_and_label_shape_are_reported():
    with pytest.raises(EcnreidError, match="spatial_fraction"):
        RSC(spatial_fraction=0.0)
    with pytest.raises(EcnreidError, match="spatial_prob"):
        RSC(spatial_prob=1.5)
    with pytest.raises(EcnreidError, match="labels of shape"):
        RSC().train()(torch.randn(2, 3, 2, 2), torch.tensor([0, 1, 1]), lambda fm: fm.mean(dim=(2, 3)))
