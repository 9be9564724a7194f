"""ECN losses (Zhong et al., CVPR 2019): source identity, exemplar and neighbourhood invariance.

Target-side losses take the memory logits ``z = f · Mᵀ / β`` [B, N] and each image's memory index [B].
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ecnreid.errors import EcnreidError


def source_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Identity cross-entropy on the labelled source batch: logits [B, classes], labels [B]."""
    return F.cross_entropy(logits, labels)


def exemplar_loss(logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Exemplar invariance: every target image is its own class; logits [B, N], indices [B]."""
    return F.cross_entropy(logits, indices)


def _check_k(k: int, num_slots: int) -> None:
    if not 1 <= k <= num_slots:
        raise EcnreidError(f"neighbourhood size k={k} must be between 1 and the memory size {num_slots}")


def nearest_slots(logits_or_similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, k] of the k most similar memory slots (top-k of the detached similarities [B, N]).

    Logits and similarities rank the same (β > 0), so the logits training already computed serve.
    The image's own slot is included when it is among the k most similar.
    """
    _check_k(k, logits_or_similarity.shape[1])
    return logits_or_similarity.detach().topk(k, dim=1).indices


@functools.cache
def _faiss_gpu_resources():  # one allocator per process: creating it costs far more than a search
    import faiss

    return faiss.StandardGpuResources()


def nearest_slots_faiss(
    features: torch.Tensor, memory: torch.Tensor, k: int, use_gpu: bool | None = None
) -> torch.Tensor:
    """Indices [B, k] of the k memory rows [N, dim] with the largest inner product with features [B, dim].

    Builds a flat inner-product faiss index of the current memory and searches it. ``use_gpu=None``
    picks a GPU index when the features are on CUDA and faiss sees a GPU.
    """
    try:
        import faiss
    except ImportError:
        raise EcnreidError(
            "faiss is not installed; install faiss-gpu (or faiss-cpu), or use the torch top-k neighbours"
        ) from None
    _check_k(k, memory.shape[0])
    queries = features.detach().float().cpu().contiguous().numpy()
    rows = memory.detach().float().cpu().contiguous().numpy()
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu is None:
        use_gpu = features.is_cuda and gpus > 0
    if use_gpu and gpus == 0:
        raise EcnreidError("a faiss GPU index was requested, but this faiss build sees no GPU")
    if use_gpu:
        config = faiss.GpuIndexFlatConfig()
        config.device = (features.device.index or 0) if features.is_cuda else 0
        index = faiss.GpuIndexFlatIP(_faiss_gpu_resources(), rows.shape[1], config)
    else:
        index = faiss.IndexFlatIP(rows.shape[1])
    index.add(rows)
    _, neighbours = index.search(queries, k)
    return torch.from_numpy(neighbours).to(device=features.device, dtype=torch.long)


def neighbourhood_targets(
    logits: torch.Tensor, indices: torch.Tensor, k: int = 6, neighbours: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft targets [B, N] of the official code: 1/k on the k nearest slots, then 1 on the image's own
    slot (overwriting, also when it is among the k), not renormalised.

    ``neighbours`` [B, k] may come precomputed (e.g. from faiss); by default the top-k of the logits.
    """
    if neighbours is None:
        neighbours = nearest_slots(logits, k)
    targets = torch.zeros_like(logits, dtype=torch.float32)
    targets.scatter_(1, neighbours, 1.0 / k)
    targets.scatter_(1, indices.reshape(-1, 1).long(), 1.0)
    return targets


def neighbourhood_loss(
    logits: torch.Tensor, indices: torch.Tensor, k: int = 6, neighbours: torch.Tensor | None = None
) -> torch.Tensor:
    """Neighbourhood invariance: ``−Σ_j w_j log softmax(z)_j``, averaged over the batch."""
    targets = neighbourhood_targets(logits, indices, k, neighbours)
    log_probs = F.log_softmax(logits.float(), dim=1)
    return -(targets * log_probs).sum(dim=1).mean()


def target_invariance_loss(
    logits: torch.Tensor,
    indices: torch.Tensor,
    epoch: int,
    k: int = 6,
    neighbour_start_epoch: int = 5,
    use_neighbourhood: bool = True,
    neighbours: torch.Tensor | None = None,
) -> torch.Tensor:
    """Target loss: exemplar cross-entropy before ``neighbour_start_epoch`` (0-based; official code
    ``epoch > 4``) or without neighbourhood invariance, the neighbourhood loss from then on."""
    if use_neighbourhood and epoch >= neighbour_start_epoch:
        return neighbourhood_loss(logits, indices, k, neighbours)
    return exemplar_loss(logits, indices)


def ecn_total_loss(source: torch.Tensor, target: torch.Tensor, lam: float = 0.3) -> torch.Tensor:
    """``L = (1−λ)·L_source + λ·L_target`` (λ = 0.3 in the paper)."""
    return (1.0 - lam) * source + lam * target
