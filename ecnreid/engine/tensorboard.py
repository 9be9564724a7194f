"""``--tensorboard``: the run's scalars as TensorBoard event files in ``OUT/tensorboard/``, written by a hook.

Tags: ``loss/<name>`` per step (the global step counts from 1 across epochs), ``lr`` per epoch (the learning
rate of the first parameter group after the epoch's scheduler step), ``eval/<metric>`` per evaluated epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecnreid.engine.hooks import Hook, TrainingRun
from ecnreid.errors import EcnreidError

FOLDER = "tensorboard"
EVAL_METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")
MISSING = "--tensorboard: the tensorboard package is not installed; pip install 'ecnreid[tensorboard]'"


def require_tensorboard() -> type:
    """torch's ``SummaryWriter``; without the tensorboard package, a one-line error saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard imports the tensorboard package
        raise EcnreidError(MISSING) from None
    return SummaryWriter


class TensorBoardHook(Hook):
    """Writes the scalars into ``folder``; the writer opens at the first event (hooks run on the main
    process only, so the other processes of a DDP run write nothing)."""

    def __init__(self, folder: Path) -> None:
        self.writer_class = require_tensorboard()
        self.folder = Path(folder)
        self.writer: Any = None

    def _writer(self, first_step: int | None = None) -> Any:
        if self.writer is None:
            # A resumed run repeats the epoch it was interrupted in: TensorBoard drops the events an earlier
            # process wrote from this step on, so each step is shown once.
            self.writer = self.writer_class(log_dir=str(self.folder), purge_step=first_step)
        return self.writer

    def after_step(self, loop: TrainingRun, epoch: int, iteration: int, values: dict[str, float]) -> None:
        step = epoch * loop.iters_per_epoch + iteration + 1
        writer = self._writer(first_step=step)
        for name, value in values.items():
            writer.add_scalar(f"loss/{name.removeprefix('loss_')}", value, step)

    def after_epoch(self, loop: TrainingRun, epoch: int, row: dict[str, Any]) -> None:
        writer = self._writer()
        writer.add_scalar("lr", row["lr"], epoch + 1)
        for metric in EVAL_METRICS:
            if metric in row:
                writer.add_scalar(f"eval/{metric}", row[metric], epoch + 1)
        writer.flush()

    def after_run(self, loop: TrainingRun, summary: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
