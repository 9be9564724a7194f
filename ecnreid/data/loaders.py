"""What a training method builds its loaders from: the run's seed, ranks, workers and training transform.

The loop makes one ``LoaderFactory`` per run and hands it to ``Method.build_loaders``; the method chooses the
datasets, the batch sizes (for all processes together) and the order: uniform, or P identities x K images
over labels it may change every epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from ecnreid.data.identity_sampler import IdentitySampler, LabelSource
from ecnreid.data.samplers import EpochLoader

# Seed offsets of the two loaders of a run, so that the source and target orders differ.
SOURCE_STREAM = 0
TARGET_STREAM = 7_919


@dataclass(frozen=True)
class LoaderFactory:
    """Builds the run's ``EpochLoader``s; ``seed`` is the run's loader seed, ``transform`` its training one."""

    seed: int
    workers: int
    transform: Callable[[Any], Any]
    rank: int = 0
    world_size: int = 1

    def per_process(self, batch_size: int) -> int:
        """One process's share of a batch (at least one image)."""
        return max(1, batch_size // self.world_size)

    def loader(
        self, dataset: Dataset, batch_size: int, *, collate_fn: Callable[[list[Any]], Any], stream: int = SOURCE_STREAM
    ) -> EpochLoader:
        """A loader in uniformly shuffled order; ``batch_size`` counts the images of all processes."""
        return EpochLoader(
            dataset,
            self.per_process(batch_size),
            seed=self.seed + stream,
            workers=self.workers,
            collate_fn=collate_fn,
            rank=self.rank,
            world_size=self.world_size,
        )

    def identity_loader(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        labels: LabelSource,
        instances: int,
        collate_fn: Callable[[list[Any]], Any],
        stream: int = SOURCE_STREAM,
    ) -> EpochLoader:
        """A loader of P x K batches (``instances`` = K) over ``labels()``, read at every ``set_epoch``;
        each process draws whole identities of its own."""
        per_process = self.per_process(batch_size)
        sampler = IdentitySampler(
            labels,
            instances,
            per_process,
            seed=self.seed + stream,
            rank=self.rank,
            world_size=self.world_size,
            reseed_each_pass=self.workers == 0,
        )
        return EpochLoader(
            dataset,
            per_process,
            seed=self.seed + stream,
            workers=self.workers,
            collate_fn=collate_fn,
            rank=self.rank,
            world_size=self.world_size,
            sampler=sampler,
        )
