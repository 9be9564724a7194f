"""Feature extraction: batched, L2-normalised, optional horizontal-flip averaging."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ecnreid.data.image_dataset import ImageDataset
from ecnreid.data.records import ImageRecord
from ecnreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform
from ecnreid.progress import make_progress


class PooledBackbone(nn.Module):
    """A bare backbone as a re-ID feature extractor: global average pool of the last map (pool5), unit-norm
    unless ``normalize=False`` (the raw pool5 that ECN's head takes in training)."""

    def __init__(self, backbone: nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool5 = self.backbone(x).mean(dim=(2, 3))
        return F.normalize(pool5, dim=1) if self.normalize else pool5


@torch.no_grad()
def extract_features(
    model: nn.Module,
    records: Sequence[ImageRecord],
    *,
    height: int = 256,
    width: int = 128,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    batch_size: int = 128,
    workers: int = 2,
    device: torch.device | str = "cpu",
    flip: bool = False,
    description: str = "features",
    show_progress: bool = True,
    normalize: bool = True,
) -> torch.Tensor:
    """Return L2-normalised features [N, D] (float32, on CPU) for ``records`` in order (as the model gives
    them with ``normalize=False``).

    Images are resized to ``height`` x ``width`` and normalised with ``mean`` / ``std`` (the model card's).
    ``model`` in eval mode must map an image batch to features. With ``flip`` the features of the image and
    its mirror are summed before normalisation.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(
        ImageDataset(records, build_test_transform(height, width, mean, std)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    chunks: list[torch.Tensor] = []
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()
    progress = make_progress(transient=True)
    with progress if show_progress else nullcontext():
        task = progress.add_task(description, total=len(records), unit="img", info="")
        for images, *_ in loader:
            images = images.to(device, non_blocking=True)
            with autocast:
                feats = model(images).float()
                if flip:
                    feats = feats + model(torch.flip(images, dims=[3])).float()
            chunks.append((F.normalize(feats, dim=1) if normalize else feats).cpu())
            progress.update(task, advance=len(images))
    model.train(was_training)
    if not chunks:
        return torch.empty(0, 0)
    return torch.cat(chunks)
