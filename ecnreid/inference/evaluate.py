"""``ecnreid eval``: scoring a query/gallery split end to end with a checkpoint's model (rebuilt by the method
that trained it) or a bare backbone: features → distances → (re-ranking) → metrics, tables and pictures; and
the final table of ``ecnreid train``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from ecnreid.config import EvalConfig, InputConfig, ModelConfig, config_to_dict, fill_defaults
from ecnreid.data.datasets import read_dataset
from ecnreid.data.image_dataset import verify_images
from ecnreid.data.records import ImageRecord
from ecnreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ecnreid.errors import EcnreidError
from ecnreid.evaluation.distances import pairwise_distance
from ecnreid.evaluation.evaluator import Evaluator, metrics_row
from ecnreid.evaluation.metrics import RankingResult
from ecnreid.inference.adapted import AdaptedModel, load_adapted_model
from ecnreid.inference.card import ECN_FEATURE, ModelCard
from ecnreid.inference.messages import say
from ecnreid.io import write_json
from ecnreid.models.backbones import build_backbone
from ecnreid.models.pooled import PooledBackbone
from ecnreid.progress import console
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


@dataclass
class ScoredModel:
    """The network ``eval`` scores, the input it takes, and what ``metrics.json`` records of it."""

    network: nn.Module
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    record: dict[str, Any]


def _card_pretrained(card: ModelCard) -> bool | None:
    """Whether the card's training started from pretrained weights (None when the card does not say)."""
    kind = (card.details.get("backbone_weights") or {}).get("kind")
    return None if kind is None else kind != "random"


def check_options_agree_with_card(config: EvalConfig, adapted: AdaptedModel) -> None:
    """Stop at the first model option given with ``--checkpoint`` that contradicts its model card; an
    option equal to the card's value is fine."""
    card, where = adapted.card, f"--checkpoint {adapted.checkpoint} holds a model with"
    given, model = config.input, config.model
    last_stride = (card.details.get("model") or {}).get("last_stride")  # a method's card may not record it
    stated = [
        ("--arch", model.arch, card.arch, "architecture"),
        ("--height", given.height, card.input_height, "input height"),
        ("--width", given.width, card.input_width, "input width"),
        ("--last-stride", model.last_stride, last_stride, "last stride"),
    ]
    for flag, value, held, what in stated:
        if value is not None and held is not None and value != held:
            raise EcnreidError(
                f"{flag} {value}: {where} {what} {held}; leave out {flag} (eval takes it from the model card)"
            )
    if model.pretrained is not None and model.pretrained != _card_pretrained(card):
        flag = "--pretrained" if model.pretrained else "--no-pretrained"
        raise EcnreidError(f"{flag}: --checkpoint {adapted.checkpoint} holds the trained weights; leave out {flag}")


def build_eval_model(config: EvalConfig) -> ScoredModel:
    """The trained model of ``--checkpoint``, with the input its model card states; else a bare backbone
    (``--arch``, ``--weights`` / ``--pretrained``) pooled, at ``--height`` x ``--width``."""
    if config.checkpoint is not None:
        adapted = load_adapted_model(config.checkpoint)
        check_options_agree_with_card(config, adapted)
        card = adapted.card
        say(f"{adapted.checkpoint}: {card.arch} at {card.input_height}x{card.input_width}, as its model card states")
        record = {"checkpoint": str(adapted.checkpoint), "checkpoint_sha256": adapted.checkpoint_sha256}
        return ScoredModel(
            adapted.network, card.input_height, card.input_width, card.mean, card.std, {**record, **card.to_dict()}
        )
    mc = fill_defaults(config.model, ModelConfig)
    size = fill_defaults(config.input, InputConfig)
    backbone = build_backbone(mc.arch, weights=mc.weights, pretrained=mc.pretrained, last_stride=mc.last_stride)
    record = {
        "arch": mc.arch,
        "weights": backbone.weights_origin,
        "last_stride": mc.last_stride,
        "input_height": size.height,
        "input_width": size.width,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "feature": ECN_FEATURE,
        "feature_dim": backbone.out_channels,
    }
    return ScoredModel(PooledBackbone(backbone), size.height, size.width, IMAGENET_MEAN, IMAGENET_STD, record)


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
    scored_model = build_eval_model(config)
    evaluation = config.evaluation
    evaluate = Evaluator(
        query,
        gallery,
        height=scored_model.height,
        width=scored_model.width,
        mean=scored_model.mean,
        std=scored_model.std,
        device=device,
        batch_size=config.input.batch_size,
        workers=config.input.workers,
        flip=evaluation.flip,
        metric=evaluation.metric,
        rerank=evaluation.rerank,
    )
    scored = evaluate(scored_model.network.to(device))
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
        "model": scored_model.record,
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
    name = " ".join(str(part) for part in (summary["method"], summary.get("setting")) if part)
    table = Table(title=f"{name}: {summary['source']} → {summary['target']}")
    for column in ("epoch", "R1", "R5", "R10", "mAP", "mINP"):
        table.add_column(column, justify="right")
    rows = summary.get("evaluations") or []
    for index, row in enumerate(rows):
        label = f"{row['epoch']} (final)" if index == len(rows) - 1 else str(row["epoch"])
        table.add_row(label, *(f"{row[k]:.1f}" for k in ("rank1", "rank5", "rank10", "mAP", "mINP")))
    return table
