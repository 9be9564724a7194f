"""Feature extraction, the one loop every user of a model's features runs (evaluation, ECN's memory
initialisation, ``ecnreid extract`` and ``search``): batched, in order, L2-normalised, optional horizontal-flip
summing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ecnreid.data.image_dataset import ImageDataset
from ecnreid.data.records import ImageRecord
from ecnreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform
from ecnreid.progress import make_progress


@torch.no_grad()
def embed(network: nn.Module, images: torch.Tensor, flip: bool = False, normalize: bool = True) -> torch.Tensor:
    """Features (float32) of an image batch on the network's device, unit-norm unless ``normalize=False``; with
    ``flip`` the features of each image and its mirror are summed first. Half precision on CUDA."""
    autocast = torch.autocast("cuda", dtype=torch.float16) if images.device.type == "cuda" else nullcontext()
    with autocast:
        features = network(images).float()
        if flip:
            features = features + network(torch.flip(images, dims=[3])).float()
    return F.normalize(features, dim=1) if normalize else features


def iter_features(
    model: nn.Module,
    records: Sequence[ImageRecord],
    *,
    height: int,
    width: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    workers: int,
    device: torch.device | str,
    flip: bool,
    normalize: bool = True,
) -> Iterator[torch.Tensor]:
    """The features of ``records`` batch by batch, in order, on the CPU: see :func:`extract_features`. The
    model runs in eval mode and gets its mode back when the batches end."""
    device = torch.device(device)
    loader = DataLoader(
        ImageDataset(records, build_test_transform(height, width, mean, std)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    was_training = model.training
    model.eval()
    try:
        for images, *_ in loader:
            yield embed(model, images.to(device, non_blocking=True), flip, normalize).cpu()
    finally:
        model.train(was_training)


def extract_features(
    model: nn.Module,
    records: Sequence[ImageRecord],
    *,
    height: int,
    width: int,
    batch_size: int,
    workers: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str = "cpu",
    flip: bool = False,
    description: str = "features",
    show_progress: bool = True,
    normalize: bool = True,
) -> torch.Tensor:
    """Return L2-normalised features [N, D] (float32, on CPU) for ``records`` in order (as the model gives
    them with ``normalize=False``; [0, 0] for no records).

    Images are resized to ``height`` x ``width`` and normalised with ``mean`` / ``std`` (the model card's;
    ImageNet's, which training uses, unless told).
    ``model`` in eval mode must map an image batch to features. With ``flip`` the features of the image and
    its mirror are summed before normalisation.
    """
    chunks: list[torch.Tensor] = []
    progress = make_progress(transient=True)
    with progress if show_progress else nullcontext():
        task = progress.add_task(description, total=len(records), unit="img", info="")
        batches = iter_features(
            model, records, height=height, width=width, mean=mean, std=std, batch_size=batch_size, workers=workers,
            device=device, flip=flip, normalize=normalize,
        )
        for chunk in batches:
            chunks.append(chunk)
            progress.update(task, advance=len(chunk))
    if not chunks:
        return torch.empty(0, 0)
    return torch.cat(chunks)
