"""The configuration tree: plain frozen dataclasses, one per section, reused by every command.

Each default is written once, here. A field's ``metadata`` carries its help text and, where it differs from
the field name, its command-line flag; ``ecnreid.cli`` builds its options from these, and a run's own
``config.json`` loads back through :func:`config_from_dict`. Validation lives in ``__post_init__``, so a
library user gets the same checks as the command line.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from ecnreid.dataset_names import DATASET_HELP
from ecnreid.errors import EcnreidError

C = TypeVar("C")


def setting(
    default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None, unset: str | None = None
) -> Any:
    """A config field with its help text, (when it is not ``--field-name``) its command-line flag, and for a
    ``None`` default what ``None`` means (``unset``, shown as the default)."""
    metadata = {"help": help, "flag": flag, "unset": unset}
    return field(default=default, metadata=metadata)


def section(factory: Any, help: str = "") -> Any:
    """A nested section of the tree."""
    return field(default_factory=factory, metadata={"help": help, "section": True})


def _require(condition: bool, flag: str, value: Any, message: str) -> None:
    if not condition:
        raise EcnreidError(f"{flag} {value}: {message}")


def _one_of(value: Any, choices: tuple[Any, ...], flag: str) -> None:
    _require(value in choices, flag, value, f"expected one of {', '.join(map(str, choices))}")


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
        _one_of(self.arch, ARCHS, "--arch")
        _require(self.last_stride in (1, 2), "--last-stride", self.last_stride, "expected 1 or 2")
        _require(self.frozen_stages >= 0, "--frozen-stages", self.frozen_stages, "must not be negative")
        _require(self.embedding_dim > 0, "--embedding-dim", self.embedding_dim, "must be positive")
        _require(0 <= self.dropout < 1, "--dropout", self.dropout, "must lie in [0, 1)")
        if self.weights is not None and not self.pretrained:
            raise EcnreidError("--weights PATH and --no-pretrained contradict each other: give one of them")


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
        _one_of(self.mixstyle_mix, MIXSTYLE_MIXES, "--mixstyle-mix")
        _require(0 <= self.mixstyle_p <= 1, "--mixstyle-p", self.mixstyle_p, "must lie in [0, 1]")
        _require(self.mixstyle_alpha > 0, "--mixstyle-alpha", self.mixstyle_alpha, "must be positive")
        if self.snr_weight is not None:
            _require(self.snr_weight >= 0, "--snr-weight", self.snr_weight, "must not be negative")
        for flag, value in (
            ("--rsc-spatial", self.rsc_spatial),
            ("--rsc-channel", self.rsc_channel),
            ("--rsc-batch", self.rsc_batch),
        ):
            _require(0 < value <= 1, flag, value, "must lie in (0, 1]")

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
        _require(
            self.height > 0 and self.width > 0,
            "--height/--width",
            f"{self.height}x{self.width}",
            "sizes must be positive",
        )
        _require(self.batch_size >= 1, "--batch-size", self.batch_size, "must be at least 1")
        _require(self.workers >= 0, "--workers", self.workers, "must not be negative")


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
            _require(self.target_batch_size >= 1, "--target-batch-size", self.target_batch_size, "must be at least 1")


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
        _require(self.epochs >= 1, "--epochs", self.epochs, "must be at least 1")
        if self.iters_per_epoch is not None:
            _require(self.iters_per_epoch >= 1, "--iters-per-epoch", self.iters_per_epoch, "must be at least 1")
        _require(self.lr > 0, "--lr", self.lr, "must be positive")
        _require(self.backbone_lr_mult >= 0, "--backbone-lr-mult", self.backbone_lr_mult, "must not be negative")
        steps = ",".join(map(str, self.lr_steps))
        _require(all(step >= 1 for step in self.lr_steps), "--lr-steps", steps, "epochs must be at least 1")
        _require(list(self.lr_steps) == sorted(set(self.lr_steps)), "--lr-steps", steps, "must increase")
        _require(0 < self.lr_gamma <= 1, "--lr-gamma", self.lr_gamma, "must lie in (0, 1]")


MEMORY_DTYPES = ("fp32", "fp16")
MEMORY_INITS = ("zeros", "features")
KNN_METHODS = ("topk", "faiss")  # topk of the logits is ~100x faster on CPU (bench/knn_speed.py)


@dataclass(frozen=True)
class ECNConfig:
    """ECN's terms on the exemplar memory (Zhong et al., CVPR 2019); defaults are the published setting.

    Source only, DG only (``no_target``) and the ablations are the same method with terms switched off."""

    lam: float = setting(0.3, "Target loss weight λ: (1-λ) source + λ target.", flag="--lambda")
    beta: float = setting(0.05, "Memory softmax temperature β.")
    k: int = setting(6, "Neighbours for neighbourhood invariance.")
    alpha: float = setting(0.01, "Memory momentum per epoch: α = alpha × epoch.")
    neighbour_start_epoch: int = setting(
        5, "0-based epoch from which neighbourhood invariance runs.", flag="--neighbour-start"
    )
    memory_dtype: str = setting("fp32", "fp32 or fp16 exemplar memory.")
    memory_init: str = setting("zeros", "zeros (published) or features: fill the memory from one pass over the target.")
    knn: str = setting("topk", "Nearest memory slots by topk (of the logits) or faiss.")
    use_camera: bool = setting(True, "Camera invariance (needs a CamStyle set).", flag="--camera/--no-camera")
    use_neighbour: bool = setting(True, "Neighbourhood invariance.", flag="--neighbour/--no-neighbour")
    source_only: bool = setting(False, "Train on the source only (the ablation baseline).", flag="--source-only")
    no_target: bool = setting(False, "Domain generalisation: never read target train images.")

    def __post_init__(self) -> None:
        _require(0 <= self.lam <= 1, "--lambda", self.lam, "must lie in [0, 1]")
        _require(self.beta > 0, "--beta", self.beta, "must be positive")
        _require(self.k >= 1, "--k", self.k, "must be at least 1")
        _require(self.alpha >= 0, "--alpha", self.alpha, "must not be negative")
        _require(
            self.neighbour_start_epoch >= 0, "--neighbour-start", self.neighbour_start_epoch, "must not be negative"
        )
        _one_of(self.memory_dtype, MEMORY_DTYPES, "--memory-dtype")
        _one_of(self.memory_init, MEMORY_INITS, "--memory-init")
        _one_of(self.knn, KNN_METHODS, "--knn")
        if self.source_only and self.no_target:
            raise EcnreidError("--source-only and --no-target: choose one")

    @property
    def uses_target(self) -> bool:
        """Whether the unlabelled target train split takes part in training (false for source-only / DG)."""
        return not (self.source_only or self.no_target)

    @property
    def setting_name(self) -> str:
        """The ablation row this run reproduces (the ablation study of Zhong et al., CVPR 2019)."""
        if not self.uses_target:
            return "source only"
        parts = ["E"] + (["C"] if self.use_camera else []) + (["N"] if self.use_neighbour else [])
        return "+" + "+".join(parts)


@dataclass(frozen=True)
class SpCLConfig:
    """SpCL (Ge et al., NeurIPS 2020): the hybrid memory and the self-paced clustering; defaults are the authors'
    UDA script. Epochs, iterations per epoch, batch sizes and the backbone come from their own sections; SpCL
    trains every stage and has no head of its own (--frozen-stages, --embedding-dim and --dropout are ECN's)."""

    eps: float = setting(0.6, "DBSCAN radius on the Jaccard distance.", flag="--spcl-eps")
    eps_gap: float = setting(0.02, "Tighter and looser radius for the reliability criteria.", flag="--spcl-eps-gap")
    min_samples: int = setting(4, "DBSCAN neighbours (itself included) of a core image.", flag="--spcl-min-samples")
    k1: int = setting(30, "k-reciprocal neighbours of the Jaccard distance.", flag="--spcl-k1")
    k2: int = setting(6, "Neighbours of the Jaccard distance's query expansion.", flag="--spcl-k2")
    instances: int = setting(4, "Images per identity in a batch (P identities x K images).", flag="--spcl-instances")
    memory_momentum: float = setting(0.2, "Hybrid memory momentum (share of the old entry).", flag="--spcl-momentum")
    temperature: float = setting(0.05, "Contrastive loss temperature.", flag="--spcl-temperature")
    adam_lr: float = setting(3.5e-4, "Adam learning rate.", flag="--spcl-lr")
    adam_weight_decay: float = setting(5e-4, "Adam weight decay.", flag="--spcl-weight-decay")
    lr_step: int = setting(20, "Epochs between learning-rate drops.", flag="--spcl-lr-step")
    lr_step_gamma: float = setting(0.1, "Learning-rate factor at each drop.", flag="--spcl-lr-gamma")

    def __post_init__(self) -> None:
        _require(self.eps - self.eps_gap > 0, "--spcl-eps", self.eps, "must exceed --spcl-eps-gap")
        _require(self.eps + self.eps_gap < 1, "--spcl-eps", self.eps, "plus --spcl-eps-gap must stay below 1")
        _require(self.eps_gap >= 0, "--spcl-eps-gap", self.eps_gap, "must not be negative")
        _require(self.min_samples >= 1, "--spcl-min-samples", self.min_samples, "must be at least 1")
        _require(self.k1 >= 1, "--spcl-k1", self.k1, "must be at least 1")
        _require(self.k2 >= 1, "--spcl-k2", self.k2, "must be at least 1")
        _require(self.instances >= 1, "--spcl-instances", self.instances, "must be at least 1")
        _require(0 <= self.memory_momentum < 1, "--spcl-momentum", self.memory_momentum, "must lie in [0, 1)")
        _require(self.temperature > 0, "--spcl-temperature", self.temperature, "must be positive")
        _require(self.adam_lr > 0, "--spcl-lr", self.adam_lr, "must be positive")
        _require(self.adam_weight_decay >= 0, "--spcl-weight-decay", self.adam_weight_decay, "must not be negative")
        _require(self.lr_step >= 1, "--spcl-lr-step", self.lr_step, "must be at least 1")
        _require(0 < self.lr_step_gamma <= 1, "--spcl-lr-gamma", self.lr_step_gamma, "must lie in (0, 1]")


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a job runs."""

    seed: int = setting(0, "Random seed (runs are deterministic on CPU).")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    resume: bool = setting(False, "Continue the run in --out from its last checkpoint.")

    def __post_init__(self) -> None:
        ok = self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        _require(ok, "--device", self.device, "expected auto, cpu, cuda or cuda:N")


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
        _require(self.every >= 0, "--eval-every", self.every, "must not be negative")
        _one_of(self.metric, METRICS, "--metric")
        _require(self.save_ranks >= 0, "--save-ranks", self.save_ranks, "must not be negative")


@dataclass(frozen=True)
class TrainConfig:
    """`ecnreid train`: a two-domain training run of ``method`` (ECN by default, the published setting)."""

    domains: DomainsConfig = setting(help="Source and target.")
    out: Path = setting(Path("runs/train"), "Run folder: checkpoints, log.jsonl, curves.png, metrics.json.")
    method: str = setting("ecn", "Training method (a name in ecnreid.methods.METHODS).")
    tensorboard: bool = setting(
        False, "Also write TensorBoard events to tensorboard/ in --out: losses per step, lr, evaluations.",
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


def fill_defaults(section: Any, base: type[C]) -> C:
    """``base`` built from the fields of ``section`` that were given (not None): its defaults fill the rest."""
    names = [f.name for f in dataclasses.fields(base)]  # type: ignore[arg-type]
    return base(**{name: getattr(section, name) for name in names if getattr(section, name) is not None})


_FROM_CARD = "with --checkpoint, the checkpoint's model card gives it"


@dataclass(frozen=True)
class EvalInputConfig(InputConfig):
    """`eval`'s input: the size is None unless given, so that a checkpoint's model card can give it."""

    height: int | None = setting(None, f"Input height (default {InputConfig.height}; {_FROM_CARD}).")
    width: int | None = setting(None, f"Input width (default {InputConfig.width}; {_FROM_CARD}).")

    def __post_init__(self) -> None:
        fill_defaults(self, InputConfig)  # the given values pass the same checks


@dataclass(frozen=True)
class EvalModelConfig(ModelConfig):
    """`eval`'s backbone without a checkpoint; each field is None unless given, so that with --checkpoint an
    option that contradicts the model card can be told from one left out."""

    arch: str | None = setting(
        None, f"Backbone: {', '.join(ARCHS)} (default {ModelConfig.arch}; {_FROM_CARD})."
    )
    pretrained: bool | None = setting(
        None,
        "Start from torchvision's ImageNet weights (downloaded once into torch's cache), as published;"
        " --no-pretrained starts from random weights (default pretrained; with --checkpoint, its trained weights).",
    )
    last_stride: int | None = setting(
        None, f"Stride of the last stage, 1 or 2 (default {ModelConfig.last_stride}; {_FROM_CARD})."
    )

    def __post_init__(self) -> None:
        fill_defaults(self, ModelConfig)  # the given values pass the same checks


@dataclass(frozen=True)
class EvalConfig:
    """`ecnreid eval`: extract features of a query/gallery split and score the ranking."""

    dataset: str = setting(help=f"Dataset: {DATASET_HELP}.")
    root: Path = setting(help="Dataset folder (or its parent).")
    checkpoint: Path | None = setting(
        None, "An ecnreid training checkpoint (last.pt); its model card gives the architecture and input."
    )
    out: Path = setting(Path("runs/eval"), "Folder for metrics.json and pictures.")
    input: EvalInputConfig = section(EvalInputConfig, "Input")
    model: EvalModelConfig = section(EvalModelConfig, "Model")
    evaluation: EvaluationConfig = section(EvaluationConfig, "Evaluation")
    runtime: RuntimeConfig = section(RuntimeConfig, "Runtime")

    def __post_init__(self) -> None:
        if self.checkpoint is not None and self.model.weights is not None:
            raise EcnreidError(
                f"--weights {self.model.weights}: --checkpoint already holds the trained weights; leave out --weights"
            )


# ---------------------------------------------------------------------------------------------- CamStyle
@dataclass(frozen=True)
class StarGANConfig:
    """StarGAN (Choi et al., CVPR 2018) with the camera as the domain; defaults are ECN's setting."""

    iters: int = setting(200_000, "StarGAN training iterations.")
    batch_size: int = setting(16, "StarGAN batch size.")
    image_size: tuple[int, int] = setting((256, 128), "StarGAN input HEIGHTxWIDTH.")
    load_scale: float = setting(1.125, "Resize to this multiple of --image-size before the random crop.")
    conv_dim: int = setting(64, "StarGAN width of both networks (published 64; 32 is about 3x faster on a CPU).")
    g_repeat_num: int = setting(6, "Residual blocks of the generator.")
    d_repeat_num: int = setting(6, "Down-sampling layers of the discriminator.")
    residual_generator: bool = setting(
        False, "Generator starts as the identity and learns the change (not in StarGAN; short budgets)."
    )
    camera_norm: bool = setting(
        False, "Camera-conditioned InstanceNorm in the generator (not in StarGAN; learns a style sooner)."
    )
    lr: float = setting(1e-4, "StarGAN Adam learning rate of both networks (published 1e-4).")
    beta1: float = setting(0.5, "Adam β1.")
    beta2: float = setting(0.999, "Adam β2.")
    n_critic: int = setting(5, "Critic steps per generator step (published 5; 1 gives the generator 5x the updates).")
    lambda_cls: float = setting(1.0, "Weight of the camera classification loss.")
    lambda_rec: float = setting(
        10.0,
        "Weight of the cycle reconstruction (published 10; a residual generator keeps the person by construction,"
        " and at 10 stayed the identity for 751 CPU iterations).",
    )
    lambda_gp: float = setting(10.0, "Weight of the gradient penalty.")
    decay_from: float = setting(0.5, "Fraction of --iters after which the learning rates fall linearly to 0.")
    amp: bool = setting(False, "bf16 autocast for StarGAN training on CUDA (published StarGAN trains in fp32).")
    sample_every: int = setting(1000, "Write a sample grid PNG every N iterations.")
    checkpoint_every: int = setting(1000, "Save a checkpoint every N iterations.")
    log_every: int = setting(10, "Log the losses every N iterations.")
    sample_rows: int = setting(4, "Images per sample grid.")
    generate_batch_size: int = setting(64, "Images per batch when rendering the CamStyle set.")

    def __post_init__(self) -> None:
        _require(self.iters >= 1, "--iters", self.iters, "must be at least 1")
        _require(self.batch_size >= 1, "--batch-size", self.batch_size, "must be at least 1")
        _require(self.lambda_rec >= 0, "--lambda-rec", self.lambda_rec, "must not be negative")
        _require(self.lr > 0, "--lr", self.lr, "must be positive")
        _require(self.n_critic >= 1, "--n-critic", self.n_critic, "must be at least 1")
        h, w = self.image_size
        scale = 2**self.d_repeat_num
        _require(
            h > 0 and w > 0 and not h % scale and not w % scale,
            "--image-size",
            f"{h}x{w}",
            f"height and width must be positive multiples of {scale} (the discriminator halves them "
            f"{self.d_repeat_num} times)",
        )

    @property
    def load_size(self) -> tuple[int, int]:
        h, w = self.image_size
        return round(h * self.load_scale), round(w * self.load_scale)


CAMSTYLE_METHODS = ("stargan", "colour")


@dataclass(frozen=True)
class PrepareConfig:
    """`ecnreid prepare`: the CamStyle set of ``dataset`` at ``root`` (defaults are ECN's StarGAN setting)."""

    dataset: str = setting(help=f"Target dataset: {DATASET_HELP}.")
    root: Path = setting(help="Target dataset folder.")
    method: str = setting("stargan", "stargan (GAN) or colour (fast colour-statistics transfer).")
    out: Path | None = setting(None, "CamStyle output folder.", unset="beside the dataset's training images")
    generator: Path | None = setting(None, "Reuse a trained StarGAN checkpoint.")
    work_dir: Path | None = setting(
        None, "Folder for StarGAN checkpoints and samples.", unset="the --out folder's name + _stargan, beside it"
    )
    pseudo_cameras: int | None = setting(None, "Group images into K style clusters as cameras.")
    workers: int = setting(4, WORKERS_HELP)
    stargan: StarGANConfig = section(StarGANConfig, "StarGAN")
    runtime: RuntimeConfig = section(RuntimeConfig, "Runtime")

    def __post_init__(self) -> None:
        _one_of(self.method, CAMSTYLE_METHODS, "--method")
        if self.pseudo_cameras is not None:
            _require(
                self.pseudo_cameras >= 2, "--pseudo-cameras", self.pseudo_cameras, "needs at least 2 style clusters"
            )
        _require(self.workers >= 0, "--workers", self.workers, "must not be negative")


# ---------------------------------------------------------------------------------------------- synthetic data
# What one domain of the built-in synthetic dataset looks like (``ecnreid.data.synthetic``): who is in it, how
# its cameras see, how many images. A spec's defaults are the *source* domain's; the named pairs follow.
MAX_IDS = 4999  # person ids are written with 4 digits; the target's start at 5001


def _require_synthetic(condition: bool, where: str, value: Any, message: str) -> None:
    if not condition:
        raise EcnreidError(f"synthetic {where} {value!r}: {message}")


@dataclass(frozen=True)
class PersonSpec:
    """How the domain's people dress: its fashion."""

    # Share of black, white and grey garments (tops, bottoms, patterns, bags, hats); other garments get any hue.
    achromatic: float = 0.3

    def __post_init__(self) -> None:
        _require_synthetic(0.0 <= self.achromatic <= 1.0, "person.achromatic", self.achromatic, "must lie in [0, 1]")


@dataclass(frozen=True)
class CameraStyleSpec:
    """How the domain's cameras render a scene. Each camera draws its own style within these bounds."""

    # Scales every departure from a neutral camera other than the cast: saturation, hue, exposure, contrast,
    # gamma, vertical shade, blur, sensor noise (0 = neutral).
    strength: float = 0.3
    # Amplitude of each camera's colour cast (white-balance gains up to 1 ± cast, every camera in its own
    # direction of the colour wheel); 0 = no cast.
    cast: float = 0.12
    # Textured scenes (bricks, tiles, stripes, foliage) instead of plain ones (solid, gradient, floor).
    textured: bool = False

    def __post_init__(self) -> None:
        # Beyond 2 a camera's exposure or contrast factor could reach 0 or below.
        _require_synthetic(0.0 <= self.strength <= 2.0, "camera.strength", self.strength, "must lie in [0, 2]")
        # A cast of 1 or more could zero a colour channel.
        _require_synthetic(0.0 <= self.cast < 1.0, "camera.cast", self.cast, "must lie in [0, 1)")


@dataclass(frozen=True)
class LayoutSpec:
    """How many people, cameras and images the domain has.

    Each person is seen by 2..``cameras`` cameras. The first ``train_ids`` people are the training ids, with
    1..``train_images_per_camera`` images per camera that sees them; the next ``test_ids`` are the test ids, with
    one query and ``gallery_per_camera`` gallery images per camera that sees them.
    """

    cameras: int = 4
    train_ids: int = 60
    test_ids: int = 40
    train_images_per_camera: int = 2
    gallery_per_camera: int = 2
    # A person's training images in one camera are frames of one track: same view and pose, as the
    # near-duplicates of real re-ID training sets (background crop, exposure flicker and noise still vary).
    tracks: bool = False

    def __post_init__(self) -> None:
        _require_synthetic(self.cameras >= 2, "layout.cameras", self.cameras, "a domain needs at least 2 cameras")
        for name in ("train_ids", "test_ids", "train_images_per_camera", "gallery_per_camera"):
            value = getattr(self, name)
            _require_synthetic(value >= 1, f"layout.{name}", value, "must be at least 1")
        total = self.train_ids + self.test_ids
        _require_synthetic(total <= MAX_IDS, "layout.train_ids + test_ids", total, f"at most {MAX_IDS} ids per domain")


@dataclass(frozen=True)
class DomainSpec:
    """One domain of the synthetic dataset."""

    person: PersonSpec = field(default_factory=PersonSpec)
    camera: CameraStyleSpec = field(default_factory=CameraStyleSpec)
    layout: LayoutSpec = field(default_factory=LayoutSpec)

    def __post_init__(self) -> None:
        for name, kind in (("person", PersonSpec), ("camera", CameraStyleSpec), ("layout", LayoutSpec)):
            value = getattr(self, name)
            _require_synthetic(isinstance(value, kind), name, value, f"expected a {kind.__name__}")


# The generator's default pair: mild, neutral-ish source cameras over plain scenes; a target with one more
# camera, strong and distinct colour casts, lighting, blur and noise, and textured scenes. Appearance identifies
# a person within a target camera; matching across them needs camera invariance.
DEFAULT_SOURCE = DomainSpec()
DEFAULT_TARGET = DomainSpec(
    camera=CameraStyleSpec(strength=0.8, cast=0.35, textured=True),
    layout=LayoutSpec(cameras=5),
)

# The demo's pair. The domain gap is fashion, as from winter DukeMTMC to summer Market-1501: source people wear
# black, white and grey, target people colours, which a source-trained model never learned to tell apart. The
# target's cameras differ in lighting, contrast, blur and noise but not in colour cast, over plain scenes: with
# camera casts (0.2) and textured scenes, exemplar invariance from random weights learns the camera instead of
# the person (trained alone on the target, λ = 1: rank-1 0.7, against 28.7 with neutral cameras). A target
# person's training images in one camera are 1-4 frames of one track (Market-1501: 4.0 per person and camera on
# average): the near-duplicates that exemplar invariance pushes apart and neighbourhood invariance finds again.
DEMO_SOURCE = DomainSpec(person=PersonSpec(achromatic=1.0))
DEMO_TARGET = DomainSpec(
    person=PersonSpec(achromatic=0.0),
    camera=CameraStyleSpec(strength=0.4, cast=0.0, textured=False),
    layout=LayoutSpec(cameras=5, train_images_per_camera=4, tracks=True),
)


# ---------------------------------------------------------------------------------------------- demo
@dataclass(frozen=True)
class DemoConfig:
    """`ecnreid demo`; the training knobs are scaled down from the published ones for CPU minutes."""

    out: Path = setting(Path("runs/demo"), "Folder for the synthetic data and the runs.")
    seed: int = setting(0, "Seed for the data and the runs.")
    epochs: int = setting(10, "Training epochs per setting.")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    weights: Path | None = setting(
        None,
        "A local torchvision state_dict for the ResNet-18 backbone (e.g. ImageNet weights). With it the runs start "
        "from these weights with conv1..layer2 frozen and lr 0.1; without it, from random weights with only the "
        "stem frozen and lr 0.01.",
    )
    arch: str = "resnet18"
    height: int = 64
    width: int = 32
    batch_size: int = 32
    # From random weights with batch 32, the published 0.1 makes the 4096-d classifier's logits explode.
    lr: float = 0.01
    # 80 steps move a backbone trained at the published 0.1 x lr too little for the target terms to matter.
    backbone_lr_mult: float = 1.0
    # The spec's k = 6 is for Market-1501, where a person has about 16 other training images; here about 8.
    k: int = 3
    workers: int = 0  # tiny images: worker processes cost more than they save
    source: DomainSpec = DEMO_SOURCE
    target: DomainSpec = DEMO_TARGET


# ---------------------------------------------------------------------------------------------- (de)serialising
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


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def strip_optional(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _coerce(annotation: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    target = strip_optional(annotation)
    if dataclasses.is_dataclass(target):
        if not isinstance(value, dict):
            raise EcnreidError(f"{where}: expected a table of settings, got {value!r}")
        return config_from_dict(target, value, where=where)
    if target is Path:
        return Path(value)
    if typing.get_origin(target) is tuple:
        return tuple(value) if isinstance(value, list | tuple) else (value,)
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def check_setting_names(cls: type, data: dict[str, Any], *, where: str, recurse: bool = True) -> dict[str, Any]:
    """``data`` with the names of earlier versions renamed (``RENAMED_SETTINGS``); an unknown name is an error
    naming ``where`` and the valid settings and sections (of the sections too, with ``recurse``)."""
    hints = _field_types(cls)
    for old, (new, convert) in RENAMED_SETTINGS.get(cls, {}).items():
        if old in data and new not in data:
            data = {**{k: v for k, v in data.items() if k != old}, new: convert(data[old])}
    sections = {name for name, kind in hints.items() if dataclasses.is_dataclass(strip_optional(kind))}
    unknown = sorted(set(data) - set(hints))
    if unknown:
        valid = ", ".join(sorted(set(hints) - sections))
        valid += "; sections: " + ", ".join(f"[{name}]" for name in sorted(sections)) if sections else ""
        raise EcnreidError(f"{where}: unknown setting {unknown[0]!r}; valid: {valid}")
    for name in sorted(sections & set(data)) if recurse else ():
        if isinstance(data[name], dict):
            check_setting_names(strip_optional(hints[name]), data[name], where=f"{where} [{name}]")
    return data


def config_from_dict(cls: type[C], data: dict[str, Any], *, where: str = "config") -> C:
    """Build ``cls`` from a (possibly partial) nested dict; missing fields keep their defaults, unknown
    keys are an error naming the key."""
    hints = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    data = check_setting_names(cls, data, where=where, recurse=False)
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default_factory
        if isinstance(value, dict) and default is not dataclasses.MISSING:
            # A partial section keeps the defaults this tree gives it, where they differ from the section's own.
            value = check_setting_names(strip_optional(hints[name]), value, where=f"{where} [{name}]", recurse=False)
            value = merge_settings(config_to_dict(default()), value)
        kwargs[name] = _coerce(hints[name], value, f"{where} [{name}]")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise EcnreidError(f"{where}: {exc}") from None


# Settings of earlier versions that load into today's fields: class → {old name: (field, convert)}.
RENAMED_SETTINGS: dict[type, dict[str, tuple[str, Any]]] = {OptimConfig: {"lr_step": ("lr_steps", lambda s: (s,))}}
# Field names of the flat training config of versions before the tree, where they differ from today's.
LEGACY_TRAIN_NAMES = {"eval_every": "every", "flip_eval": "flip"}


def train_config_from_record(data: dict[str, Any], *, where: str = "config") -> TrainConfig:
    """The ``TrainConfig`` a checkpoint or ``config.json`` records: today's tree, or the flat config of
    versions before it (each setting placed by its field name)."""
    if "domains" in data:
        return config_from_dict(TrainConfig, data, where=where)
    paths = _leaf_paths(TrainConfig)
    nested: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("model", "dg"):
            nested[key] = dict(value)
            continue
        found = [("optim", key)] if key == "lr_step" else paths.get(LEGACY_TRAIN_NAMES.get(key, key), [])
        if len(found) != 1:
            raise EcnreidError(f"{where}: unknown setting {key!r} of an earlier version")
        node = nested
        for part in found[0][:-1]:
            node = node.setdefault(part, {})
        node[found[0][-1]] = value
    model = nested.get("model", {})
    if model.get("weights") is not None:
        model["pretrained"] = True  # earlier versions marked a weights file as not pretrained
    return config_from_dict(TrainConfig, nested, where=where)


# Keys a run folder's config.json carries beside the configuration itself.
RUN_RECORD_KEYS = ("provenance", "signature")


def load_config_file(path: Path) -> dict[str, Any]:
    """The nested settings of a TOML or JSON file (a run's own ``config.json`` included)."""
    path = Path(path)
    if not path.is_file():
        raise EcnreidError(f"{path}: --config file not found")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
        else:
            raise EcnreidError(f"{path}: --config must be a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EcnreidError(f"{path}: not a valid {path.suffix[1:].upper()} file ({exc})") from None
    if not isinstance(data, dict):
        raise EcnreidError(f"{path}: expected a table of settings at the top level")
    return {k: v for k, v in data.items() if k not in RUN_RECORD_KEYS}


def _leaf_paths(cls: type, prefix: tuple[str, ...] = ()) -> dict[str, list[tuple[str, ...]]]:
    paths: dict[str, list[tuple[str, ...]]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = strip_optional(hints[f.name])
        if dataclasses.is_dataclass(kind):
            for name, found in _leaf_paths(kind, (*prefix, f.name)).items():
                paths.setdefault(name, []).extend(found)
        else:
            paths.setdefault(f.name, []).append((*prefix, f.name))
    return paths


def override(config: C, **settings: Any) -> C:
    """``config`` with settings replaced by field name wherever they sit in the tree
    (``override(train_config, lr=0.01, use_camera=False)``), or whole top-level sections (``model=...``);
    a name found in two sections is an error."""
    paths = _leaf_paths(type(config))
    top = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    nested: dict[str, Any] = {}
    for name, value in settings.items():
        found = [(name,)] if name in top else paths.get(name, [])
        if len(found) != 1:
            where = "no section" if not found else "sections " + ", ".join(".".join(p[:-1]) for p in found)
            raise ValueError(f"override {name}: found in {where}; replace the section with dataclasses.replace")
        node = nested
        for key in found[0][:-1]:
            node = node.setdefault(key, {})
        node[found[0][-1]] = value
    return _replace_nested(config, nested)


def _replace_nested(config: C, nested: dict[str, Any]) -> C:
    changes = {
        key: _replace_nested(getattr(config, key), value) if isinstance(value, dict) else value
        for key, value in nested.items()
    }
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def merge_settings(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, section by section."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


# ---------------------------------------------------------------------------------------------- using the model
FEATURE_DTYPES = ("float16", "float32")
EXTRACT_SPLITS = ("train", "query", "gallery")
SEARCH_INDEXES = ("auto", "flat", "ivf")
EXPORT_FORMATS = ("onnx", "torchscript")


def _require_device(device: str) -> None:
    ok = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    _require(ok, "--device", device, "expected auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class FeatureRunConfig:
    """How `extract` and `search` run the adapted model over images (its input size and normalisation come
    from the checkpoint's model card)."""

    batch_size: int = setting(128, "Images per batch.")
    workers: int = setting(4, WORKERS_HELP)
    flip: bool = setting(False, "Average the features of each image and its mirror.")
    skip_bad_images: bool = setting(False, "Count and skip undecodable images instead of stopping.")
    dtype: str = setting("float32", "Features on disk: float32, or float16 (half the size).")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "--batch-size", self.batch_size, "must be at least 1")
        _require(self.workers >= 0, "--workers", self.workers, "must not be negative")
        _one_of(self.dtype, FEATURE_DTYPES, "--dtype")
        _require_device(self.device)


@dataclass(frozen=True)
class ExtractConfig:
    """`ecnreid extract`: the adapted model's features of a folder of images or of a dataset split, written
    to a feature folder (features.npy, index.csv, card.json, extract.json); a rerun resumes."""

    checkpoint: Path = setting(help="An ecnreid training checkpoint (last.pt).")
    out: Path = setting(help="Feature folder to write (features.npy, index.csv, card.json, extract.json).")
    images: Path | None = setting(None, "A folder of images, read at any depth (or one image).")
    dataset: str | None = setting(None, f"A dataset, with --root: {DATASET_HELP}.")
    root: Path | None = setting(None, "The dataset folder (with --dataset).")
    split: str = setting("gallery", "The split of --dataset: train, query or gallery.")
    features: FeatureRunConfig = section(FeatureRunConfig, "Feature extraction")

    def __post_init__(self) -> None:
        _one_of(self.split, EXTRACT_SPLITS, "--split")
        if (self.images is None) == (self.dataset is None):
            raise EcnreidError("give the images with either --images DIR or --dataset NAME --root DIR")
        if self.dataset is not None and self.root is None:
            raise EcnreidError(f"--dataset {self.dataset}: needs --root DIR, the dataset folder")
        if self.images is not None and self.root is not None:
            raise EcnreidError("--root goes with --dataset; --images DIR names the folder itself")


@dataclass(frozen=True)
class SearchConfig:
    """`ecnreid search`: rank a gallery for each query image with the adapted model."""

    checkpoint: Path = setting(help="An ecnreid training checkpoint (last.pt).")
    query: Path = setting(help="A query image, or a folder of them (any depth).")
    gallery: Path = setting(
        help="A folder of gallery images (its features are extracted into --out/gallery and reused next time), "
        "or a feature folder written by `ecnreid extract`."
    )
    out: Path = setting(Path("runs/search"), "Folder for results.json, index.html and the rank-list PNGs.")
    top_k: int = setting(10, "Gallery images listed per query.")
    rerank: bool = setting(
        False, "k-reciprocal re-ranking over the whole gallery (refused when it would not fit in memory)."
    )
    index: str = setting(
        "auto", "auto (exact up to 1,000,000 gallery images, IVF beyond), flat (exact) or ivf (approximate)."
    )
    nprobe: int | None = setting(None, "IVF cells visited per query.", unset="the value calibrated with the index")
    features: FeatureRunConfig = section(FeatureRunConfig, "Feature extraction")

    def __post_init__(self) -> None:
        _require(self.top_k >= 1, "--top-k", self.top_k, "must be at least 1")
        _one_of(self.index, SEARCH_INDEXES, "--index")
        if self.nprobe is not None:
            _require(self.nprobe >= 1, "--nprobe", self.nprobe, "must be at least 1")
        if self.rerank and self.index == "ivf":
            raise EcnreidError("--rerank ranks the whole gallery exactly; leave out --index ivf")


@dataclass(frozen=True)
class ExportConfig:
    """`ecnreid export`: the adapted model as an ONNX or TorchScript file whose output is the search feature."""

    checkpoint: Path = setting(help="An ecnreid training checkpoint (last.pt).")
    out: Path = setting(help="The file to write (a JSON describing its input and output goes beside it).")
    format: str = setting("onnx", "onnx or torchscript.")

    def __post_init__(self) -> None:
        _one_of(self.format, EXPORT_FORMATS, "--format")
