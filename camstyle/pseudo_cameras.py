"""Pseudo cameras for datasets without camera ids (``prepare --pseudo-cameras K``).

Images are grouped into K style clusters from low-level statistics, and each cluster then plays the part
of a camera for CamStyle and for ECN's camera invariance. The features are what a camera changes and a
person's identity mostly does not: the Lab colour mean and spread of the whole image and of its left and
right margins (mostly background), a coarse lightness histogram (exposure) and the crop's size and aspect
(a camera's distance to the people). Clustering is k-means with seeded k-means++ starts, in torch.

The mapping ``{relative image path: pseudo camera}`` is written as ``pseudo_cameras.json`` into the
CamStyle folder, where ``train`` reads it back (``ecnreid.data.camstyle_dataset.load_pseudo_cameras``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from camstyle.colour import channel_stats, rgb_to_lab, to_float_rgb
from ecnreid.data.camstyle_dataset import PSEUDO_CAMERAS_FILE, pseudo_camera_keys
from ecnreid.data.image_dataset import load_image
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError
from ecnreid.io import write_json
from ecnreid.progress import make_progress

HISTOGRAM_BINS = 8
MARGIN = 0.125  # fraction of the width on each side taken as background


def image_style_features(rgb: torch.Tensor) -> torch.Tensor:
    """Style features of one (3, H, W) image in [0, 1] → (22,) vector (see the module docstring)."""
    lab = rgb_to_lab(rgb)
    height, width = rgb.shape[-2:]
    margin = max(1, round(width * MARGIN))
    border = torch.cat([lab[..., :margin], lab[..., width - margin :]], dim=-1)
    whole_mean, whole_std = channel_stats(lab)
    border_mean, border_std = channel_stats(border)
    histogram = torch.histc(lab[0], bins=HISTOGRAM_BINS, min=0.0, max=100.0) / (height * width)
    shape = torch.tensor([math.log(height), width / height])
    return torch.cat([whole_mean, whole_std, border_mean, border_std, histogram, shape])


class _StyleFeatures(Dataset):
    def __init__(self, records: Sequence[ImageRecord]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        return image_style_features(to_float_rgb(load_image(self.records[index].path)))


def style_features(records: Sequence[ImageRecord], workers: int = 2, progress: bool = True) -> torch.Tensor:
    """(N, 22) style features of every record, computed in loader workers."""
    loader = DataLoader(_StyleFeatures(records), batch_size=64, num_workers=workers)
    parts = []
    with make_progress(transient=True) as bar:
        task = bar.add_task("style features", total=len(records), unit="img", info="", visible=progress)
        for batch in loader:
            parts.append(batch)
            bar.update(task, advance=len(batch))
    return torch.cat(parts)


def _kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): each new centre drawn with probability ∝ D²."""
    first = int(torch.randint(len(x), (1,), generator=generator))
    centres = [x[first]]
    nearest = ((x - x[first]) ** 2).sum(dim=1)
    for _ in range(1, k):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
        pick = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(x[pick])
        nearest = torch.minimum(nearest, ((x - x[pick]) ** 2).sum(dim=1))
    return torch.stack(centres)


def kmeans(
    x: torch.Tensor, k: int, seed: int = 0, n_init: int = 8, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Lloyd's k-means on (N, D) points: the best of ``n_init`` seeded k-means++ starts.

    Returns (labels (N,), centres (k, D), inertia). An emptied cluster is re-seeded with the point
    farthest from its centre, so every cluster ends non-empty.
    """
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k={k} for {len(x)} points")
    x = x.double()
    generator = torch.Generator().manual_seed(seed)
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    for _ in range(n_init):
        centres = _kmeans_plus_plus(x, k, generator)
        labels = torch.full((len(x),), -1, dtype=torch.long)
        for _ in range(max_iter):
            distances = torch.cdist(x, centres) ** 2
            new_labels = distances.argmin(dim=1)
            counts = torch.bincount(new_labels, minlength=k)
            for empty in (counts == 0).nonzero().flatten().tolist():
                far = int(distances.gather(1, new_labels[:, None]).squeeze(1).argmax())
                new_labels[far] = empty
                distances[far] = 0.0  # it now sits on its own centre
                counts = torch.bincount(new_labels, minlength=k)
            centres = torch.zeros_like(centres).index_add_(0, new_labels, x) / counts[:, None]
            if torch.equal(new_labels, labels):
                break
            labels = new_labels
        inertia = float(((x - centres[labels]) ** 2).sum())
        if best is None or inertia < best[2]:
            best = (labels, centres, inertia)
    labels, centres, inertia = best
    return labels, centres.float(), inertia


def canonical_labels(labels: torch.Tensor) -> torch.Tensor:
    """Renumber clusters in order of first appearance, so the same grouping always gets the same ids."""
    order: dict[int, int] = {}
    for value in labels.tolist():
        order.setdefault(value, len(order))
    return torch.tensor([order[value] for value in labels.tolist()], dtype=torch.long)


def assign_pseudo_cameras(
    records: Sequence[ImageRecord], k: int, seed: int = 0, workers: int = 2, progress: bool = True
) -> list[int]:
    """A 0-based pseudo camera for every record: k-means on standardised style features."""
    if k < 2:  # PrepareConfig refuses --pseudo-cameras below 2
        raise ValueError(f"pseudo cameras need at least 2 style clusters, got k={k}")
    if k > len(records):
        raise EcnreidError(f"--pseudo-cameras {k}: more clusters than the {len(records)} training images")
    features = style_features(records, workers=workers, progress=progress)
    # Standardise so each statistic weighs alike; a constant one (e.g. all crops the same size) becomes 0.
    std, mean = torch.std_mean(features, dim=0)
    standard = (features - mean) / std.clamp_min(1e-6)
    labels, _, _ = kmeans(standard, k, seed=seed)
    return canonical_labels(labels).tolist()


def write_pseudo_cameras(
    camstyle_dir: str | os.PathLike, records: Sequence[ImageRecord], cameras: Sequence[int]
) -> Path:
    """Write ``pseudo_cameras.json`` ({relative image path: pseudo camera}) into the CamStyle folder."""
    path = Path(camstyle_dir) / PSEUDO_CAMERAS_FILE
    write_json(dict(zip(pseudo_camera_keys(records), (int(c) for c in cameras), strict=True)), path)
    return path


def _contingency(labels: Sequence[int], truth: Sequence[int]) -> torch.Tensor:
    """(clusters, classes) count table."""
    _, label_ids = torch.unique(torch.as_tensor(list(labels)), return_inverse=True)
    _, truth_ids = torch.unique(torch.as_tensor(list(truth)), return_inverse=True)
    table = torch.zeros(int(label_ids.max()) + 1, int(truth_ids.max()) + 1, dtype=torch.float64)
    return table.index_put_((label_ids, truth_ids), torch.ones(len(label_ids), dtype=torch.float64), accumulate=True)


def cluster_purity(labels: Sequence[int], truth: Sequence[int]) -> float:
    """Fraction of items whose cluster's majority true class is their own class (1.0 = pure clusters)."""
    if len(labels) == 0:
        return 1.0
    return float(_contingency(labels, truth).max(dim=1).values.sum()) / len(labels)


def _pairs(n: torch.Tensor | float) -> torch.Tensor | float:
    """n choose 2, elementwise."""
    return n * (n - 1) / 2


def adjusted_rand_index(labels: Sequence[int], truth: Sequence[int]) -> float:
    """Agreement of two groupings corrected for chance (Hubert & Arabie, 1985): 1 identical, ~0 random."""
    table = _contingency(labels, truth)
    index = float(_pairs(table).sum())
    rows, cols = float(_pairs(table.sum(dim=1)).sum()), float(_pairs(table.sum(dim=0)).sum())
    expected = rows * cols / _pairs(float(table.sum()))
    maximum = (rows + cols) / 2
    return 1.0 if maximum == expected else (index - expected) / (maximum - expected)
