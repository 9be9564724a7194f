"""The two kinds of training batch, by name: labelled source images (``x``) and unlabelled target images (``u``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.utils.data import default_collate


class LabelledBatch(NamedTuple):
    """Source images with their identities (``x``)."""

    images: torch.Tensor
    pids: torch.Tensor
    camids: torch.Tensor
    indices: torch.Tensor

    def to(self, device: torch.device) -> LabelledBatch:
        return LabelledBatch(*(t.to(device, non_blocking=True) for t in self))


class UnlabelledBatch(NamedTuple):
    """Target images with their cameras and their index in the target training set (``u``)."""

    images: torch.Tensor
    camids: torch.Tensor
    indices: torch.Tensor

    def to(self, device: torch.device) -> UnlabelledBatch:
        return UnlabelledBatch(*(t.to(device, non_blocking=True) for t in self))


def collate_labelled(samples: list[Any]) -> LabelledBatch:
    """``(image, pid, camid, index)`` samples → one ``LabelledBatch``."""
    return LabelledBatch(*default_collate(samples))


def collate_unlabelled(samples: list[Any]) -> UnlabelledBatch:
    """``(image, camid, index)`` samples → one ``UnlabelledBatch``."""
    return UnlabelledBatch(*default_collate(samples))
