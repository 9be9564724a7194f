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


def _faiss():
    try:
        import faiss
    except ImportError:
        raise EcnreidError(
            "faiss is not installed; install faiss-gpu (or faiss-cpu), or use the torch top-k neighbours"
        ) from None
    return faiss


def faiss_gpu_count() -> int:
    """GPUs this faiss build can use (0 for a CPU build, and on machines without CUDA)."""
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


KNN_BACKENDS = ("topk", "faiss-cpu", "faiss-gpu")


def knn_backend(method: str, device: torch.device) -> str:
    """The neighbour search ``--knn method`` runs on ``device``: ``topk`` (of the logits training already
    has), ``faiss-cpu`` or ``faiss-gpu``. On CUDA, faiss without GPU support falls to ``topk`` on the device:
    a CPU index there would copy the whole memory to the host every step."""
    if method == "topk":
        return "topk"
    if method != "faiss":
        raise EcnreidError(f"--knn {method}: expected topk or faiss")
    if device.type != "cuda":
        _faiss()
        return "faiss-cpu"
    return "faiss-gpu" if faiss_gpu_count() > 0 else "topk"


def nearest_slots_faiss(features: torch.Tensor, memory: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, k] of the k memory rows [N, dim] with the largest inner product with features [B, dim],
    by exact (brute-force) faiss search on the features' device; no copy between host and GPU."""
    faiss = _faiss()
    _check_k(k, memory.shape[0])
    queries = features.detach().float().contiguous()
    rows = memory.detach().float().contiguous()
    if queries.is_cuda:
        if faiss_gpu_count() == 0:
            raise EcnreidError("faiss GPU search was requested, but this faiss build sees no GPU")
        import faiss.contrib.torch_utils  # noqa: F401  (lets faiss.knn_gpu take and return CUDA tensors)

        device = queries.device.index if queries.device.index is not None else torch.cuda.current_device()
        _, neighbours = faiss.knn_gpu(
            _faiss_gpu_resources(), queries, rows.to(queries.device), k, metric=faiss.METRIC_INNER_PRODUCT,
            device=device,
        )
        return neighbours.long()
    _, neighbours = faiss.knn(queries.numpy(), rows.cpu().numpy(), k, metric=faiss.METRIC_INNER_PRODUCT)
    return torch.from_numpy(neighbours).long()


def neighbourhood_loss(
    logits: torch.Tensor,
    indices: torch.Tensor,
    k: int = 6,
    neighbours: torch.Tensor | None = None,
) -> torch.Tensor:
    """Neighbourhood invariance: ``−Σ_j w_j log softmax(z)_j`` with the official code's weights (1/k on the k
    nearest slots, 1 on the image's own slot, also when it is among the k; not renormalised), averaged over the
    batch; the k + 1 non-zero weights are gathered, never spread over all N slots."""
    if neighbours is None:
        neighbours = nearest_slots(logits, k)
    own = indices.reshape(-1, 1).long()
    weights = torch.full(neighbours.shape, 1.0 / k, device=logits.device)
    weights = weights.masked_fill(neighbours == own, 0.0)  # the own slot's weight is 1, not 1 + 1/k
    log_probs = F.log_softmax(logits.float(), dim=1)
    picked = (weights * log_probs.gather(1, neighbours)).sum(dim=1) + log_probs.gather(1, own).squeeze(1)
    return -picked.mean()


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
