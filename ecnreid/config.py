"""Run configurations: plain frozen dataclasses built from the CLI options and written as JSON into each run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-safe dict of a config dataclass (paths become strings, tuples lists)."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return config_to_dict(value)
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        return value

    return {f.name: convert(getattr(config, f.name)) for f in dataclasses.fields(config)}


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and head choices shared by training and evaluation."""

    arch: str = "resnet50"
    weights: Path | None = None  # a local state_dict; takes the place of torchvision's download
    pretrained: bool = True  # ImageNet initialisation, as published; False starts from random weights
    last_stride: int = 2
    frozen_stages: int = 3
    embedding_dim: int = 4096
    dropout: float = 0.5


# SNR's re-ID setting (Jin et al., CVPR 2020, Sec. 3.3): an SNR after each of the four ResNet-50 stages, with
# dual causality loss weights λ_b = 0.1 for stages 1-2 and 0.5 for stages 3-4 (closer to the identity task).
SNR_PAPER_STAGES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
SNR_PAPER_WEIGHTS: dict[str, float] = {"layer1": 0.1, "layer2": 0.1, "layer3": 0.5, "layer4": 0.5}


@dataclass(frozen=True)
class DGConfig:
    """Domain-generalisation modules (MixStyle, SNR, RSC); all off by default."""

    mixstyle_stages: tuple[str, ...] = ()
    mixstyle_p: float = 0.5
    mixstyle_alpha: float = 0.1
    mixstyle_mix: str = "random"
    snr_stages: tuple[str, ...] = ()
    snr_weight: float | None = None  # one λ for every SNR; None: the paper's per-stage SNR_PAPER_WEIGHTS
    rsc: bool = False
    rsc_spatial: float = 1 / 3
    rsc_channel: float = 1 / 3.2
    rsc_batch: float = 1 / 3

    @property
    def any(self) -> bool:
        return bool(self.mixstyle_stages or self.snr_stages or self.rsc)

    def snr_loss_weight(self, stage: str) -> float:
        """λ of the dual causality loss of the SNR after ``stage``: ``snr_weight``, else the paper's value
        (the paper has no SNR after the stem; it gets the early stages' 0.1)."""
        if self.snr_weight is not None:
            return self.snr_weight
        return SNR_PAPER_WEIGHTS.get(stage, SNR_PAPER_WEIGHTS["layer1"])


@dataclass(frozen=True)
class EvalConfig:
    """`ecnreid eval`: extract features of a query/gallery split and score the ranking."""

    dataset: str
    root: Path
    model: ModelConfig = ModelConfig()
    checkpoint: Path | None = None
    rerank: bool = False
    flip: bool = False
    metric: str = "cosine"
    device: str = "auto"
    out: Path = Path("runs/eval")
    height: int = 256
    width: int = 128
    batch_size: int = 128
    workers: int = 2
    save_ranks: int = 0
    skip_bad_images: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """`ecnreid train`: ECN (Zhong et al., CVPR 2019); defaults are the published setting."""

    source: str
    source_root: Path
    target: str
    target_root: Path
    model: ModelConfig = ModelConfig()
    dg: DGConfig = DGConfig()
    out: Path = Path("runs/train")
    epochs: int = 60
    lr: float = 0.1
    backbone_lr_mult: float = 0.1
    lr_step: int = 40
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    target_batch_size: int | None = None
    iters_per_epoch: int | None = None
    height: int = 256
    width: int = 128
    workers: int = 4
    lam: float = 0.3
    beta: float = 0.05
    k: int = 6
    alpha: float = 0.01
    neighbour_start_epoch: int = 5
    memory_dtype: str = "fp32"
    memory_init: str = "zeros"
    knn: str = "topk"
    use_camera: bool = True
    use_neighbour: bool = True
    source_only: bool = False
    no_target: bool = False
    camstyle_dir: Path | None = None
    eval_every: int = 5
    flip_eval: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    resume: bool = False
    skip_bad_images: bool = False

    @property
    def uses_target_training(self) -> bool:
        """Whether the unlabelled target train split takes part in training (false for source-only / DG)."""
        return not (self.source_only or self.no_target)

    @property
    def setting_name(self) -> str:
        """The ablation row this run reproduces (ECN-SPEC ablation table)."""
        if not self.uses_target_training:
            return "source only"
        parts = ["E"] + (["C"] if self.use_camera else []) + (["N"] if self.use_neighbour else [])
        return "+" + "+".join(parts)
