"""Scoring a query/gallery split end to end: features → distances → (re-ranking) → metrics, tables and pictures."""

from __future__ import annotations

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
from ecnreid.evaluation.distances import pairwise_distance
from ecnreid.evaluation.evaluator import Evaluator, metrics_row
from ecnreid.evaluation.features import PooledBackbone
from ecnreid.evaluation.metrics import RankingResult
from ecnreid.io import write_json
from ecnreid.models.backbones import build_backbone
from ecnreid.progress import console
from ecnreid.runstate import load_checkpoint
from ecnreid.runtime import resolve_device


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
        from ecnreid.models.factory import model_from_checkpoint

        return model_from_checkpoint(load_checkpoint(config.checkpoint))
    mc = config.model
    backbone = build_backbone(mc.arch, weights=mc.weights, pretrained=mc.pretrained, last_stride=mc.last_stride)
    return PooledBackbone(backbone)


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """Library call behind ``ecnreid eval``: writes ``metrics.json`` (and pictures) into ``config.out``."""
    device = resolve_device(config.runtime.device)
    dataset = read_dataset(config.dataset, config.root, require_test=True)
    query, gallery = dataset.query, dataset.gallery
    if config.input.skip_bad_images:
        query, bad_q = verify_images(query)
        gallery, bad_g = verify_images(gallery)
        if bad_q or bad_g:
            console.print(f"[yellow]skipped {len(bad_q) + len(bad_g)} undecodable images")
    model = build_eval_model(config).to(device)
    evaluation = config.evaluation
    evaluate = Evaluator(
        query,
        gallery,
        height=config.input.height,
        width=config.input.width,
        device=device,
        batch_size=config.input.batch_size,
        workers=config.input.workers,
        flip=evaluation.flip,
        metric=evaluation.metric,
        rerank=evaluation.rerank,
    )
    scored = evaluate(model)
    results = scored.results
    out = Path(config.out)
    pictures = save_pictures(
        scored.query_features,
        scored.gallery_features,
        query,
        gallery,
        results,
        out,
        num_rank_lists=evaluation.save_ranks,
        metric=evaluation.metric,
    )
    summary = {
        "dataset": config.dataset,
        "query": len(query),
        "gallery": len(gallery),
        "model": config.model.arch if config.checkpoint is None else str(config.checkpoint),
        "results": {name: {**metrics_row(r), "num_valid_queries": r.num_valid_queries} for name, r in results.items()},
        "cmc": {name: r.cmc for name, r in results.items()},
        "timings": scored.timings,
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
    table = Table(title=f"{summary['method']} {summary['setting']}: {summary['source']} → {summary['target']}")
    for column in ("epoch", "R1", "R5", "R10", "mAP", "mINP"):
        table.add_column(column, justify="right")
    rows = summary.get("evaluations") or []
    for index, row in enumerate(rows):
        label = f"{row['epoch']} (final)" if index == len(rows) - 1 else str(row["epoch"])
        table.add_row(label, *(f"{row[k]:.1f}" for k in ("rank1", "rank5", "rank10", "mAP", "mINP")))
    return table
