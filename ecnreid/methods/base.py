"""What a training method is to the two-domain loop (``ecnreid.engine.loop``).

The loop owns epochs, the optimiser and scheduler, AMP, DDP, checkpoints, resume and hooks; a method owns its
model, its extra state (ECN: the exemplar memory) and its losses. A new method is one file with a ``Method``
subclass plus its name in ``ecnreid.methods.METHODS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ecnreid.config import TrainConfig
from ecnreid.data.batches import LabelledBatch, UnlabelledBatch
from ecnreid.engine.data import TwoDomainData
from ecnreid.inference.card import MethodCard
from ecnreid.runtime import DistributedContext


@dataclass
class StepOutput:
    """One step's losses: ``total`` is what the loop back-propagates; ``parts`` are logged as ``loss_<name>``;
    ``state`` is handed to :meth:`Method.after_step` (e.g. the target features for a memory update)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]
    state: Any = None

    def values(self) -> dict[str, float]:
        return {"loss_total": self.total.item(), **{f"loss_{k}": v.item() for k, v in self.parts.items()}}


@dataclass
class RunContext:
    """Where the method runs: device and distributed ranks."""

    device: torch.device
    dist: DistributedContext = field(default_factory=DistributedContext)


class Method(ABC):
    """A training method for labelled source (``x``) plus unlabelled target (``u``) batches."""

    #: the module the optimiser trains, that checkpoints hold and that evaluation extracts features with
    model: nn.Module
    #: the module whose forward :meth:`step` calls (the loop may wrap it in DistributedDataParallel)
    network: nn.Module

    def __init__(self, config: TrainConfig, data: TwoDomainData, run: RunContext) -> None:
        self.config = config
        self.data = data
        self.run = run

    @property
    @abstractmethod
    def uses_target(self) -> bool:
        """Whether unlabelled target batches are drawn at all."""

    def target_dataset(self, transform: Any) -> Dataset | None:
        """The target training set as ``(image, camid, index)`` samples; None when the target is unused."""
        return None

    @abstractmethod
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the loop's SGD."""

    @abstractmethod
    def step(self, network: nn.Module, x: LabelledBatch, u: UnlabelledBatch | None, epoch: int) -> StepOutput:
        """Forward both batches through ``network`` and return the losses (no backward, no optimiser)."""

    def after_step(self, output: StepOutput, u: UnlabelledBatch | None, epoch: int) -> None:
        """Runs after the optimiser step of a step whose losses were finite (e.g. a memory update)."""
        return None

    def before_epoch(self, epoch: int) -> None:
        """Runs at the start of every epoch, on resume too (state derived from the checkpoint's)."""
        return None

    def before_training(self) -> None:
        """Runs once when a run starts from scratch (not on resume)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Method state beyond the model's weights (saved in checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        return None

    def signature(self) -> dict[str, Any]:
        """What must match between a checkpoint and a run that resumes it (beyond the data and model)."""
        return {}

    def provenance(self) -> dict[str, Any]:
        """What the run actually trained with, for config.json and metrics.json."""
        return {}

    def model_card(self) -> MethodCard:
        """The method's part of the checkpoint's model card: its test-time feature and the setting.

        This default describes the model's eval-mode output, L2-normalised, and measures its width once on a
        blank image (the forward runs without gradients and draws no random numbers in eval mode)."""
        dim = getattr(self, "_card_feature_dim", None)
        if dim is None:
            was_training = self.model.training
            height, width = self.config.input.height, self.config.input.width
            try:
                with torch.no_grad():
                    output = self.model.eval()(torch.zeros(1, 3, height, width, device=self.run.device))
            finally:
                self.model.train(was_training)
            if not isinstance(output, torch.Tensor) or output.dim() != 2:
                raise ValueError(f"{type(self).__name__}: the eval-mode model must give [B, D] features")
            dim = self._card_feature_dim = int(output.shape[1])
        return MethodCard("the model's eval-mode output, L2-normalised", dim, self.provenance().get("setting"))

    def describe(self) -> str:
        """One line announcing the run."""
        d = self.data
        return (
            f"{type(self).__name__}: source {self.config.domains.source} ({len(d.source_train)} images) → "
            f"target {self.config.domains.target} ({len(d.target_train)} train images)"
        )

    def notices(self) -> list[str]:
        """Warnings to show when the run starts."""
        return []
