"""Loaders built once per run: order and augmentation depend only on (seed, epoch), the same as a loader built
afresh for every epoch, with or without worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ecnreid.data.samplers import EpochLoader, EpochSampler, seed_worker
from ecnreid.errors import EcnreidError


class RandomDraws(Dataset):
    """Each item is its index plus one torch draw, as a random augmentation would take."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index), torch.rand(()).item()])


def stack(samples: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(samples)


def fresh_loader_batches(seed: int, epoch: int, workers: int, steps: int) -> list[torch.Tensor]:
    """What a DataLoader built for this epoch alone yields (persistent workers, cycled when it runs out)."""
    loader = DataLoader(
        RandomDraws(),
        batch_size=4,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed + epoch),
        collate_fn=stack,
        persistent_workers=workers > 0,
    )
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        batches += list(loader)
    return batches[:steps]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_built_once_yields_what_a_loader_per_epoch_yields(workers: int) -> None:
    loader = EpochLoader(RandomDraws(), 4, seed=100, workers=workers, collate_fn=stack)
    for epoch in (0, 1, 2):
        torch.manual_seed(epoch)  # the loop re-seeds the main process at every epoch start
        loader.set_epoch(epoch)
        ours = [next(loader) for _ in range(5)]  # 5 steps cross two passes of 2 batches
        torch.manual_seed(epoch)
        reference = fresh_loader_batches(100, epoch, workers, 5)
        for a, b in zip(ours, reference, strict=True):
            assert torch.equal(a, b)


def test_set_epoch_restarts_the_pass_and_epochs_differ() -> None:
    loader = EpochLoader(TensorDataset(torch.arange(12)), 3, seed=0, workers=0, collate_fn=lambda s: s)
    loader.set_epoch(0)
    first = [next(loader) for _ in range(2)]
    loader.set_epoch(0)
    assert [next(loader) for _ in range(2)] == first
    loader.set_epoch(1)
    assert [next(loader) for _ in range(2)] != first


def test_ranks_share_an_epoch_without_overlap() -> None:
    shares = []
    for rank in range(3):
        sampler = EpochSampler(10, seed=5, rank=rank, world_size=3)
        sampler.set_epoch(2)
        shares.append([index for index, _ in sampler])
    assert all(len(share) == 3 for share in shares)
    flat = [i for share in shares for i in share]
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))


def test_a_batch_larger_than_the_dataset_is_a_clear_error() -> None:
    with pytest.raises(EcnreidError, match="larger than the dataset"):
        EpochLoader(TensorDataset(torch.arange(5)), 8, seed=0, workers=0, collate_fn=stack)


def test_seed_worker_seeds_numpy_and_random_from_torch() -> None:
    torch.manual_seed(1234)
    seed_worker(0)
    first = np.random.rand()
    torch.manual_seed(1234)
    seed_worker(0)
    assert np.random.rand() == first
