"""Deterministic data loaders, and an endless loader for the target domain.

ECN's loop (ECN-SPEC, "Training"): one epoch is one pass over the source loader (``x``); the target
loader (``u``) restarts whenever it runs out, so it is wrapped in ``InfiniteLoader``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ecnreid.errors import EcnreidError


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from its torch seed (base seed + worker id)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a ``DistributedSampler`` (if the loader has one) which epoch it is, so shuffles differ per epoch."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    workers: int,
    seed: int,
    distributed: bool = False,
) -> DataLoader:
    """A DataLoader whose order and augmentation depend only on ``seed`` (and the epoch).

    Shuffling uses a ``torch.Generator`` seeded with ``seed``; workers get seeds drawn from it and seed
    numpy/``random`` from those. With ``distributed``, a ``DistributedSampler`` (seeded the same way)
    splits the data across processes; call ``set_epoch(loader, epoch)`` before each epoch.
    """
    size = len(dataset)  # type: ignore[arg-type]
    if batch_size < 1:
        raise EcnreidError(f"--batch-size: must be at least 1, got {batch_size}")
    if drop_last and size < batch_size:
        raise EcnreidError(
            f"--batch-size: {batch_size} is larger than the dataset ({size} images), so no full batch exists"
        )
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=workers > 0,
    )


class InfiniteLoader:
    """Iterate a DataLoader forever, starting a new pass whenever it is exhausted.

    ``passes`` counts the passes started; each new pass calls ``set_epoch`` with its number, so a
    distributed sampler reshuffles.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.passes = 0
        self._iterator: Iterator[Any] | None = None

    def __iter__(self) -> InfiniteLoader:
        return self

    def __next__(self) -> Any:
        if self._iterator is not None:
            try:
                return next(self._iterator)
            except StopIteration:
                pass
        set_epoch(self.loader, self.passes)
        self.passes += 1
        self._iterator = iter(self.loader)
        try:
            return next(self._iterator)
        except StopIteration:
            raise EcnreidError("data loader yields no batches (dataset smaller than one batch?)") from None


def cycle(loader: DataLoader) -> Iterator[Any]:
    """A generator over ``loader``'s batches that never ends (see ``InfiniteLoader``)."""
    yield from InfiniteLoader(loader)
