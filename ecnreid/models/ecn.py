"""The ECN model (Zhong et al., CVPR 2019): a backbone with frozen early stages and the ECN head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecnreid.errors import EcnreidError
from ecnreid.models.backbones import Backbone, StageAux
from ecnreid.models.head import ECNHead


class ECNModel(nn.Module):
    """Backbone + :class:`ECNHead`.

    Training mode returns ``{"feature_map", "pool5", "source_logits", "target_embedding"}`` (call it
    once for the source batch and once for the target batch, so BatchNorm statistics stay per domain, or
    both at once with :meth:`forward_domains`), plus, per ``aux_name`` of the backbone's inserted modules
    that gave auxiliary outputs, ``{stage: aux}`` (SNR: ``"snr"``, one :class:`SNRPooled` per stage; see
    :meth:`Backbone.forward_with_aux`); eval mode returns the test feature, L2-normalised pool5 [B, C].

    The first ``frozen_stages`` backbone stages (official code: 3, i.e. conv1, bn1, layer1, layer2) get
    no gradients and keep their BatchNorms in eval mode, also after ``model.train()``.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_source_classes: int,
        embedding_dim: int = 4096,
        dropout: float = 0.5,
        frozen_stages: int = 3,
    ) -> None:
        super().__init__()
        if not 0 <= frozen_stages <= len(backbone.stage_names):
            raise EcnreidError(f"frozen stages must be between 0 and {len(backbone.stage_names)}, got {frozen_stages}")
        if num_source_classes < 1:
            raise EcnreidError(f"the source domain needs at least one identity, got {num_source_classes}")
        self.backbone = backbone
        self.head = ECNHead(backbone.out_channels, num_source_classes, embedding_dim, dropout)
        self.frozen_stages = frozen_stages
        for stage in self._frozen_modules():
            stage.requires_grad_(False)
        self.train()

    def _frozen_modules(self) -> list[nn.Module]:
        names = self.backbone.stage_names[: self.frozen_stages]
        return [self.backbone.stages[name] for name in names]

    def train(self, mode: bool = True) -> ECNModel:
        """Set the mode, keeping the BatchNorms of the frozen stages in eval mode (their stats stay fixed)."""
        super().train(mode)
        for stage in self._frozen_modules():
            for module in stage.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward_head(self, feature_map: torch.Tensor) -> dict[str, torch.Tensor]:
        """The head alone on a [B, C, h, w] map (RSC re-runs it on a masked map); keys as in training."""
        return {"feature_map": feature_map, **self.head(feature_map)}

    def _training_output(self, feature_map: torch.Tensor, aux: StageAux) -> dict[str, Any]:
        """The head's outputs on ``feature_map`` and the backbone's auxiliary outputs of the same pass."""
        out: dict[str, Any] = self.forward_head(feature_map)
        clashing = [name for name in aux if name in out]
        if clashing:
            raise ValueError(f"auxiliary outputs named {', '.join(clashing)} clash with the ECN head's outputs")
        out.update(aux)
        return out

    def forward_domains(
        self, source: torch.Tensor, target: torch.Tensor | None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Training outputs of the source and (when given) the target batch, which pass the backbone side by
        side (see :meth:`Backbone.forward_domains`); each dict holds its own batch's auxiliary outputs.

        No output depends on which batch runs first. The target still goes first through every stage and
        the head, as before, only so that seeded runs draw the same random numbers (MixStyle, dropout).
        """
        if target is None:
            (source_map,), (source_aux,) = self.backbone.forward_domains([source])
            return self._training_output(source_map, source_aux), None
        (target_map, source_map), (target_aux, source_aux) = self.backbone.forward_domains([target, source])
        out_u = self._training_output(target_map, target_aux)
        return self._training_output(source_map, source_aux), out_u

    def forward(self, x: torch.Tensor) -> dict[str, Any] | torch.Tensor:
        """[B, 3, H, W] -> training: dict of outputs; eval: unit-norm pool5 [B, C]."""
        if not self.training:
            return F.normalize(self.backbone(x).mean(dim=(2, 3)), dim=1)
        feature_map, aux = self.backbone.forward_with_aux(x)
        return self._training_output(feature_map, aux)

    def parameter_groups(self, lr: float, backbone_lr_mult: float = 0.1) -> list[dict]:
        """SGD parameter groups: ``new`` (head, DG modules: anything not a pretrained backbone stage) at
        ``lr`` and ``backbone`` (trainable stages) at ``lr * backbone_lr_mult``; frozen parameters are
        left out, and so is a group that ends up empty."""
        backbone_ids = {id(p) for p in self.backbone.stages.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        new = [p for p in trainable if id(p) not in backbone_ids]
        pretrained = [p for p in trainable if id(p) in backbone_ids]
        groups = [
            {"name": "new", "params": new, "lr": lr},
            {"name": "backbone", "params": pretrained, "lr": lr * backbone_lr_mult},
        ]
        return [group for group in groups if group["params"]]
