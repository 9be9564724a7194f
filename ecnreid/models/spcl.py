"""SpCL's model (Ge et al., NeurIPS 2020): backbone, global average pool, BatchNorm1d (bias fixed at zero),
L2-normalised; every BatchNorm domain-specific (``models.dsbn``). No classifier: the hybrid memory is the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ecnreid.models.backbones import Backbone
from ecnreid.models.dsbn import batchnorm_domain, convert_to_domain_batchnorm

# What the model's card says its feature is.
SPCL_FEATURE = "BatchNorm1d of pool5 (global average of the last backbone map), target statistics, L2-normalised"


class SpCLModel(nn.Module):
    """``forward(x)`` gives unit features [B, C] (eval: through the target BatchNorms); in training mode
    :meth:`forward_domains` runs a source and a target batch, each through its domain's BatchNorms."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_channels = backbone.out_channels
        self.feature_bn = nn.BatchNorm1d(backbone.out_channels)
        nn.init.ones_(self.feature_bn.weight)
        nn.init.zeros_(self.feature_bn.bias)
        self.feature_bn.bias.requires_grad_(False)
        convert_to_domain_batchnorm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> unit features [B, C]."""
        return F.normalize(self.feature_bn(self.backbone(x).mean(dim=(2, 3))), dim=1)

    def forward_domains(self, source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit features of the source and the target batch, each normalised by its own domain's BatchNorms."""
        with batchnorm_domain(self, "source"):
            source_features = self(source)
        with batchnorm_domain(self, "target"):
            target_features = self(target)
        return source_features, target_features
