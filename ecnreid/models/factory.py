"""Building the ECN model from configuration, for training and for loading a checkpoint in `eval`."""

from __future__ import annotations

from typing import Any

from ecnreid.config import DGConfig, ModelConfig
from ecnreid.models.backbones import build_backbone
from ecnreid.models.dg import attach_dg_modules
from ecnreid.models.ecn import ECNModel
from ecnreid.models.snr import attach_snr_classifiers


def build_ecn_model(model: ModelConfig, dg: DGConfig, num_source_classes: int) -> ECNModel:
    """Backbone (with its DG modules inserted) and the ECN head, with the spec's frozen stages."""
    backbone = build_backbone(
        model.arch, weights=model.weights, pretrained=model.pretrained, last_stride=model.last_stride
    )
    attach_dg_modules(backbone, dg)
    ecn = ECNModel(
        backbone,
        num_source_classes,
        embedding_dim=model.embedding_dim,
        dropout=model.dropout,
        frozen_stages=model.frozen_stages,
    )
    attach_snr_classifiers(ecn, num_source_classes)
    return ecn


def model_from_checkpoint(state: dict[str, Any]) -> ECNModel:
    """Rebuild the trained ECN model stored in a checkpoint (no weight download: the checkpoint has them)."""
    saved = state["config"]
    model_fields = {k: v for k, v in saved["model"].items() if k in ModelConfig.__dataclass_fields__}
    model_fields.update(weights=None, pretrained=False)
    dg_fields = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.get("dg", {}).items()}
    model = build_ecn_model(
        ModelConfig(**model_fields),
        DGConfig(**{k: v for k, v in dg_fields.items() if k in DGConfig.__dataclass_fields__}),
        state["signature"]["num_source_classes"],
    )
    model.load_state_dict(state["model"])
    return model
