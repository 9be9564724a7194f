"""Query-gallery distance matrices, whole or in query-row blocks (for MSMT17-sized problems)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class _Metric:
    """How a metric prepares a feature matrix once, and turns a prepared query block into distances."""

    prepare: Callable[[Tensor], tuple[Tensor, ...]]
    block: Callable[[tuple[Tensor, ...], tuple[Tensor, ...]], Tensor]


def _prepare_cosine(features: Tensor) -> tuple[Tensor, ...]:
    return (F.normalize(features, dim=1),)


def _cosine_block(query: tuple[Tensor, ...], gallery: tuple[Tensor, ...]) -> Tensor:
    # 1 - cos, built in place on the matmul output so a block needs one [B, G] buffer.
    return (query[0] @ gallery[0].T).neg_().add_(1.0)


def _prepare_euclidean(features: Tensor) -> tuple[Tensor, ...]:
    return features, features.pow(2).sum(dim=1)


def _euclidean_block(query: tuple[Tensor, ...], gallery: tuple[Tensor, ...]) -> Tensor:
    q, q_sq = query
    g, g_sq = gallery
    # ||q||^2 + ||g||^2 - 2 q.g can dip below zero by rounding; clamp before the square root.
    squared = torch.addmm(g_sq.unsqueeze(0), q, g.T, alpha=-2.0).add_(q_sq.unsqueeze(1))
    return squared.clamp_min_(0.0).sqrt_()


METRICS: dict[str, _Metric] = {
    "cosine": _Metric(_prepare_cosine, _cosine_block),
    "euclidean": _Metric(_prepare_euclidean, _euclidean_block),
}


def _check_inputs(query: Tensor, gallery: Tensor, metric: str, block_size: int) -> _Metric:
    if metric not in METRICS:
        raise ValueError(f"distance metric {metric!r} is unknown; valid names: {', '.join(sorted(METRICS))}")
    if query.dim() != 2 or gallery.dim() != 2:
        raise ValueError(
            f"distance features must be 2-D [N, D]; got query {tuple(query.shape)}, gallery {tuple(gallery.shape)}"
        )
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"distance features differ in dimension: query has {query.shape[1]}, gallery {gallery.shape[1]}"
        )
    if block_size < 1:
        raise ValueError(f"distance block_size must be at least 1, got {block_size}")
    return METRICS[metric]


@torch.no_grad()
def iter_distance_blocks(
    query: Tensor, gallery: Tensor, metric: str = "cosine", block_size: int = 4096
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(row_offset, distances[offset:offset + B])``, float32 ``[B, G]``, over query blocks.

    The gallery is prepared once; only one block of ``block_size`` query rows exists at a time.
    """
    spec = _check_inputs(query, gallery, metric, block_size)
    prepared_gallery = spec.prepare(gallery.float())
    for start in range(0, query.shape[0], block_size):
        prepared_query = spec.prepare(query[start : start + block_size].float())
        yield start, spec.block(prepared_query, prepared_gallery)


@torch.no_grad()
def pairwise_distance(query: Tensor, gallery: Tensor, metric: str = "cosine", block_size: int = 4096) -> Tensor:
    """Distance matrix ``[Q, G]`` (float32) between query ``[Q, D]`` and gallery ``[G, D]`` features.

    ``cosine`` is ``1 - cos`` (features are normalised here); ``euclidean`` is the true (not squared)
    L2 distance. Rows are computed in blocks of ``block_size`` queries to bound the temporaries.
    """
    _check_inputs(query, gallery, metric, block_size)
    out = torch.empty(query.shape[0], gallery.shape[0], dtype=torch.float32, device=query.device)
    for start, block in iter_distance_blocks(query, gallery, metric, block_size):
        out[start : start + block.shape[0]] = block
    return out
