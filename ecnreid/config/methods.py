"""The section of each training method (``TrainConfig.ecn``, ...): its own settings, defaults and checks.

A method's flags must not collide with another section's (``setting_options`` refuses a duplicate): a new
method's section prefixes them with its name, ``flag_prefix: ClassVar[str] = "spcl"`` (``eps`` gives
``--spcl-eps``); ECN's flags keep their short names.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecnreid.config.fields import flag_of, require, require_one_of, setting
from ecnreid.errors import EcnreidError

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
        require(self, "lam", 0 <= self.lam <= 1, "must lie in [0, 1]")
        require(self, "beta", self.beta > 0, "must be positive")
        require(self, "k", self.k >= 1, "must be at least 1")
        require(self, "alpha", self.alpha >= 0, "must not be negative")
        require(self, "neighbour_start_epoch", self.neighbour_start_epoch >= 0, "must not be negative")
        require_one_of(self, "memory_dtype", MEMORY_DTYPES)
        require_one_of(self, "memory_init", MEMORY_INITS)
        require_one_of(self, "knn", KNN_METHODS)
        if self.source_only and self.no_target:
            raise EcnreidError(f"{flag_of(ECNConfig, 'source_only')} and {flag_of(ECNConfig, 'no_target')}: choose one")

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
    trains every stage and has no head of its own (--frozen-stages, --embedding-dim and --dropout are ECN's).
    Field names differ from other sections' (``override`` finds a setting by its name)."""

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
        gap = flag_of(SpCLConfig, "eps_gap")
        require(self, "eps", self.eps - self.eps_gap > 0, f"must exceed {gap}")
        require(self, "eps", self.eps + self.eps_gap < 1, f"plus {gap} must stay below 1")
        require(self, "eps_gap", self.eps_gap >= 0, "must not be negative")
        for name in ("min_samples", "k1", "k2", "instances", "lr_step"):
            require(self, name, getattr(self, name) >= 1, "must be at least 1")
        require(self, "memory_momentum", 0 <= self.memory_momentum < 1, "must lie in [0, 1)")
        require(self, "temperature", self.temperature > 0, "must be positive")
        require(self, "adam_lr", self.adam_lr > 0, "must be positive")
        require(self, "adam_weight_decay", self.adam_weight_decay >= 0, "must not be negative")
        require(self, "lr_step_gamma", 0 < self.lr_step_gamma <= 1, "must lie in (0, 1]")
