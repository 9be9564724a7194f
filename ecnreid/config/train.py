"""The training tree: the sections of `ecnreid train` (model, domain generalisation, input, domains,
optimisation, runtime, evaluation) and ``TrainConfig``, which joins them with the method's section.

Other commands reuse these sections; validation lives in ``__post_init__``, so a library user gets the same
checks as the command line, and a message names a setting by the flag its field gives (``flag_of``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ecnreid.config.fields import flag_of, require, require_device, require_one_of, section, setting
from ecnreid.config.methods import ECNConfig, SpCLConfig
from ecnreid.dataset_names import DATASET_HELP
from ecnreid.errors import EcnreidError

# ---------------------------------------------------------------------------------------------- model
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and head, shared by training and evaluation."""

    arch: str = setting("resnet50", "Backbone: " + ", ".join(ARCHS) + ".")
    weights: Path | None = setting(
        None, "A local torchvision state_dict for the backbone (e.g. ImageNet weights), used instead of the download."
    )
    pretrained: bool = setting(
        True,
        "Start from torchvision's ImageNet weights (downloaded once into torch's cache), as published;"
        " --no-pretrained starts from random weights.",
    )
    last_stride: int = setting(2, "Stride of the last stage (1 doubles the final map).")
    frozen_stages: int = setting(3, "Stages frozen from the input (3 = conv1..layer2).")
    embedding_dim: int = setting(4096, "Width of the embedding of the target branch.")
    dropout: float = setting(0.5, "Dropout before the source classifier.")

    def __post_init__(self) -> None:
        require_one_of(self, "arch", ARCHS)
        require(self, "last_stride", self.last_stride in (1, 2), "expected 1 or 2")
        require(self, "frozen_stages", self.frozen_stages >= 0, "must not be negative")
        require(self, "embedding_dim", self.embedding_dim > 0, "must be positive")
        require(self, "dropout", 0 <= self.dropout < 1, "must lie in [0, 1)")
        if self.weights is not None and not self.pretrained:
            raise EcnreidError(
                f"{flag_of(ModelConfig, 'weights')} PATH and {flag_of(ModelConfig, 'pretrained', negative=True)} "
                "contradict each other: give one of them"
            )


# SNR's re-ID setting (Jin et al., CVPR 2020, Sec. 3.3): an SNR after each of the four ResNet-50 stages, with
# dual causality loss weights λ_b = 0.1 for stages 1-2 and 0.5 for stages 3-4 (closer to the identity task).
SNR_PAPER_STAGES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
SNR_PAPER_WEIGHTS: dict[str, float] = {"layer1": 0.1, "layer2": 0.1, "layer3": 0.5, "layer4": 0.5}
MIXSTYLE_MIXES = ("random", "crossdomain")


@dataclass(frozen=True)
class DGConfig:
    """Domain-generalisation modules (MixStyle, SNR, RSC); all off by default."""

    mixstyle_stages: tuple[str, ...] = setting(
        (), "MixStyle after these stages, e.g. layer1,layer2.", flag="--mixstyle"
    )
    mixstyle_p: float = setting(0.5, "MixStyle probability.")
    mixstyle_alpha: float = setting(0.1, "MixStyle Beta(α, α).")
    mixstyle_mix: str = setting("random", "random or crossdomain (source with target statistics).")
    snr_stages: tuple[str, ...] = setting(
        (), "SNR after these stages; the paper's re-ID placement is layer1,layer2,layer3,layer4.", flag="--snr"
    )
    snr_weight: float | None = setting(
        None,
        "One weight for every SNR's dual causality loss.",
        unset="the paper's, 0.1 after layer1 and layer2, 0.5 after layer3 and layer4",
    )
    rsc: bool = setting(False, "Representation Self-Challenging on the source branch.")
    rsc_spatial: float = setting(1 / 3, "RSC fraction of spatial positions masked.")
    rsc_channel: float = setting(1 / 3.2, "RSC fraction of channels masked.")
    rsc_batch: float = setting(1 / 3, "RSC fraction of the batch challenged.")

    def __post_init__(self) -> None:
        require_one_of(self, "mixstyle_mix", MIXSTYLE_MIXES)
        require(self, "mixstyle_p", 0 <= self.mixstyle_p <= 1, "must lie in [0, 1]")
        require(self, "mixstyle_alpha", self.mixstyle_alpha > 0, "must be positive")
        if self.snr_weight is not None:
            require(self, "snr_weight", self.snr_weight >= 0, "must not be negative")
        for name in ("rsc_spatial", "rsc_channel", "rsc_batch"):
            require(self, name, 0 < getattr(self, name) <= 1, "must lie in (0, 1]")

    @property
    def any(self) -> bool:
        return bool(self.mixstyle_stages or self.snr_stages or self.rsc)

    def snr_loss_weight(self, stage: str) -> float:
        """λ of the dual causality loss of the SNR after ``stage``: ``snr_weight``, else the paper's value
        (the paper has no SNR after the stem; it gets the early stages' 0.1)."""
        if self.snr_weight is not None:
            return self.snr_weight
        return SNR_PAPER_WEIGHTS.get(stage, SNR_PAPER_WEIGHTS["layer1"])


# ---------------------------------------------------------------------------------------------- data
WORKERS_HELP = "DataLoader worker processes (at most the CPUs this process may use)."


@dataclass(frozen=True)
class InputConfig:
    """How images enter the network."""

    height: int = setting(256, "Input height.")
    width: int = setting(128, "Input width.")
    batch_size: int = setting(128, "Images per batch.")
    workers: int = setting(4, WORKERS_HELP)
    skip_bad_images: bool = setting(False, "Skip and count undecodable images.")

    def __post_init__(self) -> None:
        size = f"{self.height}x{self.width}"
        require(self, ("height", "width"), self.height > 0 and self.width > 0, "sizes must be positive", shown=size)
        require(self, "batch_size", self.batch_size >= 1, "must be at least 1")
        require(self, "workers", self.workers >= 0, "must not be negative")


@dataclass(frozen=True)
class DomainsConfig:
    """The labelled source (x) and the unlabelled target (u) of a training run."""

    source: str = setting(help=f"Labelled source dataset: {DATASET_HELP}.")
    source_root: Path = setting(help="Source dataset folder.")
    target: str = setting(help=f"Unlabelled target dataset (its query/gallery split is evaluated): {DATASET_HELP}.")
    target_root: Path = setting(help="Target dataset folder.")
    target_batch_size: int | None = setting(None, "Target images per batch.", unset="--batch-size")
    camstyle_dir: Path | None = setting(None, "CamStyle folder of the target.", unset="beside the target's images")

    def __post_init__(self) -> None:
        if self.target_batch_size is not None:
            require(self, "target_batch_size", self.target_batch_size >= 1, "must be at least 1")


# ---------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class OptimConfig:
    """SGD with Nesterov momentum and one 10x learning-rate step at epoch 40, as published."""

    epochs: int = setting(60, "Epochs (one pass over the source loader each).")
    iters_per_epoch: int | None = setting(
        None, "Iterations per epoch (budget runs).", unset="one pass over the source"
    )
    lr: float = setting(0.1, "Learning rate of new layers (backbone gets --backbone-lr-mult of it).")
    backbone_lr_mult: float = setting(0.1, "Learning rate of the trainable backbone stages as a multiple of --lr.")
    lr_steps: tuple[int, ...] = setting(
        (40,), "Epochs at which the learning rate is multiplied by --lr-gamma, comma-separated (e.g. 20,40)."
    )
    lr_gamma: float = setting(0.1, "Learning-rate factor at each of --lr-steps.")
    momentum: float = setting(0.9, "SGD momentum.")
    weight_decay: float = setting(5e-4, "SGD weight decay.")
    amp: bool = setting(True, "Mixed precision on CUDA.")

    def __post_init__(self) -> None:
        require(self, "epochs", self.epochs >= 1, "must be at least 1")
        if self.iters_per_epoch is not None:
            require(self, "iters_per_epoch", self.iters_per_epoch >= 1, "must be at least 1")
        require(self, "lr", self.lr > 0, "must be positive")
        require(self, "backbone_lr_mult", self.backbone_lr_mult >= 0, "must not be negative")
        steps = ",".join(map(str, self.lr_steps))
        require(self, "lr_steps", all(step >= 1 for step in self.lr_steps), "epochs must be at least 1", shown=steps)
        require(self, "lr_steps", list(self.lr_steps) == sorted(set(self.lr_steps)), "must increase", shown=steps)
        require(self, "lr_gamma", 0 < self.lr_gamma <= 1, "must lie in (0, 1]")


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a job runs."""

    seed: int = setting(0, "Random seed (runs are deterministic on CPU).")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    resume: bool = setting(False, "Continue the run in --out from its last checkpoint.")

    def __post_init__(self) -> None:
        require_device(self)


METRICS = ("cosine", "euclidean")


@dataclass(frozen=True)
class EvaluationConfig:
    """Scoring a query/gallery split: by `ecnreid eval`, and by the training run's evaluation hook."""

    every: int = setting(5, "Evaluate on the target every N epochs (0: only at the end).", flag="--eval-every")
    flip: bool = setting(False, "Average features of the image and its mirror.")
    rerank: bool = setting(False, "Also score with k-reciprocal re-ranking (k1 20, k2 6, λ 0.3).")
    metric: str = setting("cosine", "cosine or euclidean.")
    save_ranks: int = setting(0, "Write rank-list PNGs for this many queries.")

    def __post_init__(self) -> None:
        require(self, "every", self.every >= 0, "must not be negative")
        require_one_of(self, "metric", METRICS)
        require(self, "save_ranks", self.save_ranks >= 0, "must not be negative")


@dataclass(frozen=True)
class TrainConfig:
    """`ecnreid train`: a two-domain training run of ``method`` (ECN by default, the published setting)."""

    domains: DomainsConfig = setting(help="Source and target.")
    out: Path = setting(Path("runs/train"), "Run folder: checkpoints, log.jsonl, curves.png, metrics.json.")
    method: str = setting("ecn", "Training method: ecn or spcl (the names in ecnreid.methods.METHODS).")
    tensorboard: bool = setting(
        False,
        "Also write TensorBoard events to tensorboard/ in --out: losses per step, lr, evaluations.",
        flag="--tensorboard",
    )
    input: InputConfig = section(InputConfig, "Input")
    model: ModelConfig = section(ModelConfig, "Model")
    optim: OptimConfig = section(OptimConfig, "Optimisation")
    ecn: ECNConfig = section(ECNConfig, "ECN")
    spcl: SpCLConfig = section(SpCLConfig, "SpCL")
    dg: DGConfig = section(DGConfig, "Domain generalisation")
    evaluation: EvaluationConfig = section(EvaluationConfig, "Evaluation")
    runtime: RuntimeConfig = section(RuntimeConfig, "Runtime")

