"""Wiring the domain-generalisation modules (MixStyle, SNR, RSC) into an ECN model from a ``DGConfig``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ecnreid.config import DGConfig
from ecnreid.errors import EcnreidError
from ecnreid.models.backbones import Backbone
from ecnreid.models.ecn import ECNModel
from ecnreid.models.mixstyle import MixStyle
from ecnreid.models.rsc import RSC
from ecnreid.models.snr import SNR, collect_snr_losses


def attach_dg_modules(backbone: Backbone, dg: DGConfig) -> None:
    """Insert MixStyle and SNR after the configured stages (MixStyle first where a stage has both)."""
    for stage in dg.mixstyle_stages:
        backbone.insert_after(stage, MixStyle(p=dg.mixstyle_p, alpha=dg.mixstyle_alpha, mix=dg.mixstyle_mix))
    for stage in dg.snr_stages:
        if stage not in backbone.stage_channels:
            raise EcnreidError(f"--snr {stage}: unknown stage; valid stages: {', '.join(backbone.stage_channels)}")
        backbone.insert_after(stage, SNR(backbone.stage_channels[stage], loss_weight=dg.snr_loss_weight(stage)))


def build_rsc(dg: DGConfig) -> RSC | None:
    """The RSC module for the source branch, or None when RSC is off."""
    if not dg.rsc:
        return None
    return RSC(spatial_fraction=dg.rsc_spatial, channel_fraction=dg.rsc_channel, batch_fraction=dg.rsc_batch)


def dg_source_loss(
    model: ECNModel, out_x: Mapping[str, Any], labels: torch.Tensor, dg: DGConfig
) -> torch.Tensor | float:
    """Extra source loss of the DG modules: SNR's dual causality losses (each weighted by its stage's λ_b,
    ``DGConfig.snr_loss_weight``) plus its probes' CE.

    ``out_x`` is the source batch's training output (``ECNModel.forward_domains``), whose ``"snr"`` entry holds
    each SNR's pooled vectors of that pass; ``labels`` [B] are the batch's. ``model`` gives only the SNR
    modules' probe classifiers and loss weights, so the order in which batches ran does not matter.
    """
    if not dg.snr_stages:
        return 0.0
    pooled = out_x.get(SNR.aux_name)
    if pooled is None:
        raise EcnreidError(
            "SNR loss: the source outputs hold no SNR vectors; pass the output of a training-mode forward"
        )
    losses = collect_snr_losses(model.backbone.aux_modules(SNR.aux_name), pooled, labels)
    return losses.causality + losses.classification
