"""Wiring the domain-generalisation modules (MixStyle, SNR, RSC) into an ECN model from a ``DGConfig``."""

from __future__ import annotations

import torch
from torch import nn

from ecnreid.config import DGConfig
from ecnreid.errors import EcnreidError
from ecnreid.models.backbones import Backbone
from ecnreid.models.mixstyle import MixStyle
from ecnreid.models.rsc import RSC
from ecnreid.models.snr import SNR, collect_snr_losses, snr_modules


def attach_dg_modules(backbone: Backbone, dg: DGConfig) -> None:
    """Insert MixStyle and SNR after the configured stages (MixStyle first where a stage has both)."""
    for stage in dg.mixstyle_stages:
        backbone.insert_after(stage, MixStyle(p=dg.mixstyle_p, alpha=dg.mixstyle_alpha, mix=dg.mixstyle_mix))
    for stage in dg.snr_stages:
        if stage not in backbone.stage_channels:
            raise EcnreidError(f"--snr {stage}: unknown stage; valid stages: {', '.join(backbone.stage_channels)}")
        backbone.insert_after(stage, SNR(backbone.stage_channels[stage], loss_weight=dg.snr_loss_weight(stage)))


def attach_snr_probes(model: nn.Module, num_classes: int) -> None:
    """Give every SNR module its probe classifier (before the optimizer is built)."""
    for module in snr_modules(model):
        module.attach_classifier(num_classes)


def build_rsc(dg: DGConfig) -> RSC | None:
    """The RSC module for the source branch, or None when RSC is off."""
    if not dg.rsc:
        return None
    return RSC(spatial_fraction=dg.rsc_spatial, channel_fraction=dg.rsc_channel, batch_fraction=dg.rsc_batch)


def dg_source_loss(model: nn.Module, labels: torch.Tensor, dg: DGConfig) -> torch.Tensor | float:
    """Extra source loss of the DG modules: SNR's dual causality losses (each weighted by its stage's λ_b,
    ``DGConfig.snr_loss_weight``) plus its probes' CE.

    Call it right after the source batch's forward pass (SNR keeps that pass's pooled vectors).
    """
    if not dg.snr_stages:
        return 0.0
    losses = collect_snr_losses(model, labels)
    return losses.causality + losses.classification
