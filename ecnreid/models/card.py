"""The model card a checkpoint carries: what a user of the trained model must know to feed it and read its
output (architecture, input size and normalisation, the test-time feature and its dimension), where it came
from (method, setting, source and target datasets) and how it scored (the final epoch's target metrics).

A training method describes its part (``MethodCard``); reading and writing cards is ``ecnreid.inference.card``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any

from ecnreid.config import TrainConfig
from ecnreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ecnreid.errors import EcnreidError

CARD_VERSION = 1
# What the card reports of the final epoch's evaluation on the target's query/gallery (for watching only).
METRIC_KEYS = ("epoch", "rank1", "rank5", "rank10", "mAP", "mINP")
# ECN's test feature, as ``ECNModel.forward`` in eval mode computes it.
ECN_FEATURE = "pool5 (global average of the last backbone map), L2-normalised"


def ecnreid_version() -> str:
    """The installed ecnreid's version ("unknown" when run from a tree that is not installed)."""
    try:
        return importlib.metadata.version("ecnreid")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class MethodCard:
    """What only the training method knows for the card: its test-time feature and the setting it trained."""

    feature: str
    feature_dim: int
    setting: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to use an adapted model without its training configuration."""

    arch: str
    input_height: int
    input_width: int
    feature: str
    feature_dim: int
    method: str
    source: str
    target: str
    epoch: int
    epochs: int
    setting: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channels: str = "RGB"
    resize: str = "bicubic"
    metric: str = "cosine"  # unit features: the inner product is the cosine similarity
    metrics: dict[str, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    ecnreid_version: str = "unknown"
    derived_from_config: bool = False
    card_version: int = CARD_VERSION

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ModelCard:
        """Read :meth:`to_dict`'s output; a card that lacks a field or was written by a newer ecnreid is a
        one-line error naming ``where``. Unknown keys are ignored (a later version may add fields)."""
        if not isinstance(data, dict):
            raise EcnreidError(f"{where}: model card is not a table of fields")
        version = data.get("card_version", CARD_VERSION)
        if not isinstance(version, int) or version > CARD_VERSION:
            raise EcnreidError(
                f"{where}: model card version {version!r} is newer than this ecnreid reads ({CARD_VERSION}); "
                "upgrade ecnreid"
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is
                    dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise EcnreidError(f"{where}: model card lacks {', '.join(repr(m) for m in missing)}")
        values = {name: data[name] for name in fields if name in data}
        for name in ("mean", "std"):
            if name in values:
                values[name] = tuple(float(v) for v in values[name])
        for name in ("input_height", "input_width", "feature_dim", "epoch", "epochs"):
            if not isinstance(values[name], int) or isinstance(values[name], bool) or values[name] < 0:
                raise EcnreidError(f"{where}: model card field {name!r} is {values[name]!r}, not a count")
        return cls(**values)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_height, self.input_width


def final_metrics(history: list[dict[str, Any]]) -> dict[str, float] | None:
    """The last history row's target scores when that epoch was evaluated, else None."""
    if not history or "rank1" not in history[-1]:
        return None
    return {key: history[-1][key] for key in METRIC_KEYS if key in history[-1]}


def build_card(config: TrainConfig, method: MethodCard, history: list[dict[str, Any]], epoch: int) -> ModelCard:
    """The card of a training run's checkpoint after ``epoch`` completed epochs."""
    return ModelCard(
        arch=config.model.arch,
        input_height=config.input.height,
        input_width=config.input.width,
        feature=method.feature,
        feature_dim=method.feature_dim,
        method=config.method,
        setting=method.setting,
        source=config.domains.source,
        target=config.domains.target,
        epoch=epoch,
        epochs=config.optim.epochs,
        metrics=final_metrics(history),
        details=dict(method.details),
        ecnreid_version=ecnreid_version(),
    )
