"""What a training method is to the two-domain loop (``ecnreid.engine.loop``).

The loop owns epochs, AMP, DDP, checkpoints, resume and hooks; a method owns its model, its extra state (ECN:
the exemplar memory), its losses, and (through overridable defaults) its optimiser and scheduler, its loaders,
its resume keys, its DDP needs and the settings it refuses. A new method is one file with a ``Method``
subclass plus its name in ``ecnreid.methods.METHODS``.

This module imports neither the registry nor the loop nor ``ecnreid.inference``: the loop is handed a method,
and inference looks a method up by the name its model card records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from ecnreid.config import TrainConfig
from ecnreid.data.batches import LabelledBatch, UnlabelledBatch, collate_labelled, collate_unlabelled
from ecnreid.data.image_dataset import ImageDataset
from ecnreid.data.loaders import TARGET_STREAM, LoaderFactory
from ecnreid.data.samplers import EpochLoader
from ecnreid.data.two_domains import TwoDomainData
from ecnreid.models.card import MethodCard, ModelCard, build_card
from ecnreid.runtime import RunContext

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler

__all__ = ["LoaderFactory", "Method", "RunContext", "StepOutput"]


@dataclass
class StepOutput:
    """One step's losses: ``total`` is what the loop back-propagates; ``parts`` are logged as ``loss_<name>``;
    ``state`` is handed to :meth:`Method.after_step` (e.g. the target features for a memory update)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]
    state: Any = None

    def values(self) -> dict[str, float]:
        return {"loss_total": self.total.item(), **{f"loss_{k}": v.item() for k, v in self.parts.items()}}


class Method(ABC):
    """A training method for labelled source (``x``) plus unlabelled target (``u``) batches."""

    #: its name in ``ecnreid.methods.METHODS`` and in ``--method``
    name: ClassVar[str] = ""
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
        """Parameter groups for :meth:`build_optimizer`."""

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Raise ``EcnreidError`` (one line naming the flag) for settings this method cannot take; runs when
        the method is looked up by name, before anything is read or written."""
        return None

    def build_optimizer(self) -> tuple[torch.optim.Optimizer, LRScheduler]:
        """The optimiser over :meth:`parameter_groups` and its scheduler, which the loop steps once per epoch.

        The default: SGD with Nesterov momentum (``--lr``, ``--momentum``, ``--weight-decay``) and the
        learning rate times ``--lr-gamma`` at each of ``--lr-steps``."""
        optim = self.config.optim
        optimizer = torch.optim.SGD(
            self.parameter_groups(),
            lr=optim.lr,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
            nesterov=True,
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(optim.lr_steps), gamma=optim.lr_gamma
        )
        return optimizer, scheduler

    def build_loaders(self, factory: LoaderFactory) -> tuple[EpochLoader, EpochLoader | None]:
        """The source loader (``(image, pid, camid, index)`` samples, one epoch is one pass over it) and the
        target loader (``(image, camid, index)`` samples from :meth:`target_dataset`; None when unused).

        The default shuffles both uniformly: ``--batch-size`` source images, ``--target-batch-size`` (else
        ``--batch-size``) target images per step, over all processes."""
        cfg = self.config
        source = factory.loader(
            ImageDataset(self.data.source_train, factory.transform), cfg.input.batch_size, collate_fn=collate_labelled
        )
        target_dataset = self.target_dataset(factory.transform)
        target = None
        if target_dataset is not None:
            batch_size = cfg.domains.target_batch_size or cfg.input.batch_size
            target = factory.loader(target_dataset, batch_size, collate_fn=collate_unlabelled, stream=TARGET_STREAM)
        return source, target

    def ddp_find_unused_parameters(self) -> bool:
        """Whether DistributedDataParallel must look for parameters a step leaves without gradient."""
        return False

    @abstractmethod
    def step(self, network: nn.Module, x: LabelledBatch, u: UnlabelledBatch | None, epoch: int) -> StepOutput:
        """Forward both batches through ``network`` and return the losses (no backward, no optimiser)."""

    def after_step(self, output: StepOutput, u: UnlabelledBatch | None, epoch: int) -> None:
        """Runs after the optimiser step of a step whose losses were finite (e.g. a memory update)."""
        return None

    def before_epoch(self, epoch: int) -> None:
        """Runs at the start of every epoch, on resume too (state derived from the checkpoint's), before the
        loaders are re-seeded: labels it assigns (a clustering method's) order that epoch's batches."""
        return None

    def epoch_statistics(self) -> dict[str, Any]:
        """Values the method adds to the epoch's row (``log.jsonl``), e.g. its clustering's statistics."""
        return {}

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
        """What must match between a checkpoint and a run that resumes it, beyond what the loop checks
        (method, source and target sets, source classes, architecture): every method-specific key."""
        return {}

    def provenance(self) -> dict[str, Any]:
        """What the run actually trained with, for config.json and metrics.json; every key is optional
        (``setting`` names the variant trained, when a method has several)."""
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

    def card(self, history: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
        """The model card a checkpoint after ``epoch`` completed epochs carries, as a plain dict."""
        return build_card(self.config, self.model_card(), history, epoch).to_dict()

    @classmethod
    def model_from_card(cls, card: ModelCard, device: torch.device) -> nn.Module:
        """The model a checkpoint of this method holds, built (not loaded) from its card: its ``state_dict``
        keys are those of :attr:`model`, and its eval-mode forward gives the card's feature."""
        raise NotImplementedError(f"{cls.__name__} does not rebuild its model from a model card")

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
