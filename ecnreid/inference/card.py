"""The model card a checkpoint carries: what a user of the adapted model must know to feed it and read its
output (architecture, input size and normalisation, the test-time feature and its dimension), where it came
from (method, setting, source and target datasets) and how it scored (the final epoch's target metrics).

The card is stored in checkpoints as a plain dict under ``"card"`` (no class is pickled) and written beside
features and exported models as ``card.json``. Checkpoints written before cards existed get one derived from
their ``config`` (everything it needs is recorded there) and are marked ``derived_from_config``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ecnreid.config import train_config_from_record
from ecnreid.errors import EcnreidError
from ecnreid.io import write_json
from ecnreid.models.card import (
    CARD_VERSION,
    ECN_FEATURE,
    METRIC_KEYS,
    MethodCard,
    ModelCard,
    build_card,
    ecnreid_version,
    final_metrics,
)

__all__ = [
    "CARD_VERSION",
    "ECN_FEATURE",
    "METRIC_KEYS",
    "MethodCard",
    "ModelCard",
    "build_card",
    "card_from_checkpoint",
    "ecnreid_version",
    "final_metrics",
    "read_card_json",
    "write_card_json",
]


def card_from_checkpoint(state: dict[str, Any], path: Path, *, feature_dim: int = 0) -> ModelCard:
    """The checkpoint's card; for a checkpoint written before cards, one derived from its ``config``,
    ``provenance`` and ``history`` (``feature_dim``: the rebuilt model's, when known; 0 leaves it to the
    caller to measure). An ECN card written before cards recorded how to rebuild the test-time network gets
    that record from the checkpoint's config.

    A card-less checkpoint whose config no longer describes a training run is a one-line error."""
    if "card" in state:
        return _with_ecn_model_details(ModelCard.from_dict(state["card"], f"{path}"), state)
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
    card = dataclasses.replace(card, ecnreid_version="unknown", derived_from_config=True)
    return _with_ecn_model_details(card, state)


def _with_ecn_model_details(card: ModelCard, state: dict[str, Any]) -> ModelCard:
    """An ECN card with ``details["model"]`` (last stride and DG settings), from the checkpoint's config when
    the card was written without it."""
    if card.method != "ecn" or "model" in card.details:
        return card
    saved = state.get("config") or {}
    details = {"last_stride": (saved.get("model") or {}).get("last_stride", 2), "dg": saved.get("dg") or {}}
    return dataclasses.replace(card, details={**card.details, "model": details})


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
