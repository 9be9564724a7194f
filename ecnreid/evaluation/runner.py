"""Scoring a query/gallery split end to end: features → distances → (re-ranking) → metrics, tables and pictures."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from ecnreid.config import EvalConfig, config_to_dict
from ecnreid.data.datasets import read_dataset
from ecnreid.data.image_dataset import verify_images
from ecnreid.data.records import ImageRecord
from ecnreid.evaluation.distances import iter_distance_blocks, pairwise_distance
from ecnreid.evaluation.features import PooledBackbone, extract_features
from ecnreid.evaluation.metrics import RankingResult, evaluate_blocks
from ecnreid.io import write_json
from ecnreid.models.backbones import build_backbone
from ecnreid.progress import console
from ecnreid.runtime import resolve_device


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


def evaluate_model(
    model: nn.Module,
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    *,
    height: int,
    width: int,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 2,
    flip: bool = False,
    metric: str = "cosine",
    rerank: bool = False,
    show_progress: bool = True,
) -> tuple[dict[str, RankingResult], dict[str, Any]]:
    """Extract features and score; returns results keyed ``plain`` (and ``rerank``) plus timings and features."""
    common = dict(
        height=height,
        width=width,
        batch_size=batch_size,
        workers=workers,
        device=device,
        flip=flip,
        show_progress=show_progress,
    )
    start = time.perf_counter()
    qf = extract_features(model, query, description="query features", **common)
    gf = extract_features(model, gallery, description="gallery features", **common)
    timings: dict[str, Any] = {"features_s": time.perf_counter() - start}
    start = time.perf_counter()
    results = {"plain": score_features(qf, gf, query, gallery, metric=metric)}
    timings["metrics_s"] = time.perf_counter() - start
    if rerank:
        start = time.perf_counter()
        results["rerank"] = score_features(qf, gf, query, gallery, rerank=True)
        timings["rerank_s"] = time.perf_counter() - start
    return results, {"timings": timings, "query_features": qf, "gallery_features": gf}


def metrics_row(result: RankingResult) -> dict[str, float]:
    """Percentages for tables and JSON: R1, R5, R10, mAP, mINP."""
    return {
        "rank1": 100 * result.cmc[0],
        "rank5": 100 * result.cmc[min(4, len(result.cmc) - 1)],
        "rank10": 100 * result.cmc[min(9, len(result.cmc) - 1)],
        "mAP": 100 * result.mAP,
        "mINP": 100 * result.mINP,
    }


def render_metrics_table(results: dict[str, RankingResult], title: str) -> Table:
    """A rich table with one row per result (plain, re-ranked)."""
    table = Table(title=title)
    for column in ("setting", "R1", "R5", "R10", "mAP", "mINP", "queries"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for name, result in results.items():
        row = metrics_row(result)
        table.add_row(
            name,
            *(f"{row[key]:.1f}" for key in ("rank1", "rank5", "rank10", "mAP", "mINP")),
            f"{result.num_valid_queries}/{result.num_queries}",
        )
    return table


def save_pictures(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    results: dict[str, RankingResult],
    out: Path,
    *,
    num_rank_lists: int,
    metric: str = "cosine",
) -> list[Path]:
    """Write the CMC curve PNG and, when asked, ``num_rank_lists`` rank-list PNGs; returns the paths written."""
    from ecnreid.evaluation.visualize import save_rank_lists
    from ecnreid.plots import cmc_curve_png

    written = [out / "cmc.png"]
    curves = {name: result.cmc for name, result in results.items()}
    first = next(iter(curves))
    cmc_curve_png(curves[first], written[0], label=first, extra={k: v for k, v in curves.items() if k != first})
    if num_rank_lists > 0:
        distmat = pairwise_distance(query_features, gallery_features, metric=metric)
        written += save_rank_lists(distmat, query, gallery, out / "ranks", num_queries=num_rank_lists)
    return written


def build_eval_model(config: EvalConfig) -> nn.Module:
    """A trained ECN model from ``--checkpoint``, or a bare backbone (``--weights`` / ``--pretrained``) pooled."""
    if config.checkpoint is not None:
        from ecnreid.engine.checkpoint import load_checkpoint
        from ecnreid.models.factory import model_from_checkpoint

        return model_from_checkpoint(load_checkpoint(config.checkpoint))
    mc = config.model
    backbone = build_backbone(mc.arch, weights=mc.weights, pretrained=mc.pretrained, last_stride=mc.last_stride)
    return PooledBackbone(backbone)


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """Library call behind ``ecnreid eval``: writes ``metrics.json`` (and pictures) into ``config.out``."""
    device = resolve_device(config.device)
    dataset = read_dataset(config.dataset, config.root, require_test=True)
    query, gallery = dataset.query, dataset.gallery
    if config.skip_bad_images:
        query, bad_q = verify_images(query)
        gallery, bad_g = verify_images(gallery)
        if bad_q or bad_g:
            console.print(f"[yellow]skipped {len(bad_q) + len(bad_g)} undecodable images")
    model = build_eval_model(config).to(device)
    results, extra = evaluate_model(
        model,
        query,
        gallery,
        height=config.height,
        width=config.width,
        device=device,
        batch_size=config.batch_size,
        workers=config.workers,
        flip=config.flip,
        metric=config.metric,
        rerank=config.rerank,
    )
    out = Path(config.out)
    pictures = save_pictures(
        extra["query_features"],
        extra["gallery_features"],
        query,
        gallery,
        results,
        out,
        num_rank_lists=config.save_ranks,
        metric=config.metric,
    )
    summary = {
        "dataset": config.dataset,
        "query": len(query),
        "gallery": len(gallery),
        "model": config.model.arch if config.checkpoint is None else str(config.checkpoint),
        "results": {name: {**metrics_row(r), "num_valid_queries": r.num_valid_queries} for name, r in results.items()},
        "cmc": {name: r.cmc for name, r in results.items()},
        "timings": extra["timings"],
        "pictures": [str(p) for p in pictures],
        "config": config_to_dict(config),
    }
    write_json(summary, out / "metrics.json")
    console.print(
        render_metrics_table(results, title=f"{config.dataset}: query {len(query)} vs gallery {len(gallery)}")
    )
    return summary


def render_train_summary(summary: dict[str, Any]) -> Table:
    """The final table of a training run: its target scores after each evaluation, the last row being the
    result (earlier rows are for watching only: no target label picks an epoch)."""
    table = Table(title=f"ECN {summary['setting']}: {summary['source']} → {summary['target']}")
    for column in ("epoch", "R1", "R5", "R10", "mAP", "mINP"):
        table.add_column(column, justify="right")
    rows = summary.get("evaluations") or []
    for index, row in enumerate(rows):
        label = f"{row['epoch']} (final)" if index == len(rows) - 1 else str(row["epoch"])
        table.add_row(label, *(f"{row[k]:.1f}" for k in ("rank1", "rank5", "rank10", "mAP", "mINP")))
    return table
