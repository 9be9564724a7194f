"""The evaluator both `ecnreid eval` and the training run's evaluation hook call: features of a query/gallery
split → distances → (re-ranking) → CMC, mAP, mINP, block by block."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ecnreid.data.records import ImageRecord
from ecnreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ecnreid.evaluation.distances import iter_distance_blocks
from ecnreid.evaluation.features import extract_features
from ecnreid.evaluation.metrics import RankingResult, evaluate_blocks


def _ids(records: Sequence[ImageRecord]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([r.pid for r in records]), torch.tensor([r.camid for r in records])


# Most distances in one query block of score_features (256 MiB in float32): 4,096 query rows on Market-1501,
# 816 on MSMT17's 82,161-image gallery.
_BLOCK_DISTANCES = 1 << 26


def block_rows(num_gallery: int, most: int = 4096) -> int:
    """Query rows per distance block for a gallery of ``num_gallery``: ``most``, fewer on large galleries."""
    return max(1, min(most, _BLOCK_DISTANCES // max(1, num_gallery)))


def score_features(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    *,
    metric: str = "cosine",
    rerank: bool = False,
) -> RankingResult:
    """CMC/mAP/mINP of a query/gallery split from its features ``[Q, D]``, ``[G, D]``, block by block.

    Plain or k-reciprocal re-ranked (k1 20, k2 6, lambda 0.3, on the features' device; ``metric`` applies to
    the plain distances only), the query x gallery matrix is never held whole: each block of query rows goes
    to the metrics as soon as it is computed.
    """
    q_pids, q_cams = _ids(query)
    g_pids, g_cams = _ids(gallery)
    if rerank:
        from ecnreid.evaluation.reranking import iter_rerank_blocks

        blocks = iter_rerank_blocks(query_features, gallery_features)
    else:
        rows = block_rows(len(gallery_features))
        blocks = iter_distance_blocks(query_features, gallery_features, metric=metric, block_size=rows)
    return evaluate_blocks(blocks, q_pids, g_pids, q_cams, g_cams)


@dataclass
class Evaluation:
    """What one evaluation gives: results keyed ``plain`` (and ``rerank``), timings, and the features."""

    results: dict[str, RankingResult]
    timings: dict[str, float]
    query_features: torch.Tensor
    gallery_features: torch.Tensor

    def row(self, name: str = "plain") -> dict[str, float]:
        return metrics_row(self.results[name])


@dataclass
class Evaluator:
    """Scores models on one query/gallery split with fixed input settings (size and normalisation)."""

    query: Sequence[ImageRecord]
    gallery: Sequence[ImageRecord]
    height: int
    width: int
    device: torch.device
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    batch_size: int = 128
    workers: int = 2
    flip: bool = False
    metric: str = "cosine"
    rerank: bool = False
    show_progress: bool = True

    def features(self, model: nn.Module, records: Sequence[ImageRecord], description: str) -> torch.Tensor:
        return extract_features(
            model,
            records,
            height=self.height,
            width=self.width,
            mean=self.mean,
            std=self.std,
            batch_size=self.batch_size,
            workers=self.workers,
            device=self.device,
            flip=self.flip,
            show_progress=self.show_progress,
            description=description,
        )

    def __call__(self, model: nn.Module) -> Evaluation:
        start = time.perf_counter()
        qf = self.features(model, self.query, "query features")
        gf = self.features(model, self.gallery, "gallery features")
        timings = {"features_s": time.perf_counter() - start}
        start = time.perf_counter()
        results = {"plain": score_features(qf, gf, self.query, self.gallery, metric=self.metric)}
        timings["metrics_s"] = time.perf_counter() - start
        if self.rerank:
            start = time.perf_counter()
            results["rerank"] = score_features(qf, gf, self.query, self.gallery, rerank=True)
            timings["rerank_s"] = time.perf_counter() - start
        return Evaluation(results, timings, qf, gf)


def metrics_row(result: RankingResult) -> dict[str, float]:
    """Percentages for tables and JSON: R1, R5, R10, mAP, mINP."""
    return {
        "rank1": 100 * result.cmc[0],
        "rank5": 100 * result.cmc[min(4, len(result.cmc) - 1)],
        "rank10": 100 * result.cmc[min(9, len(result.cmc) - 1)],
        "mAP": 100 * result.mAP,
        "mINP": 100 * result.mINP,
    }


