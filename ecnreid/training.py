"""Library entry point behind ``ecnreid train``: the method is looked up by name here, so that the loop
(``ecnreid.engine.loop``) is handed a method and never imports the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecnreid.config import TrainConfig
from ecnreid.data.two_domains import TwoDomainData
from ecnreid.engine.hooks import Hook
from ecnreid.engine.loop import TwoDomainLoop
from ecnreid.engine.tensorboard import FOLDER as TENSORBOARD_FOLDER
from ecnreid.engine.tensorboard import TensorBoardHook
from ecnreid.methods import resolve_method


def build_loop(
    config: TrainConfig,
    data: TwoDomainData | None = None,
    hooks: list[Hook] | None = None,
    extra_hooks: list[Hook] | None = None,
) -> TwoDomainLoop:
    """The loop for ``config.method``, which has checked ``config`` before anything is read or written;
    ``--tensorboard`` adds its writer after the other hooks."""
    method = resolve_method(config)
    extra_hooks = list(extra_hooks or [])
    if config.tensorboard:
        extra_hooks.append(TensorBoardHook(Path(config.out) / TENSORBOARD_FOLDER))
    return TwoDomainLoop(config, method, data=data, hooks=hooks, extra_hooks=extra_hooks)


def train(config: TrainConfig, extra_hooks: list[Hook] | None = None) -> dict[str, Any]:
    """Train ``config.method``: the run's summary, or ``{}`` on the other processes of a torchrun job (only
    rank 0 reports)."""
    loop = build_loop(config, extra_hooks=extra_hooks)
    summary = loop.fit()
    return summary if loop.ctx.is_main else {}
