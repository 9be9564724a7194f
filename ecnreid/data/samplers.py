"""Data loaders built once per run whose order and augmentation depend only on (seed, epoch).

ECN's loop (its official code): one epoch is one pass over the source loader (``x``); the target loader
(``u``) restarts whenever it runs out. ``EpochLoader.set_epoch`` re-seeds both before each epoch, so a resumed
run continues exactly, while the worker processes persist across epochs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ecnreid.errors import EcnreidError


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from its torch seed (base seed + worker id)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def draw_seed(generator: torch.Generator) -> int:
    """A base seed for the workers, drawn as DataLoader draws its own."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


class EpochSampler(Sampler[tuple[int, int]]):
    """Indices of one rank's share of the dataset, each paired with the workers' base seed of its epoch.

    ``set_epoch`` seeds the order; each pass within an epoch draws a fresh permutation from the same
    generator. ``reseed_each_pass`` also draws a base seed per pass, as a loader without persistent workers
    does (so that runs with ``workers=0`` reproduce those of earlier versions).
    """

    def __init__(
        self,
        size: int,
        *,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        reseed_each_pass: bool = False,
    ) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.reseed_each_pass = reseed_each_pass
        self.generator = torch.Generator()
        self.base_seed = 0
        self.passes = 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)
        self.base_seed = draw_seed(self.generator)
        self.passes = 0

    def __len__(self) -> int:
        return self.size // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.passes > 0 and self.reseed_each_pass:
            self.base_seed = draw_seed(self.generator)
        self.passes += 1
        order = torch.randperm(self.size, generator=self.generator) if self.shuffle else torch.arange(self.size)
        base = self.base_seed
        for index in order[: len(self) * self.world_size][self.rank :: self.world_size].tolist():
            yield index, base
        if self.shuffle:
            # A finished pass draws one more permutation, as torch's RandomSampler does (for the remainder of
            # its sample count): runs keep the exact order of those made with per-epoch loaders.
            torch.randperm(self.size, generator=self.generator)


class EpochSeededDataset(Dataset):
    """Reads ``(index, base_seed)`` from an ``EpochSampler``; a worker re-seeds itself the first time it sees
    a new epoch's base seed, exactly as a freshly started worker would be seeded."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._seeded_for: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, base_seed = key
        worker = get_worker_info()
        if worker is not None and base_seed != self._seeded_for:
            random.seed(base_seed + worker.id)
            torch.manual_seed(base_seed + worker.id)
            seed_worker(worker.id)
            self._seeded_for = base_seed
        return self.dataset[index]


class EpochOrder(Protocol):
    """What an ``EpochLoader`` draws its order from: ``(index, workers' base seed)`` pairs, re-seeded per epoch
    (``EpochSampler``: uniform; ``identity_sampler.IdentitySampler``: P identities x K images)."""

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[int, int]]: ...


class EpochLoader:
    """A DataLoader built once (workers persist) over an ``EpochSampler`` (or another ``EpochOrder``);
    ``set_epoch`` before each epoch.

    It never runs out: whenever a pass ends, the next batch starts a new one.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        seed: int,
        workers: int,
        collate_fn: Callable[[list[Any]], Any],
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        sampler: EpochOrder | None = None,
    ) -> None:
        size = len(dataset)  # type: ignore[arg-type]
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if sampler is None and size // world_size < batch_size:
            raise EcnreidError(
                f"--batch-size: {batch_size} is larger than the dataset ({size} images"
                + (f" over {world_size} processes" if world_size > 1 else "")
                + "), so no full batch exists"
            )
        if sampler is None:
            sampler = EpochSampler(
                size, seed=seed, shuffle=shuffle, rank=rank, world_size=world_size, reseed_each_pass=workers == 0
            )
        self.sampler = sampler
        self.loader = DataLoader(
            EpochSeededDataset(dataset),
            batch_size=batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=seed_worker,
            generator=torch.Generator(),  # DataLoader's own seed draws must not touch the global RNG
            collate_fn=collate_fn,
            persistent_workers=workers > 0,
        )
        self._batches: Iterator[Any] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Re-seed order and augmentation for ``epoch``; the next batch starts a new pass."""
        self.sampler.set_epoch(epoch)
        self._batches = None

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._batches is not None:
            try:
                return next(self._batches)
            except StopIteration:
                pass
        self._batches = iter(self.loader)
        return next(self._batches)
