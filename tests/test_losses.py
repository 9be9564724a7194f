"""Tests for ecnreid/losses.py, with B=2, N=4 cases worked out by hand."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from neighbourhood_reference import neighbourhood_targets

from ecnreid.errors import EcnreidError
from ecnreid.losses import (
    ecn_total_loss,
    exemplar_loss,
    nearest_slots,
    nearest_slots_faiss,
    neighbourhood_loss,
    source_loss,
    target_invariance_loss,
)

# Rows whose softmax is [0.1, 0.2, 0.3, 0.4] and [0.4, 0.3, 0.2, 0.1].
LOGITS = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]))
# Image 0 is slot 0 (not among its 2 nearest, slots 3 and 2); image 1 is slot 1 (among its nearest, 0 and 1).
INDICES = torch.tensor([0, 1])
LN = math.log


def test_source_loss() -> None:
    assert source_loss(LOGITS, torch.tensor([2, 2])).item() == pytest.approx(-(LN(0.3) + LN(0.2)) / 2)


def test_exemplar_loss() -> None:
    assert exemplar_loss(LOGITS, INDICES).item() == pytest.approx(-(LN(0.1) + LN(0.3)) / 2)


def test_nearest_slots() -> None:
    assert nearest_slots(LOGITS, 2).tolist() == [[3, 2], [0, 1]]
    with pytest.raises(EcnreidError, match="k=5"):
        nearest_slots(LOGITS, 5)


def test_neighbourhood_targets_exact_values() -> None:
    targets = neighbourhood_targets(LOGITS, INDICES, k=2)
    expected = torch.tensor([[1.0, 0.0, 0.5, 0.5], [0.5, 1.0, 0.0, 0.0]])
    assert torch.equal(targets, expected)  # exactly 1/k and 1, not renormalised
    assert targets.sum(dim=1).tolist() == [2.0, 1.5]


def test_neighbourhood_targets_k3() -> None:
    targets = neighbourhood_targets(LOGITS, torch.tensor([3, 2]), k=3)
    third = 1.0 / 3
    expected = torch.tensor([[0.0, third, third, 1.0], [third, third, 1.0, 0.0]])
    assert torch.equal(targets, expected)


def test_neighbourhood_loss_hand_computed() -> None:
    row0 = -(LN(0.1) + 0.5 * LN(0.3) + 0.5 * LN(0.4))
    row1 = -(0.5 * LN(0.4) + LN(0.3))
    assert neighbourhood_loss(LOGITS, INDICES, k=2).item() == pytest.approx((row0 + row1) / 2)


def test_neighbourhood_loss_gradient_uses_fixed_targets() -> None:
    logits = LOGITS.clone().requires_grad_(True)
    neighbourhood_loss(logits, INDICES, k=2).backward()
    # d/dz of −Σ w log softmax(z) = (Σw)·softmax(z) − w, averaged over the batch of 2.
    probs = F.softmax(LOGITS, dim=1)
    w = torch.tensor([[1.0, 0.0, 0.5, 0.5], [0.5, 1.0, 0.0, 0.0]])
    expected = (w.sum(1, keepdim=True) * probs - w) / 2
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_target_invariance_switches_at_epoch_five() -> None:
    exemplar = exemplar_loss(LOGITS, INDICES)
    neighbourhood = neighbourhood_loss(LOGITS, INDICES, k=2)
    assert not torch.isclose(exemplar, neighbourhood)
    assert torch.equal(target_invariance_loss(LOGITS, INDICES, epoch=0, k=2), exemplar)
    assert torch.equal(target_invariance_loss(LOGITS, INDICES, epoch=4, k=2), exemplar)
    assert torch.equal(target_invariance_loss(LOGITS, INDICES, epoch=5, k=2), neighbourhood)
    assert torch.equal(target_invariance_loss(LOGITS, INDICES, epoch=40, k=2), neighbourhood)
    off = target_invariance_loss(LOGITS, INDICES, epoch=40, k=2, use_neighbourhood=False)
    assert torch.equal(off, exemplar)
    late = target_invariance_loss(LOGITS, INDICES, epoch=5, k=2, neighbour_start_epoch=6)
    assert torch.equal(late, exemplar)


def test_ecn_total_loss() -> None:
    assert ecn_total_loss(torch.tensor(2.0), torch.tensor(4.0)).item() == pytest.approx(0.7 * 2 + 0.3 * 4)
    assert ecn_total_loss(torch.tensor(2.0), torch.tensor(4.0), lam=0.5).item() == pytest.approx(3.0)


def _random_case() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return F.normalize(torch.randn(8, 16), dim=1), F.normalize(torch.randn(50, 16), dim=1)


def test_topk_and_faiss_agree() -> None:
    features, memory = _random_case()
    # Each row's 7 best similarities lie far more than float32 rounding apart, so both searches rank them alike.
    best = (features @ memory.t()).topk(7, dim=1).values
    assert float((best[:, :-1] - best[:, 1:]).min()) > 1e-5
    by_topk = nearest_slots(features @ memory.t() / 0.05, k=6)
    by_faiss = nearest_slots_faiss(features, memory, k=6)
    assert by_faiss.dtype == torch.long and by_faiss.shape == (8, 6)
    assert torch.equal(by_topk, by_faiss)


def test_faiss_missing_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    features, memory = _random_case()
    with pytest.raises(EcnreidError, match="^faiss is not installed; install faiss-gpu"):
        nearest_slots_faiss(features, memory, k=6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_faiss_gpu_index_agrees_with_topk() -> None:
    features, memory = (t.cuda() for t in _random_case())
    by_faiss = nearest_slots_faiss(features, memory, k=6)
    assert by_faiss.is_cuda
    assert torch.equal(nearest_slots(features @ memory.t(), k=6), by_faiss)


def test_neighbourhood_loss_with_faiss_neighbours_equals_topk() -> None:
    from ecnreid.losses import nearest_slots_faiss, neighbourhood_loss

    generator = torch.Generator().manual_seed(3)
    memory = torch.nn.functional.normalize(torch.randn(50, 16, generator=generator), dim=1)
    features = torch.nn.functional.normalize(torch.randn(4, 16, generator=generator), dim=1)
    logits = features @ memory.T / 0.05
    indices = torch.tensor([0, 7, 7, 49])
    neighbours = nearest_slots_faiss(features, memory, k=6)
    expected = neighbourhood_loss(logits, indices, k=6)
    assert torch.allclose(neighbourhood_loss(logits, indices, k=6, neighbours=neighbours), expected)
    # Different neighbours change the loss: the argument is really used.
    assert not torch.allclose(neighbourhood_loss(logits, indices, k=6, neighbours=neighbours.flip(0)), expected)


def test_knn_backend_searches_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import ecnreid.losses as losses

    assert losses.knn_backend("topk", torch.device("cuda")) == "topk"
    assert losses.knn_backend("faiss", torch.device("cpu")) == "faiss-cpu"
    # On CUDA: a faiss GPU search where faiss sees a GPU, else top-k on the device (never a host copy).
    monkeypatch.setattr(losses, "faiss_gpu_count", lambda: 1)
    assert losses.knn_backend("faiss", torch.device("cuda")) == "faiss-gpu"
    monkeypatch.setattr(losses, "faiss_gpu_count", lambda: 0)
    assert losses.knn_backend("faiss", torch.device("cuda")) == "topk"
    with pytest.raises(EcnreidError, match="--knn annoy"):
        losses.knn_backend("annoy", torch.device("cpu"))


def test_neighbourhood_loss_equals_the_dense_targets_formula() -> None:
    # The loss gathers k + 1 weights; it must equal the official dense form, own slot among its neighbours or not.
    torch.manual_seed(3)
    logits = torch.randn(5, 40)
    indices = torch.tensor([0, 7, 12, 30, 39])
    logits[1, 7] = 50.0  # image 1's own slot is its nearest: weight 1, not 1 + 1/k
    dense = neighbourhood_targets(logits, indices, k=4)
    expected = -(dense * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert torch.allclose(neighbourhood_loss(logits, indices, k=4), expected, rtol=1e-6, atol=1e-6)


def test_k_may_be_one_or_the_memory_size_and_nothing_outside() -> None:
    similarity = torch.tensor([[0.1, 0.9, 0.5]])
    assert nearest_slots(similarity, k=1).tolist() == [[1]]
    assert sorted(nearest_slots(similarity, k=3)[0].tolist()) == [0, 1, 2]
    for k in (0, 4):
        with pytest.raises(EcnreidError, match=f"k={k} must be between 1 and the memory size 3"):
            nearest_slots(similarity, k=k)


def test_faiss_ranks_by_inner_product_with_k_above_the_dimension() -> None:
    # Inner products with [1, 0] are 10, 1, 0, -1, -10: by distance slot 1 would come first, by product slot 0.
    memory = torch.tensor([[10.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-10.0, 0.0]])
    found = nearest_slots_faiss(torch.tensor([[1.0, 0.0]]), memory, k=4)
    assert found.tolist() == [[0, 1, 2, 3]]


def test_default_neighbourhood_size_is_six() -> None:
    logits = torch.arange(8.0).flip(0).reshape(1, 8)  # slot j has the (j+1)-th largest logit
    indices = torch.tensor([7])
    targets = neighbourhood_targets(logits, indices)
    assert torch.allclose(targets, torch.tensor([[1 / 6] * 6 + [0.0, 1.0]]))
    log_probs = F.log_softmax(logits, dim=1)
    expected = -(log_probs[0, :6].sum() / 6 + log_probs[0, 7])
    assert torch.allclose(neighbourhood_loss(logits, indices), expected)
    assert torch.allclose(target_invariance_loss(logits, indices, epoch=5), expected)


def test_targets_are_float32_for_half_logits() -> None:
    targets = neighbourhood_targets(LOGITS.half(), INDICES, k=2)
    assert targets.dtype == torch.float32
    assert targets[0].tolist() == [1.0, 0.0, 0.5, 0.5]


def test_target_invariance_uses_the_given_neighbours() -> None:
    # Slots 0 and 1 instead of the top-2 (3 and 2) for image 0: the loss must follow the given neighbours.
    neighbours = torch.tensor([[0, 1], [0, 1]])
    given = target_invariance_loss(LOGITS, INDICES, epoch=5, k=2, neighbours=neighbours)
    assert torch.allclose(given, neighbourhood_loss(LOGITS, INDICES, k=2, neighbours=neighbours))
    # Image 0 (own slot 0 among them): -(log 0.1 + 0.5 log 0.2); image 1: -(log 0.3 + 0.5 log 0.4).
    expected = -((LN(0.1) + 0.5 * LN(0.2)) + (LN(0.3) + 0.5 * LN(0.4))) / 2
    assert given.item() == pytest.approx(expected, rel=1e-5)


def test_faiss_gpu_count_asks_faiss_and_is_zero_for_a_cpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from ecnreid.losses import faiss_gpu_count

    monkeypatch.setitem(sys.modules, "faiss", types.SimpleNamespace(get_num_gpus=lambda: 3))
    assert faiss_gpu_count() == 3
    monkeypatch.setitem(sys.modules, "faiss", types.SimpleNamespace())
    assert faiss_gpu_count() == 0
