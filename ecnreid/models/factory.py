"""Building the ECN model from configuration (for training) and its test-time network from a model card (for
every command that loads a checkpoint)."""

from __future__ import annotations

from typing import Any

from ecnreid.config import DGConfig, ModelConfig, config_to_dict
from ecnreid.models.backbones import build_backbone
from ecnreid.models.dg import attach_dg_modules
from ecnreid.models.ecn import ECNModel
from ecnreid.models.pooled import PooledBackbone
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



def ecn_model_details(model: ModelConfig, dg: DGConfig) -> dict[str, Any]:
    """What a model card records to rebuild ECN's test-time network (``ecn_eval_network``)."""
    return {"last_stride": model.last_stride, "dg": config_to_dict(dg)}


def ecn_eval_network(arch: str, details: dict[str, Any]) -> PooledBackbone:
    """ECN's test-time network, unloaded: the backbone with its DG modules, pooled and L2-normalised (what
    ``ECNModel.forward`` gives in eval mode, without the head); its weights are the ``backbone.*`` entries of
    an ``ECNModel`` state dict. ``details`` is :func:`ecn_model_details`'s record."""
    dg_record = {k: tuple(v) if isinstance(v, list) else v for k, v in details.get("dg", {}).items()}
    dg = DGConfig(**{k: v for k, v in dg_record.items() if k in DGConfig.__dataclass_fields__})
    backbone = build_backbone(arch, weights=None, pretrained=False, last_stride=int(details["last_stride"]))
    attach_dg_modules(backbone, dg)
    return PooledBackbone(backbone)
