"""Identity (P x K) batches: each batch holds P identities with K images each, over labels that may change
every epoch (a clustering method's pseudo-labels).

The labels are read at ``set_epoch``, so labels a method assigns in its ``before_epoch`` take effect that
epoch. The order depends only on ``(seed, epoch)`` and the labels; under DDP every rank draws the same order
and keeps its own share of whole identities, so no identity appears on two ranks in one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ecnreid.data.samplers import draw_seed
from ecnreid.errors import EcnreidError

LabelSource = Callable[[], "Sequence[int] | np.ndarray | torch.Tensor"]


def identity_groups(labels: Sequence[int] | np.ndarray | torch.Tensor) -> list[torch.Tensor]:
    """The indices of each identity, identities in increasing label order; negative labels are left out."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).flatten()
    kept = torch.nonzero(labels >= 0).flatten()
    if kept.numel() == 0:
        return []
    order = kept[torch.argsort(labels[kept], stable=True)]
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    return list(torch.split(order, counts.tolist()))


class IdentitySampler(Sampler[tuple[int, int]]):
    """``(index, workers' base seed)`` pairs in runs of ``instances`` images of one identity.

    A pass visits each identity of this rank's share once with ``instances`` of its images: drawn without
    replacement when it has that many, with replacement when it has fewer. Consecutive runs fill a batch of
    ``batch_size // instances`` identities. Like ``EpochSampler``, ``set_epoch`` seeds the order, each pass
    draws a fresh one, and ``reseed_each_pass`` draws a new base seed per pass (loaders without workers).
    """

    def __init__(
        self,
        labels: LabelSource,
        instances: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        reseed_each_pass: bool = False,
    ) -> None:
        if instances < 1:
            raise ValueError(f"instances per identity must be at least 1, got {instances}")
        if batch_size % instances != 0:
            raise EcnreidError(
                f"a batch of {batch_size} images per process is not a whole number of identities with {instances} "
                f"images each; choose a batch size that is a multiple of {instances}"
            )
        self.labels = labels
        self.batch_size = batch_size
        self.instances = instances
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.reseed_each_pass = reseed_each_pass
        self.generator = torch.Generator()
        self.groups: list[torch.Tensor] = []  # read at set_epoch: before the first, the labels may not exist yet
        self.base_seed = 0
        self.passes = 0

    def set_epoch(self, epoch: int) -> None:
        """Read the labels and seed this epoch's order; too few identities for one batch is an error."""
        self.groups = identity_groups(self.labels())
        per_batch = self.batch_size // self.instances
        if self.identities_per_rank < per_batch:
            raise EcnreidError(
                f"epoch {epoch + 1}: {len(self.groups)} identities"
                + (f" over {self.world_size} processes" if self.world_size > 1 else "")
                + f" are fewer than the {per_batch} that one batch of {self.batch_size} images takes "
                f"({self.instances} per identity); lower the batch size"
            )
        self.generator.manual_seed(self.seed + epoch)
        self.base_seed = draw_seed(self.generator)
        self.passes = 0

    @property
    def identities_per_rank(self) -> int:
        return len(self.groups) // self.world_size

    def __len__(self) -> int:
        return self.identities_per_rank * self.instances

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.passes > 0 and self.reseed_each_pass:
            self.base_seed = draw_seed(self.generator)
        self.passes += 1
        order = torch.randperm(len(self.groups), generator=self.generator)
        # Every rank draws the images of every identity, so that all ranks' generators stay in step.
        picks = [self._pick(self.groups[g]) for g in order.tolist()]
        share = picks[: self.identities_per_rank * self.world_size][self.rank :: self.world_size]
        base = self.base_seed
        for run in share:
            for index in run.tolist():
                yield index, base

    def _pick(self, members: torch.Tensor) -> torch.Tensor:
        k = self.instances
        if len(members) >= k:
            return members[torch.randperm(len(members), generator=self.generator)[:k]]
        return members[torch.randint(len(members), (k,), generator=self.generator)]

