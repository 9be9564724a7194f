"""A bare backbone as a re-ID model: the global average pool of its last map (pool5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PooledBackbone(nn.Module):
    """A backbone's pool5 feature, unit-norm unless ``normalize=False`` (the raw pool5 that ECN's head takes in
    training). Its ``state_dict`` keys are the backbone's under ``backbone.``, as in ``ECNModel``."""

    def __init__(self, backbone: nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool5 = self.backbone(x).mean(dim=(2, 3))
        return F.normalize(pool5, dim=1) if self.normalize else pool5
