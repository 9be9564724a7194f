"""The adapted model a checkpoint holds, as the feature extractor a user runs: images in, the test-time
feature out (pool5, L2-normalised, exactly what ``ecnreid eval`` scores), with its model card."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ecnreid.data.image_dataset import ImageDataset
from ecnreid.data.records import ImageRecord
from ecnreid.data.transforms import build_test_transform
from ecnreid.errors import EcnreidError
from ecnreid.evaluation.features import PooledBackbone
from ecnreid.inference.card import ModelCard, card_from_checkpoint
from ecnreid.inference.messages import say
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
    from ecnreid.models.factory import model_from_checkpoint

    path = Path(path)
    state = load_torch_file(
        path, "ecnreid checkpoint", weights_only=False, option=option, keys=("model", "config"),
        expected=CHECKPOINT_EXPECTED,
    )
    try:
        model = model_from_checkpoint(state)
    except (KeyError, TypeError, RuntimeError) as exc:  # a foreign method's weights, a damaged config
        raise EcnreidError(
            f"{option} {path}: the model it holds does not rebuild with this ecnreid version (its config or "
            f"weights do not fit: {_first_line(exc)}); expected {CHECKPOINT_EXPECTED} with this version"
        ) from None
    network = PooledBackbone(model.backbone).eval()
    card = card_from_checkpoint(state, path, feature_dim=model.backbone.out_channels)
    if card.feature_dim != model.backbone.out_channels:
        raise EcnreidError(
            f"{option} {path}: its card says {card.feature_dim}-d features but the model gives "
            f"{model.backbone.out_channels}-d"
        )
    if card.derived_from_config:
        say(f"{path}: no model card (written before cards); derived one from its config", warn=True)
    return AdaptedModel(network, card, path, file_sha256(path))


def _first_line(exc: BaseException) -> str:
    """The first line of an error's text; a bare ``KeyError`` has only the missing key."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else "no detail"
    return f"no {text} entry" if isinstance(exc, KeyError) else text


@torch.no_grad()
def embed(network: nn.Module, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """Unit features (float32) of an image batch on the network's device; with ``flip`` the features of each
    image and its mirror are summed, then normalised (as ``ecnreid eval --flip``)."""
    autocast = torch.autocast("cuda", dtype=torch.float16) if images.device.type == "cuda" else nullcontext()
    with autocast:
        features = network(images).float()
        if flip:
            features = features + network(torch.flip(images, dims=[3])).float()
    return F.normalize(features, dim=1)


def iter_features(
    adapted: AdaptedModel,
    records: Sequence[ImageRecord],
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
    flip: bool = False,
) -> Iterator[torch.Tensor]:
    """The features of ``records`` batch by batch, in order, on the CPU (the test transform of the card)."""
    card = adapted.card
    loader = DataLoader(
        ImageDataset(records, build_test_transform(card.input_height, card.input_width, card.mean, card.std)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    for images, *_ in loader:
        yield embed(adapted.network, images.to(device, non_blocking=True), flip).cpu()
