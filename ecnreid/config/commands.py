"""The configs of the commands that use a model or make data: `eval`, `prepare` (with StarGAN's section),
and `extract`, `search`, `export` (with the feature-extraction section they share)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ecnreid.config.fields import flag_of, require, require_device, require_one_of, section, setting
from ecnreid.config.train import ARCHS, WORKERS_HELP, EvaluationConfig, InputConfig, ModelConfig, RuntimeConfig
from ecnreid.dataset_names import DATASET_HELP
from ecnreid.errors import EcnreidError

C = TypeVar("C")


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
            weights, checkpoint = flag_of(ModelConfig, "weights"), flag_of(EvalConfig, "checkpoint")
            raise EcnreidError(
                f"{weights} {self.model.weights}: {checkpoint} already holds the trained weights; leave out {weights}"
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
        require(self, "iters", self.iters >= 1, "must be at least 1")
        require(self, "batch_size", self.batch_size >= 1, "must be at least 1")
        require(self, "lambda_rec", self.lambda_rec >= 0, "must not be negative")
        require(self, "lr", self.lr > 0, "must be positive")
        require(self, "n_critic", self.n_critic >= 1, "must be at least 1")
        h, w = self.image_size
        scale = 2**self.d_repeat_num
        require(
            self,
            "image_size",
            h > 0 and w > 0 and not h % scale and not w % scale,
            f"height and width must be positive multiples of {scale} (the discriminator halves them "
            f"{self.d_repeat_num} times)",
            shown=f"{h}x{w}",
        )

    @property
    def load_size(self) -> tuple[int, int]:
        h, w = self.image_size
        return round(h * self.load_scale), round(w * self.load_scale)


CAMSTYLE_METHODS = ("stargan", "colour", "capture")


@dataclass(frozen=True)
class PrepareConfig:
    """`ecnreid prepare`: the CamStyle set of ``dataset`` at ``root`` (defaults are ECN's StarGAN setting)."""

    dataset: str = setting(help=f"Target dataset: {DATASET_HELP}.")
    root: Path = setting(help="Target dataset folder.")
    method: str = setting(
        "stargan",
        "stargan (GAN), colour (fast colour-statistics transfer) or capture (each camera's tone curves, sharpness, "
        "noise and JPEG quality).",
    )
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
        require_one_of(self, "method", CAMSTYLE_METHODS)
        if self.pseudo_cameras is not None:
            require(self, "pseudo_cameras", self.pseudo_cameras >= 2, "needs at least 2 style clusters")
        require(self, "workers", self.workers >= 0, "must not be negative")


# ---------------------------------------------------------------------------------------------- using the model
FEATURE_DTYPES = ("float16", "float32")
EXTRACT_SPLITS = ("train", "query", "gallery")
SEARCH_INDEXES = ("auto", "flat", "ivf")
EXPORT_FORMATS = ("onnx", "torchscript")


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
        require(self, "batch_size", self.batch_size >= 1, "must be at least 1")
        require(self, "workers", self.workers >= 0, "must not be negative")
        require_one_of(self, "dtype", FEATURE_DTYPES)
        require_device(self)


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
        require_one_of(self, "split", EXTRACT_SPLITS)
        images, dataset, root = (flag_of(ExtractConfig, name) for name in ("images", "dataset", "root"))
        if (self.images is None) == (self.dataset is None):
            raise EcnreidError(f"give the images with either {images} DIR or {dataset} NAME {root} DIR")
        if self.dataset is not None and self.root is None:
            raise EcnreidError(f"{dataset} {self.dataset}: needs {root} DIR, the dataset folder")
        if self.images is not None and self.root is not None:
            raise EcnreidError(f"{root} goes with {dataset}; {images} DIR names the folder itself")


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
        require(self, "top_k", self.top_k >= 1, "must be at least 1")
        require_one_of(self, "index", SEARCH_INDEXES)
        if self.nprobe is not None:
            require(self, "nprobe", self.nprobe >= 1, "must be at least 1")
        if self.rerank and self.index == "ivf":
            rerank, index = flag_of(SearchConfig, "rerank"), flag_of(SearchConfig, "index")
            raise EcnreidError(f"{rerank} ranks the whole gallery exactly; leave out {index} ivf")


@dataclass(frozen=True)
class ExportConfig:
    """`ecnreid export`: the adapted model as an ONNX or TorchScript file whose output is the search feature."""

    checkpoint: Path = setting(help="An ecnreid training checkpoint (last.pt).")
    out: Path = setting(help="The file to write (a JSON describing its input and output goes beside it).")
    format: str = setting("onnx", "onnx or torchscript.")

    def __post_init__(self) -> None:
        require_one_of(self, "format", EXPORT_FORMATS)
