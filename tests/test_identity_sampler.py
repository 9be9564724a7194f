"""P identities x K images: runs of one identity, a rank's own identities, labels read at each epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from ecnreid.data.identity_sampler import IdentitySampler, identity_groups
from ecnreid.data.loaders import LoaderFactory
from ecnreid.errors import EcnreidError

# 6 identities: 0..3 with 5 images each, 4 with 2 images, 5 with 1; two images unlabelled (-1).
LABELS = np.array([0] * 5 + [1] * 5 + [2] * 5 + [3] * 5 + [4] * 2 + [5] + [-1, -1])


def runs(sampler: IdentitySampler) -> list[list[int]]:
    """One pass as runs of ``instances`` indices."""
    indices = [index for index, _ in sampler]
    k = sampler.instances
    return [indices[i : i + k] for i in range(0, len(indices), k)]


def make(labels=LABELS, instances: int = 4, batch: int = 8, **kwargs) -> IdentitySampler:
    sampler = IdentitySampler(lambda: labels, instances, batch, seed=3, **kwargs)
    sampler.set_epoch(0)
    return sampler


def test_identity_groups_skip_negative_labels_and_keep_label_order() -> None:
    groups = identity_groups([2, -1, 0, 2, 0, 1])
    assert [g.tolist() for g in groups] == [[2, 4], [5], [0, 3]]
    assert identity_groups([-1, -1]) == []


def test_each_run_is_one_identity_each_identity_once_per_pass() -> None:
    sampler = make()
    passes = [runs(sampler) for _ in range(3)]
    for one_pass in passes:
        assert len(one_pass) == 6 and len(sampler) == 24
        owners = [{int(LABELS[i]) for i in run} for run in one_pass]
        assert all(len(owner) == 1 for owner in owners)
        assert sorted(owner.pop() for owner in owners) == [0, 1, 2, 3, 4, 5]  # -1 never drawn
        for run in one_pass:
            if LABELS[run[0]] <= 3:
                assert len(set(run)) == 4  # enough images: drawn without replacement
    assert passes[0] != passes[1]  # each pass draws a fresh order


def test_identities_with_fewer_than_k_images_are_drawn_with_replacement() -> None:
    sampler = make()
    small = [run for one_pass in (runs(sampler) for _ in range(5)) for run in one_pass if LABELS[run[0]] >= 4]
    assert all(len(run) == 4 for run in small)
    assert {i for run in small for i in run} == {20, 21, 22}
    assert any(len(set(run)) < len(run) for run in small)


def test_the_order_depends_only_on_seed_and_epoch() -> None:
    first, second = make(), make()
    assert runs(first) == runs(second)
    first.set_epoch(4)
    second.set_epoch(4)
    assert [i for i, _ in first] == [i for i, _ in second]
    again = make()
    again.set_epoch(0)
    assert runs(again) == runs(make())
    other = make()
    other.set_epoch(1)
    assert runs(other) != runs(make())
    assert other.base_seed != make().base_seed


def test_two_ranks_draw_disjoint_whole_identities_every_pass() -> None:
    labels = np.repeat(np.arange(7), 3)  # 7 identities: one is left over, as a batch count must match
    ranks = [make(labels, instances=2, batch=2, rank=rank, world_size=2) for rank in (0, 1)]
    for epoch in (0, 1):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        for _ in range(3):
            owned = [[{int(labels[i]) for i in run} for run in runs(sampler)] for sampler in ranks]
            assert all(len(owner) == 1 for share in owned for owner in share)
            ids = [{owner.pop() for owner in share} for share in owned]
            assert len(ids[0]) == len(ids[1]) == 3 and not ids[0] & ids[1]


def test_labels_are_read_at_set_epoch() -> None:
    labels = LABELS.copy()
    sampler = IdentitySampler(lambda: labels, 2, 4, seed=0)
    sampler.set_epoch(0)
    assert len(runs(sampler)) == 6
    labels[:] = np.where(labels >= 0, labels % 2, -1)  # a method relabels in before_epoch
    assert len(runs(sampler)) == 6  # unchanged until the next epoch starts
    sampler.set_epoch(1)
    assert len(runs(sampler)) == 2


def test_too_few_identities_or_a_ragged_batch_is_a_one_line_error() -> None:
    with pytest.raises(EcnreidError, match="multiple of 4"):
        IdentitySampler(lambda: LABELS, 4, 10, seed=0)
    sampler = IdentitySampler(lambda: LABELS, 4, 32, seed=0)  # 8 identities per batch, 6 exist
    with pytest.raises(EcnreidError, match="epoch 3: 6 identities are fewer than the 8"):
        sampler.set_epoch(2)


class Indexed(Dataset):
    def __len__(self) -> int:
        return len(LABELS)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(1), index


def test_the_factory_builds_a_loader_of_p_by_k_batches_that_never_runs_out() -> None:
    factory = LoaderFactory(seed=5, workers=0, transform=lambda image: image)
    loader = factory.identity_loader(
        Indexed(), 8, labels=lambda: LABELS, instances=4, collate_fn=lambda items: torch.tensor([i for _, i in items])
    )
    loader.set_epoch(0)
    assert len(loader) == 3  # 6 identities x 4 images / 8
    batches = [next(loader) for _ in range(7)]
    for batch in batches:
        owners = LABELS[batch.numpy()].reshape(2, 4)
        assert (owners == owners[:, :1]).all() and owners[0, 0] != owners[1, 0]
    loader.set_epoch(0)
    assert torch.equal(next(loader), batches[0])
