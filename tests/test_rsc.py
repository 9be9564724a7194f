"""RSC: exact top-fraction masks from a known gradient, batch selection, zero gradient, eval passthrough."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecnreid.errors import EcnreidError
from ecnreid.models.rsc import MIN_CONFIDENCE_DROP, RSC, masked_count


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


def _confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=1)[torch.arange(len(labels)), labels]


def _zero_top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """{0, 1} rows [B, N] with zeros at each row's ``count`` highest scores, by argsort."""
    mask = torch.ones_like(scores)
    for b in range(scores.shape[0]):
        mask[b, scores[b].argsort(descending=True)[:count]] = 0.0
    return mask


def _select(head, fm, labels, full: torch.Tensor, batch_fraction: float) -> torch.Tensor:
    """The RSC rule on a per-sample mask ``full``: keep it for the ceil(fraction·B) samples whose
    true-class confidence drops most, and only where the drop exceeds 1e-4."""
    drop = _confidence(head(fm), labels) - _confidence(head(fm * full), labels)
    chosen = drop.argsort(descending=True)[: masked_count(batch_fraction, len(labels))]
    keep = torch.zeros(len(labels), dtype=torch.bool)
    keep[chosen] = True
    keep &= drop > MIN_CONFIDENCE_DROP
    return torch.where(keep.view(-1, 1, 1, 1), full, torch.ones_like(full))


@pytest.mark.parametrize("height,width", [(4, 3), (5, 2)])
def test_spatial_mask_zeroes_exactly_the_top_grad_cam_positions(height, width):
    torch.manual_seed(0)
    batch, channels, classes = 6, 3, 5
    weight = torch.randn(classes, channels, height, width)
    head = _linear_head(weight)
    labels = torch.tensor([0, 3, 3, 1, 4, 2])
    rsc = RSC(spatial_prob=1.0, batch_fraction=1.0).train()
    fm = torch.randn(batch, channels, height, width)

    mask = rsc.compute_mask(fm, labels, head)

    assert mask.shape == (batch, 1, height, width)
    # Grad-CAM by hand: d logit_y / d fm = weight[y]; each channel's mean gradient weighs its activation.
    channel_grad = weight[labels].mean(dim=(2, 3))  # [B, C]
    cam = (fm * channel_grad[:, :, None, None]).sum(dim=1).flatten(1)
    full = _zero_top(cam, masked_count(1 / 3, height * width)).view(batch, 1, height, width)
    expected = _select(head, fm, labels, full, 1.0)
    assert torch.equal(mask, expected)
    assert 0 < sum(bool((mask[b] == 0).any()) for b in range(batch)) < batch  # some challenged, some not


def test_channel_mask_zeroes_exactly_the_top_channels():
    torch.manual_seed(1)
    batch, channels, classes = 5, 10, 4
    weight = torch.randn(classes, channels, 3, 2)
    head = _linear_head(weight)
    labels = torch.tensor([2, 0, 2, 1, 3])
    rsc = RSC(spatial_prob=0.0, batch_fraction=1.0).train()
    fm = torch.randn(batch, channels, 3, 2)

    mask = rsc.compute_mask(fm, labels, head)

    assert mask.shape == (batch, channels, 1, 1)
    scores = weight[labels].mean(dim=(2, 3))  # spatial mean of the gradient per channel
    full = _zero_top(scores, 4).view(batch, channels, 1, 1)  # ceil(10 / 3.2) = 4
    assert torch.equal(mask, _select(head, fm, labels, full, 1.0))
    assert any(bool((mask[b] == 0).any()) for b in range(batch))


@pytest.mark.parametrize("batch,spatial_prob", [(7, 1.0), (7, 0.0), (5, 1.0), (4, 0.0)])
def test_only_samples_with_largest_confidence_drop_keep_their_mask(batch, spatial_prob):
    torch.manual_seed(3)
    channels, height, width, classes = 6, 3, 3, 4
    weight = torch.randn(classes, channels, height, width)
    head = _linear_head(weight)
    labels = torch.randint(0, classes, (batch,))
    fm = torch.randn(batch, channels, height, width) * torch.linspace(0.5, 2.0, batch).view(-1, 1, 1, 1)

    torch.manual_seed(5)  # the same spatial-or-channel draw for both masks
    full = RSC(spatial_prob=spatial_prob, batch_fraction=1.0).train().compute_mask(fm, labels, head)
    torch.manual_seed(5)
    mask = RSC(spatial_prob=spatial_prob).train().compute_mask(fm, labels, head)

    drop = _confidence(head(fm), labels) - _confidence(head(fm * full), labels)
    top = set(drop.argsort(descending=True)[: -(-batch // 3)].tolist())  # ceil(B / 3)
    expected = {b for b in top if drop[b] > MIN_CONFIDENCE_DROP}
    assert expected  # the case is not vacuous
    masked = {b for b in range(batch) if (mask[b] == 0).any()}
    assert masked == expected
    for b in range(batch):
        expected_row = full[b] if b in expected else torch.ones_like(full[b])
        assert torch.equal(mask[b], expected_row)


@pytest.mark.parametrize("spatial_prob", [1.0, 0.0])
def test_a_sample_whose_confidence_does_not_drop_is_not_challenged(spatial_prob):
    """Sample 0's logits do not depend on its features, so no mask can lower its confidence: even with the
    whole batch eligible (batch_fraction 1) it keeps every position and channel."""
    torch.manual_seed(6)
    batch, channels, classes = 4, 5, 3
    weight = torch.randn(classes, channels, 3, 3)
    scale = torch.tensor([0.0, 1.0, 1.0, 1.0])

    def head(fm: torch.Tensor) -> torch.Tensor:
        return _linear_head(weight)(fm) * scale[:, None]

    labels = torch.tensor([0, 1, 2, 0])
    fm = torch.randn(batch, channels, 3, 3)
    mask = RSC(spatial_prob=spatial_prob, batch_fraction=1.0).train().compute_mask(fm, labels, head)

    assert torch.equal(mask[0], torch.ones_like(mask[0]))
    drop = _confidence(head(fm), labels) - _confidence(head(fm * mask), labels)
    assert drop[0] == 0
    assert any(bool((mask[b] == 0).any()) for b in range(1, batch))  # the others are challenged as usual

    no_drop = RSC(spatial_prob=spatial_prob, batch_fraction=1.0).train()
    flat = no_drop.compute_mask(fm, labels, lambda x: _linear_head(weight)(x) * 0.0)
    assert torch.equal(flat, torch.ones_like(flat))  # nobody's confidence moves: nobody is challenged


def test_real_ecn_head_masks_per_sample_grad_cam_positions():
    """The ECN head pools globally, so the logit gradient is the same at every position; RSC must still mask
    each sample's own top Grad-CAM positions (the activation weighted by the channel-mean gradient)."""
    from ecnreid.config import DGConfig, ModelConfig
    from ecnreid.models.factory import build_ecn_model

    torch.manual_seed(7)
    classes, batch = 6, 6
    model = build_ecn_model(ModelConfig(arch="resnet18", pretrained=False, embedding_dim=32), DGConfig(), classes)
    nn.init.normal_(model.head.classifier.weight, std=1.0)  # confident enough that masks change the softmax
    model.train()

    def head(fm: torch.Tensor) -> torch.Tensor:
        return model.forward_head(fm)["source_logits"]

    fm = torch.rand(batch, 512, 4, 2) * torch.rand(batch, 1, 4, 2) * 3  # post-ReLU-like, uneven positions
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    mask = RSC(spatial_prob=1.0, batch_fraction=1.0).train().compute_mask(fm, labels, head, eval_module=model)
    assert model.training  # the model's own mode is back after the probe

    # Grad-CAM, computed here independently, in eval mode as RSC probes.
    model.eval()
    probe = fm.clone().requires_grad_()
    (grad,) = torch.autograd.grad(head(probe).gather(1, labels[:, None]).sum(), probe)
    assert torch.allclose(grad, grad[:, :, :1, :1].expand_as(grad))  # pooled head: one gradient per channel
    cam = (fm * grad.mean(dim=(2, 3), keepdim=True)).sum(dim=1).flatten(1)
    full = _zero_top(cam, masked_count(1 / 3, 8)).view(batch, 1, 4, 2)
    with torch.no_grad():
        expected = _select(head, fm, labels, full, 1.0)
    assert torch.equal(mask, expected)

    zero_sets = {tuple((mask[b, 0].flatten() == 0).nonzero().flatten().tolist()) for b in range(batch)}
    zero_sets.discard(())
    assert len(zero_sets) >= 2  # different samples lose different positions, not one fixed cutout


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


def test_no_state_carries_from_one_call_to_the_next():
    """The mask depends on the call's inputs and random draw only: a call in between changes nothing, and
    the module keeps no attribute of a pass."""
    torch.manual_seed(5)
    weight = torch.randn(4, 3, 3, 2)
    head = _linear_head(weight)
    fm, labels = torch.randn(5, 3, 3, 2), torch.tensor([0, 1, 2, 3, 0])
    rsc = RSC(batch_fraction=1.0).train()
    attributes = dict(vars(rsc))

    torch.manual_seed(11)
    alone = rsc.compute_mask(fm, labels, head)
    rsc(torch.randn(7, 3, 3, 2), torch.randint(0, 4, (7,)), head)  # another batch in between
    torch.manual_seed(11)
    again = rsc.compute_mask(fm, labels, head)
    assert torch.equal(alone, again)
    assert vars(rsc).keys() == attributes.keys()
    assert all(vars(rsc)[k] is v or vars(rsc)[k] == v for k, v in attributes.items())


def test_bad_settings_and_label_shape_are_reported():
    with pytest.raises(EcnreidError, match="spatial_fraction"):
        RSC(spatial_fraction=0.0)
    with pytest.raises(EcnreidError, match="spatial_prob"):
        RSC(spatial_prob=1.5)
    with pytest.raises(EcnreidError, match="labels of shape"):
        RSC().train()(torch.randn(2, 3, 2, 2), torch.tensor([0, 1, 1]), lambda fm: fm.mean(dim=(2, 3)))
