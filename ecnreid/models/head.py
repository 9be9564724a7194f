"""The ECN head (Zhong et al., CVPR 2019), as in the authors' released code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ECNHead(nn.Module):
    """pool5 -> Linear(C, D) -> BatchNorm1d(D), then two branches.

    - source: ReLU -> Dropout -> Linear(D, num_source_classes), for identity cross-entropy;
    - target: L2-normalise -> Dropout (official code: dropout after the normalisation), for the memory.
    """

    def __init__(
        self, in_channels: int, num_source_classes: int, embedding_dim: int = 4096, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.embedding_dim = embedding_dim
        self.embed = nn.Linear(in_channels, embedding_dim)
        self.embed_bn = nn.BatchNorm1d(embedding_dim)
        self.source_dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embedding_dim, num_source_classes)
        self.target_dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialisation of the official code."""
        nn.init.kaiming_normal_(self.embed.weight, mode="fan_out")
        nn.init.zeros_(self.embed.bias)
        nn.init.ones_(self.embed_bn.weight)
        nn.init.zeros_(self.embed_bn.bias)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feature_map: torch.Tensor) -> dict[str, torch.Tensor]:
        """[B, C, h, w] -> {"pool5": [B, C], "source_logits": [B, classes], "target_embedding": [B, D]}."""
        pool5 = feature_map.mean(dim=(2, 3))
        embedding = self.embed_bn(self.embed(pool5))
        source_logits = self.classifier(self.source_dropout(F.relu(embedding)))
        target_embedding = self.target_dropout(F.normalize(embedding, dim=1))
        return {"pool5": pool5, "source_logits": source_logits, "target_embedding": target_embedding}
