"""The model card a checkpoint carries: what a user of the adapted model must know to feed it and read its
output (architecture, input size and normalisation, the test-time feature and its dimension), where it came
from (method, setting, source and target datasets) and how it scored (the final epoch's target metrics).

The card is stored in checkpoints as a plain dict under ``"card"`` (no class is pickled) and written beside
features and exported models as ``card.json``. Checkpoints written before cards existed get one derived from
their ``config`` (everything it needs is recorded there) and are marked ``derived_from_config``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecnreid.config import TrainConfig, train_config_from_record
from ecnreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ecnreid.errors import EcnreidError
from ecnreid.io import write_json

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


def card_from_checkpoint(state: dict[str, Any], path: Path, *, feature_dim: int) -> ModelCard:
    """The checkpoint's card; for a checkpoint written before cards, one derived from its ``config``,
    ``provenance`` and ``history`` (``feature_dim`` is the rebuilt model's, which only an ECN model has here).

    A card-less checkpoint whose config no longer describes a training run is a one-line error."""
    if "card" in state:
        return ModelCard.from_dict(state["card"], f"{path}")
    try:
        config = train_config_from_record(state["config"])
    except EcnreidError as exc:
        raise EcnreidError(
            f"{path}: no model card, and its config cannot give one ({exc}); re-save it by training with this "
            "ecnreid version (a run still under way writes a card at its next epoch with --resume)"
        ) from None
    if config.method != "ecn":
        raise EcnreidError(f"{path}: no model card, and a {config.method!r} checkpoint needs one; retrain it with "
                           "this ecnreid version")
    provenance = state.get("provenance") or {}
    card = build_card(
        config,
        MethodCard(ECN_FEATURE, feature_dim, provenance.get("setting")),
        list(state.get("history") or []),
        int(state.get("epoch", 0)),
    )
    return dataclasses.replace(card, ecnreid_version="unknown", derived_from_config=True)


def write_card_json(card: ModelCard, path: Path) -> None:
    """``card.json`` (atomically)."""
    write_json(card.to_dict(), path)


def read_card_json(path: Path) -> ModelCard:
    """A ``card.json``; a missing or malformed file is a one-line error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EcnreidError(f"{path}: model card not found") from None
    except OSError as exc:
        raise EcnreidError(f"{path}: cannot read the model card ({exc.strerror or 'read error'})") from None
    except json.JSONDecodeError as exc:
        raise EcnreidError(
            f"{path}: not a model card (not JSON: {exc.msg} at line {exc.lineno}); expected the card.json that "
            "`ecnreid extract` writes beside its features"
        ) from None
    except ValueError:  # bytes that are not UTF-8 text
        raise EcnreidError(
            f"{path}: not a model card (not a text file); expected the card.json that `ecnreid extract` writes "
            "beside its features"
        ) from None
    return ModelCard.from_dict(data, str(path))
