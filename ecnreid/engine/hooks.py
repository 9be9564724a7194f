"""Hooks of the two-domain loop: what happens around training without being training.

A hook may act on each step's losses (``after_step``: a TensorBoard writer), add to an epoch's row before the
checkpoint is written (``extend_row``: evaluation), and act on the finished row after it (``after_epoch``: the
log, the curves, the console). Hooks run on the main process only. They see the loop as a ``TrainingRun``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ecnreid.config import TrainConfig
from ecnreid.data.two_domains import TwoDomainData
from ecnreid.evaluation.evaluator import Evaluator
from ecnreid.io import atomic_write_bytes
from ecnreid.progress import console


class TrainingRun(Protocol):
    """What a hook reads of the loop (``ecnreid.engine.loop.TwoDomainLoop``)."""

    config: TrainConfig
    data: TwoDomainData
    device: torch.device
    out: Path
    history: list[dict[str, Any]]
    #: the steps of the current epoch
    iters_per_epoch: int

    @property
    def model(self) -> nn.Module: ...

    def is_last_epoch(self, epoch: int) -> bool: ...


class Hook:
    """Does nothing; subclasses override what they need."""

    def after_step(self, loop: TrainingRun, epoch: int, iteration: int, values: dict[str, float]) -> None:
        """Act on a finished step's losses (``iteration`` counts from 0 within ``epoch``)."""

    def extend_row(self, loop: TrainingRun, epoch: int, row: dict[str, Any]) -> None:
        """Add entries to the epoch's row (they are saved with the checkpoint's history)."""

    def after_epoch(self, loop: TrainingRun, epoch: int, row: dict[str, Any]) -> None:
        """Act on the epoch's finished row (the checkpoint holding it is already written)."""

    def after_run(self, loop: TrainingRun, summary: dict[str, Any]) -> None:
        """Act on the run's summary."""


class EvaluationHook(Hook):
    """Scores the target's query/gallery split every ``every`` epochs and after the last one, for watching:
    the run's result is its final epoch, whatever these scores say."""

    def __init__(self, evaluator: Evaluator, every: int) -> None:
        self.evaluator = evaluator
        self.every = every

    def due(self, loop: TrainingRun, epoch: int) -> bool:
        return loop.is_last_epoch(epoch) or (self.every > 0 and (epoch + 1) % self.every == 0)

    def extend_row(self, loop: TrainingRun, epoch: int, row: dict[str, Any]) -> None:
        if self.due(loop, epoch):
            row.update(self.evaluator(loop.model).row())


class LogHook(Hook):
    """``log.jsonl``: one JSON line per epoch, rewritten whole from the history so that it always matches the
    checkpoint (a kill between the two cannot leave a row twice or not at all)."""

    def after_epoch(self, loop: TrainingRun, epoch: int, row: dict[str, Any]) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in loop.history)
        atomic_write_bytes(lines.encode(), loop.out / "log.jsonl")


class CurvesHook(Hook):
    """``curves.png``: losses and target scores against epochs."""

    def after_epoch(self, loop: TrainingRun, epoch: int, row: dict[str, Any]) -> None:
        from ecnreid.plots import training_curves_png

        training_curves_png(loop.history, loop.out / "curves.png")


class ConsoleHook(Hook):
    """One line per epoch: losses, speed and (when evaluated) rank-1 and mAP."""

    def after_epoch(self, loop: TrainingRun, epoch: int, row: dict[str, Any]) -> None:
        losses = "  ".join(f"{k.removeprefix('loss_')} {row[k]:.3f}" for k in row if k.startswith("loss_"))
        scores = f"  rank-1 {row['rank1']:.1f}  mAP {row['mAP']:.1f}" if "rank1" in row else ""
        console.print(f"epoch {epoch + 1}: {losses}  {row['images_per_s']:.0f} img/s{scores}")


def default_hooks(loop: TrainingRun) -> list[Hook]:
    """Evaluation on the target's test split, then the log, the curves and the console line."""
    cfg = loop.config
    target = loop.data.target
    evaluator = Evaluator(
        target.query,
        target.gallery,
        height=cfg.input.height,
        width=cfg.input.width,
        device=loop.device,
        batch_size=max(32, cfg.input.batch_size),
        workers=cfg.input.workers,
        flip=cfg.evaluation.flip,
    )
    return [EvaluationHook(evaluator, cfg.evaluation.every), LogHook(), CurvesHook(), ConsoleHook()]
