"""Tests for ecnreid/memory.py: logits, the momentum update, duplicates, state_dict, float16; the hybrid memory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ecnreid.memory as memory_module
from ecnreid.config import ECNConfig
from ecnreid.memory import ExemplarMemory, HybridMemory, occurrence_ranks


def test_starts_at_zero_and_is_a_saved_buffer() -> None:
    memory = ExemplarMemory(5, dim=3)
    assert memory.features.shape == (5, 3) and torch.count_nonzero(memory.features) == 0
    assert list(memory.parameters()) == []
    memory.update(torch.tensor([[1.0, 2.0, 2.0]]), torch.tensor([4]), alpha=0.0)
    state = memory.state_dict()
    assert list(state) == ["features"]
    restored = ExemplarMemory(5, dim=3)
    restored.load_state_dict(state)
    assert torch.equal(restored.features, memory.features)


def test_logits_hand_computed_and_gradient_to_features_only() -> None:
    memory = ExemplarMemory(2, dim=2)
    memory.features.copy_(torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    f = torch.tensor([[0.0, 1.0]], requires_grad=True)
    z = memory.logits(f, beta=0.05)
    assert torch.allclose(z, torch.tensor([[0.0, 16.0]]))
    z.sum().backward()
    # d(sum_j f·m_j / β)/df = (m_0 + m_1) / β
    assert torch.allclose(f.grad, torch.tensor([[32.0, 16.0]]))
    assert not memory.features.requires_grad


def test_alpha_zero_overwrites_then_normalises() -> None:
    memory = ExemplarMemory(3, dim=3)
    memory.features[1] = torch.tensor([0.0, 0.0, 1.0])
    memory.update(torch.tensor([[3.0, 4.0, 0.0]]), torch.tensor([1]), alpha=0.0)
    assert torch.allclose(memory.features[1], torch.tensor([0.6, 0.8, 0.0]))


def test_alpha_half_hand_computed() -> None:
    memory = ExemplarMemory(2, dim=3)
    memory.features[0] = torch.tensor([1.0, 0.0, 0.0])
    memory.update(torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([0]), alpha=0.5)
    # 0.5·[1, 0, 0] + 0.5·[0, 2, 0] = [0.5, 1, 0], norm sqrt(1.25)
    expected = torch.tensor([0.5, 1.0, 0.0]) / math.sqrt(1.25)
    assert torch.allclose(memory.features[0], expected)


def test_rows_unit_norm_and_untouched_rows_unchanged() -> None:
    torch.manual_seed(0)
    memory = ExemplarMemory(10, dim=8)
    memory.features.copy_(F.normalize(torch.randn(10, 8), dim=1))
    before = memory.features.clone()
    indices = torch.tensor([7, 2, 5])
    memory.update(torch.randn(3, 8) * 5, indices, alpha=0.3)
    assert torch.allclose(memory.features[indices].norm(dim=1), torch.ones(3), atol=1e-6)
    untouched = torch.tensor([0, 1, 3, 4, 6, 8, 9])
    assert torch.equal(memory.features[untouched], before[untouched])
    assert not torch.allclose(memory.features[indices], before[indices])


def test_duplicate_indices_are_averaged_and_order_free() -> None:
    m = torch.tensor([1.0, 0.0, 0.0])
    f1, f2, other = torch.tensor([0.0, 4.0, 0.0]), torch.tensor([0.0, 0.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    results = []
    for features, indices in [
        (torch.stack([f1, other, f2]), torch.tensor([2, 0, 2])),
        (torch.stack([f2, f1, other]), torch.tensor([2, 2, 0])),
    ]:
        memory = ExemplarMemory(3, dim=3)
        memory.features[2] = m
        memory.update(features, indices, alpha=0.5)
        results.append(memory.features.clone())
    # slot 2: 0.5·m + 0.5·(f1 + f2)/2 = [0.5, 1, 0.5]
    expected_slot2 = torch.tensor([0.5, 1.0, 0.5]) / math.sqrt(1.5)
    assert torch.allclose(results[0][2], expected_slot2)
    assert torch.allclose(results[0][0], torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    assert torch.equal(results[0], results[1])


def test_update_rejects_bad_shapes() -> None:
    memory = ExemplarMemory(4, dim=3)
    with pytest.raises(ValueError, match="update expects"):
        memory.update(torch.randn(2, 5), torch.tensor([0, 1]), alpha=0.0)
    with pytest.raises(ValueError, match="update expects"):
        memory.update(torch.randn(2, 3), torch.tensor([0]), alpha=0.0)


def test_update_does_not_track_gradients() -> None:
    memory = ExemplarMemory(4, dim=3)
    f = torch.randn(2, 3, requires_grad=True)
    memory.update(f * 2, torch.tensor([0, 3]), alpha=0.0)
    assert memory.features.grad_fn is None and not memory.features.requires_grad


def test_float16_memory() -> None:
    torch.manual_seed(0)
    rows = F.normalize(torch.randn(6, 16), dim=1)
    half = ExemplarMemory(6, dim=16, dtype=torch.float16)
    full = ExemplarMemory(6, dim=16)
    assert half.features.element_size() == 2 and half.state_dict()["features"].dtype == torch.float16
    half.features.copy_(rows)
    full.features.copy_(rows)
    f = F.normalize(torch.randn(3, 16), dim=1)
    z_half = half.logits(f)
    assert z_half.dtype == torch.float32
    assert torch.allclose(z_half, full.logits(f), atol=2e-2)  # fp16 rounding (1e-3) divided by β
    half.update(torch.randn(2, 16), torch.tensor([1, 4]), alpha=0.2)
    assert half.features.dtype == torch.float16
    assert torch.allclose(half.features[[1, 4]].float().norm(dim=1), torch.ones(2), atol=1e-3)


@pytest.mark.parametrize(
    ("slots", "dim", "batch", "upcast_elements", "beta"),
    # One row per block, three rows, all at once; and 20 slots of 4 dimensions in one-row blocks, where every
    # block, not only the first `dim`, must be filled.
    [(7, 16, 3, 16, 0.05), (7, 16, 3, 48, 0.05), (7, 16, 3, 1 << 24, 0.05), (20, 4, 2, 4, 0.5)],
)
def test_float16_memory_product_in_blocks_equals_the_whole_upcast(
    monkeypatch: pytest.MonkeyPatch, slots: int, dim: int, batch: int, upcast_elements: int, beta: float
) -> None:
    # The logits and their gradient must not depend on the blocks the fp16 rows are upcast in.
    monkeypatch.setattr(memory_module, "_UPCAST_ELEMENTS", upcast_elements)
    torch.manual_seed(1)
    half = ExemplarMemory(slots, dim=dim, dtype=torch.float16)
    half.features.copy_(F.normalize(torch.randn(slots, dim), dim=1))
    f = torch.randn(batch, dim, requires_grad=True)
    weights = torch.randn(batch, slots)
    (half.logits(f, beta=beta) * weights).sum().backward()
    expected = f.detach() @ half.features.float().t() / beta
    assert torch.allclose(half.logits(f.detach(), beta=beta), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(f.grad, weights @ half.features.float() / beta, rtol=1e-5, atol=1e-5)
    assert half.features.grad is None


def test_update_with_the_published_momentum_schedule() -> None:
    """The update at the published schedule's momenta (α = 0.01 × epoch, 0-based): epoch 0 overwrites each slot,
    epoch 5 keeps 5% of it, epoch 59 keeps 59%. That ``ECN.after_step`` hands the memory this α is tested in
    test_ecn_method.py."""
    old, new = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    for epoch, kept in ((0, 0.0), (5, 0.05), (59, 0.59)):
        alpha = ECNConfig().alpha * epoch
        assert alpha == pytest.approx(kept)
        memory = ExemplarMemory(2, dim=2)
        memory.features[1] = old
        memory.update(new.unsqueeze(0), torch.tensor([1]), alpha=alpha)
        assert torch.allclose(memory.features[1], F.normalize(kept * old + (1 - kept) * new, dim=0))


def test_logits_and_update_stay_float32_under_autocast() -> None:
    """Under bf16 autocast (8 mantissa bits) a bf16 product would be off by ~0.1 at β = 0.05: the memory
    must compute in float32 regardless, as published."""
    torch.manual_seed(0)
    memory = ExemplarMemory(50, dim=64)
    memory.features.copy_(F.normalize(torch.randn(50, 64), dim=1))
    f = F.normalize(torch.randn(8, 64), dim=1)
    reference = f @ memory.features.t() / 0.05
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = memory.logits(f, beta=0.05)
        assert z.dtype == torch.float32
        torch.testing.assert_close(z, reference, atol=1e-5, rtol=1e-6)
        update = F.normalize(torch.randn(4, 64), dim=1)
        memory.update(update.to(torch.bfloat16), torch.tensor([0, 1, 2, 3]), alpha=0.0)
    assert memory.features.dtype == torch.float32
    torch.testing.assert_close(memory.features[:4], F.normalize(update.to(torch.bfloat16).float(), dim=1))


def test_defaults_are_4096_dimensions_and_beta_0_05() -> None:
    memory = ExemplarMemory(3)
    assert memory.features.shape == (3, 4096)
    assert "num_slots=3, dim=4096, dtype=torch.float32" in repr(memory)
    memory = ExemplarMemory(2, dim=2)
    memory.features.copy_(torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    assert torch.allclose(memory.logits(torch.tensor([[0.0, 1.0]])), torch.tensor([[0.0, 16.0]]))


def test_one_slot_of_one_dimension_is_the_smallest_memory() -> None:
    assert ExemplarMemory(1, dim=1).features.shape == (1, 1)
    for slots, dim in ((0, 3), (3, 0)):
        with pytest.raises(ValueError, match=f"at least one slot and one dimension, got {slots} x {dim}"):
            ExemplarMemory(slots, dim=dim)


def reference_hybrid_loss(features, memory_rows, labels, slots, temperature) -> torch.Tensor:
    """SpCL's loss written out per sample: the mean similarity of a feature to each class's slots, a softmax
    over the classes that have slots (with the authors' 1e-6 guards), minus the log of its own class."""
    num_classes = max(labels) + 1
    losses = []
    for f, slot in zip(features, slots, strict=True):
        scores = {}
        for c in range(num_classes):
            members = [s for s in range(len(labels)) if labels[s] == c]
            if members:
                scores[c] = sum(float(f @ memory_rows[s]) / temperature for s in members) / len(members)
        total = sum(math.exp(v) for v in scores.values()) + 1e-6
        losses.append(-math.log(math.exp(scores[labels[slot]]) / total + 1e-6))
    return torch.tensor(sum(losses) / len(losses))


def test_hybrid_loss_matches_the_per_sample_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    memory = HybridMemory(num_source_classes=3, num_target=7, dim=5)
    memory.features.copy_(F.normalize(torch.randn(10, 5, generator=gen), dim=1))
    # target labels: a cluster of three, a cluster of two, two un-clustered; target class 2 (memory class 5) empty
    memory.set_target_labels(torch.tensor([0, 1, 0, 3, 4, 0, 1]))
    assert memory.labels.tolist() == [0, 1, 2, 3, 4, 3, 6, 7, 3, 4]
    features = F.normalize(torch.randn(6, 5, generator=gen), dim=1).requires_grad_()
    slots = torch.tensor([0, 2, 3, 4, 8, 9])
    loss = memory.loss(features, slots, temperature=0.05)
    expected = reference_hybrid_loss(features.detach(), memory.features, memory.labels.tolist(), slots.tolist(), 0.05)
    assert torch.allclose(loss.detach(), expected.float(), rtol=1e-5, atol=1e-5)
    loss.backward()
    assert features.grad is not None and not memory.features.requires_grad


def test_hybrid_update_takes_each_occurrence_in_batch_order() -> None:
    assert occurrence_ranks(torch.tensor([4, 1, 4, 4, 2, 1])).tolist() == [0, 0, 1, 2, 0, 1]
    gen = torch.Generator().manual_seed(1)
    memory = HybridMemory(num_source_classes=2, num_target=4, dim=3)
    memory.features.copy_(F.normalize(torch.randn(6, 3, generator=gen), dim=1))
    expected = memory.features.clone()
    features = torch.randn(7, 3, generator=gen)
    slots = torch.tensor([0, 0, 3, 1, 0, 5, 3])
    for f, s in zip(features, slots.tolist(), strict=True):  # the authors' loop
        expected[s] = 0.2 * expected[s] + 0.8 * f
        expected[s] /= expected[s].norm()
    memory.update_in_order(features, slots, momentum=0.2)
    assert torch.allclose(memory.features, expected, atol=1e-6)
    assert memory.labels.tolist() == list(range(6))  # each target image its own class until clustered


def test_hybrid_memory_state_holds_features_and_labels() -> None:
    memory = HybridMemory(2, 3, dim=4)
    memory.set_target_labels(torch.tensor([1, 1, 0]))
    restored = HybridMemory(2, 3, dim=4)
    restored.load_state_dict(memory.state_dict())
    assert restored.labels.tolist() == [0, 1, 3, 3, 2]
    with pytest.raises(ValueError, match="3 target labels"):
        memory.set_target_labels(torch.tensor([0, 1]))


def test_occurrence_ranks_count_each_slot_in_batch_order_in_a_long_batch() -> None:
    slots = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(2))
    seen: dict[int, int] = {}
    expected = []
    for slot in slots.tolist():  # the k-th time a slot appears in the batch has rank k
        expected.append(seen.get(slot, 0))
        seen[slot] = expected[-1] + 1
    assert occurrence_ranks(slots).tolist() == expected


def test_hybrid_loss_uses_its_temperature_and_the_authors_guards() -> None:
    gen = torch.Generator().manual_seed(3)
    memory = HybridMemory(num_source_classes=2, num_target=4, dim=3)
    memory.features.copy_(F.normalize(torch.randn(6, 3, generator=gen), dim=1))
    memory.set_target_labels(torch.tensor([0, 0, 1, 2]))
    features = F.normalize(torch.randn(3, 3, generator=gen), dim=1)
    slots = torch.tensor([1, 2, 5])
    for temperature in (0.1, 0.5):  # not the default 0.05 of the logits
        expected = reference_hybrid_loss(features, memory.features, memory.labels.tolist(), slots.tolist(), temperature)
        assert torch.allclose(memory.loss(features, slots, temperature), expected.float(), rtol=1e-5, atol=1e-5)
    # Every slot opposite the features: each class's exp(-1 / 0.05) is far below the 1e-6 guard of the sum.
    direction = F.normalize(torch.ones(1, 3), dim=1)
    memory.features.copy_(direction.expand(6, 3))
    features = -direction.expand(3, 3)
    expected = reference_hybrid_loss(features, memory.features, memory.labels.tolist(), slots.tolist(), 0.05)
    loss = memory.loss(features, slots, 0.05)
    assert torch.isfinite(loss) and torch.allclose(loss, expected.float(), rtol=1e-4)
