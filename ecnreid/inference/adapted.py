"""The adapted model a checkpoint holds, as the feature extractor a user runs: images in, the test-time
feature out (the card's feature, L2-normalised, exactly what ``ecnreid eval`` scores), with its model card.
The model is rebuilt by the method that trained it, looked up by the card's ``method``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError
from ecnreid.evaluation import features
from ecnreid.inference.card import ModelCard, card_from_checkpoint
from ecnreid.inference.messages import say
from ecnreid.methods import METHODS
from ecnreid.models.backbones import file_sha256
from ecnreid.runstate import CHECKPOINT_EXPECTED, load_torch_file


@dataclass
class AdaptedModel:
    """``network`` maps normalised images ``[B, 3, H, W]`` to unit features ``[B, card.feature_dim]``."""

    network: nn.Module
    card: ModelCard
    checkpoint: Path
    checkpoint_sha256: str

    def to(self, device: torch.device) -> AdaptedModel:
        self.network.to(device)
        return self


def load_adapted_model(path: Path, option: str = "--checkpoint") -> AdaptedModel:
    """The trained model of an ecnreid checkpoint, in eval mode on the CPU, with its card (derived from the
    config for checkpoints written before cards, with a notice). Every failure is a one-line error."""
    path = Path(path)
    state = load_torch_file(
        path, "ecnreid checkpoint", weights_only=False, option=option, keys=("model", "config"),
        expected=CHECKPOINT_EXPECTED,
    )
    network, card = model_from_checkpoint(state, path, option)
    if card.derived_from_config:
        say(f"{path}: no model card (written before cards); derived one from its config", warn=True)
    return AdaptedModel(network, card, path, file_sha256(path))


def model_from_checkpoint(state: dict[str, Any], path: Path, option: str) -> tuple[nn.Module, ModelCard]:
    """The one way from a checkpoint to its model, for every command: the card names the method, the
    registered method builds its test-time network from the card (``Method.model_from_card``), and the
    checkpoint's weights fill it. Returns the network in eval mode on the CPU, and the card."""
    card = card_from_checkpoint(state, path)
    if card.method not in METHODS:
        raise EcnreidError(
            f"{option} {path}: trained with the method {card.method!r}, which this ecnreid does not have "
            f"(it has {', '.join(sorted(METHODS))})"
        )
    try:
        network = METHODS[card.method].model_from_card(card, torch.device("cpu"))
        load_weights_it_uses(network, state["model"])
        network.eval()
        with torch.no_grad():
            feature_dim = int(network(torch.zeros(1, 3, card.input_height, card.input_width)).shape[1])
    except (KeyError, TypeError, ValueError, RuntimeError, NotImplementedError) as exc:  # damaged config/weights
        raise EcnreidError(
            f"{option} {path}: the model it holds does not rebuild with this ecnreid version (its card or "
            f"weights do not fit: {_first_line(exc)}); expected {CHECKPOINT_EXPECTED} with this version"
        ) from None
    if card.derived_from_config and card.feature_dim == 0:
        card = dataclasses.replace(card, feature_dim=feature_dim)
    if card.feature_dim != feature_dim:
        raise EcnreidError(
            f"{option} {path}: its card says {card.feature_dim}-d features but the model gives {feature_dim}-d"
        )
    return network, card


def load_weights_it_uses(network: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Fill ``network`` from a training model's state dict, which may hold more (ECN's head, for one); a
    weight the network has and the state dict lacks is a ``KeyError`` naming it."""
    network.load_state_dict({key: weights[key] for key in network.state_dict()})


def _first_line(exc: BaseException) -> str:
    """The first line of an error's text; a bare ``KeyError`` has only the missing key."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else "no detail"
    return f"no {text} entry" if isinstance(exc, KeyError) else text


def iter_features(
    adapted: AdaptedModel,
    records: Sequence[ImageRecord],
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
    flip: bool = False,
) -> Iterator[torch.Tensor]:
    """The features of ``records`` batch by batch, in order, on the CPU, with the card's input size and
    normalisation (``evaluation.features.iter_features``)."""
    card = adapted.card
    return features.iter_features(
        adapted.network,
        records,
        height=card.input_height,
        width=card.input_width,
        mean=card.mean,
        std=card.std,
        batch_size=batch_size,
        workers=workers,
        device=device,
        flip=flip,
    )
