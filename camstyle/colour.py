"""Colour-statistics camera style (``prepare --method colour``): a fast, training-free CamStyle set.

Each camera's style is the average per-channel mean and standard deviation of its images in CIE L*a*b*.
An image goes to camera ``c`` by standardising each channel with the image's own statistics and
re-scaling with camera ``c``'s (Reinhard et al., "Color Transfer between Images", 2001).

Why Lab rather than RGB: it separates lightness (L*) from two chroma axes (a*, b*) that are far less
correlated than R, G and B in natural images, so matching each channel on its own shifts a camera's
brightness, contrast and colour cast without inventing false colours (Reinhard et al. use the similar
lαβ space for the same reason). The camera's statistics are averages of per-image statistics, not of the
pooled pixels, because pooled standard deviations add between-image variance and would over-stretch the
contrast of every transferred image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from camstyle.generate import GenerationCounts, ImageWriter, missing_outputs
from ecnreid.data.camstyle_names import stargan_name
from ecnreid.data.image_dataset import load_image
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError
from ecnreid.progress import make_progress

# sRGB (D65) linear RGB -> XYZ, and the D65 reference white.
_RGB_TO_XYZ = torch.tensor(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883])
_DELTA = 6.0 / 29.0
MIN_STD = 1e-3  # Lab units; a flat channel keeps its (flat) shape instead of dividing by zero


def _channels_last(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 matrix to the channel dimension (-3) of (..., 3, H, W)."""
    return torch.einsum("ij,...jhw->...ihw", matrix.to(x), x)


def _per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like).view(3, 1, 1)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) sRGB in [0, 1] → CIE L*a*b* (D65): L* in [0, 100], a*, b* roughly [-128, 127]."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = _channels_last(_RGB_TO_XYZ, linear) / _per_channel(_WHITE, rgb)
    f = torch.where(xyz > _DELTA**3, xyz.clamp_min(1e-12) ** (1.0 / 3.0), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(dim=-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) → sRGB, (..., 3, H, W); not clipped, so out-of-gamut values fall outside [0, 1]."""
    lightness, a, b = lab.unbind(dim=-3)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-3)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0)) * _per_channel(_WHITE, lab)
    linear = _channels_last(_XYZ_TO_RGB, xyz)
    gamma = 1.055 * linear.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055
    return torch.where(linear <= 0.0031308, 12.92 * linear, gamma)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) standard deviation over H, W: (..., 3, H, W) → two (..., 3)."""
    std, mean = torch.std_mean(x.flatten(-2), dim=-1, correction=0)
    return mean, std


def transfer_lab(lab: torch.Tensor, target_mean: torch.Tensor, target_std: torch.Tensor) -> torch.Tensor:
    """Match the channel statistics of ``lab`` (N, 3, H, W) to each of K styles (K, 3) → (N, K, 3, H, W).

    Each output channel has exactly the target mean and standard deviation (before gamut clipping).
    """
    mean, std = channel_stats(lab)
    standard = (lab - mean[..., None, None]) / std.clamp_min(MIN_STD)[..., None, None]
    return standard.unsqueeze(1) * target_std[None, :, :, None, None] + target_mean[None, :, :, None, None]


def to_float_rgb(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image → (3, H, W) float in [0, 1]."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return pixels.permute(2, 0, 1).float() / 255.0


@dataclass(frozen=True)
class CameraStyles:
    """Per-camera average image statistics in Lab: ``mean`` and ``std`` (C, 3), image ``counts`` (C,)."""

    mean: torch.Tensor
    std: torch.Tensor
    counts: torch.Tensor

    def to_dict(self) -> dict[str, list]:
        return {
            "space": "CIE L*a*b* (D65)",
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "images": self.counts.tolist(),
        }


class _ImageStats(Dataset):
    """Item ``i``: the Lab (mean, std) of image ``i`` concatenated → (6,), and its camera."""

    def __init__(self, records: Sequence[ImageRecord]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        record = self.records[index]
        mean, std = channel_stats(rgb_to_lab(to_float_rgb(load_image(record.path))))
        return torch.cat([mean, std]), record.camid


def per_camera_means(
    dataset: Dataset, num_cameras: int, what: str, workers: int = 2, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the ``(values, camera)`` items of ``dataset`` per camera: ``([cameras, width] means, counts)``.
    Items decode in ``workers``; a camera without images is an error naming ``what`` was being measured."""
    loader = DataLoader(dataset, batch_size=64, num_workers=workers)
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_cameras, dtype=torch.long)
    with make_progress(transient=True) as bar:
        task = bar.add_task(f"camera {what}", total=len(dataset), unit="img", info="", visible=progress)
        for values, cameras in loader:
            if sums is None:
                sums = torch.zeros(num_cameras, values.shape[1], dtype=torch.float64)
            sums.index_add_(0, cameras, values.double())
            counts += torch.bincount(cameras, minlength=num_cameras)
            bar.update(task, advance=len(cameras))
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty or sums is None:
        camera = empty[0] + 1 if empty else 1
        raise EcnreidError(f"camera {camera} has no training images; cannot measure its {what}")
    return (sums / counts[:, None]).float(), counts


def camera_styles(
    records: Sequence[ImageRecord], num_cameras: int, workers: int = 2, progress: bool = True
) -> CameraStyles:
    """Average the per-image Lab statistics of each camera's images (one decode per image, in workers)."""
    averages, counts = per_camera_means(_ImageStats(records), num_cameras, "colour style", workers, progress)
    return CameraStyles(mean=averages[:, :3], std=averages[:, 3:], counts=counts)


class _ColourTransfer(Dataset):
    """Item ``k``: (uint8 (T, H, W, 3) renderings of one image in its T pending cameras, record index, cameras)."""

    def __init__(
        self, records: Sequence[ImageRecord], todo: torch.Tensor, indices: Sequence[int], styles: CameraStyles
    ) -> None:
        self.records, self.todo, self.indices, self.styles = records, todo, list(indices), styles

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        index = self.indices[k]
        cameras = self.todo[index].nonzero().flatten()
        lab = rgb_to_lab(to_float_rgb(load_image(self.records[index].path))).unsqueeze(0)
        styled = transfer_lab(lab, self.styles.mean[cameras], self.styles.std[cameras])[0]
        rgb = lab_to_rgb(styled).clamp(0.0, 1.0)
        pixels = (rgb * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return pixels, index, cameras


def generate_colour_camstyle(
    records: Sequence[ImageRecord],
    num_cameras: int,
    out_dir: str | os.PathLike,
    styles: CameraStyles | None = None,
    workers: int = 2,
    writer_threads: int = 4,
    progress: bool = True,
    durable: bool = False,
) -> tuple[GenerationCounts, CameraStyles]:
    """Write the StarGAN-named CamStyle set made by colour-statistics transfer; skip files that exist.

    ``durable`` fsyncs each image, as ``generate_camstyle`` does (off: a rerun regenerates what is lost)."""
    out_dir = Path(out_dir)
    if styles is None:
        styles = camera_styles(records, num_cameras, workers=workers, progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo, skipped = missing_outputs(records, num_cameras, out_dir)
    total = int(todo.sum())
    pending = todo.any(dim=1).nonzero().flatten().tolist()
    stems = [Path(r.path).stem for r in records]
    loader = DataLoader(_ColourTransfer(records, todo, pending, styles), batch_size=None, num_workers=workers)
    written = 0
    with make_progress() as bar, ImageWriter(threads=writer_threads, durable=durable) as writer:
        task = bar.add_task("colour CamStyle", total=total, unit="img", info="", visible=progress)
        for pixels, index, cameras in loader:
            for rendering, camera in zip(pixels.numpy(), cameras.tolist(), strict=True):
                writer.submit(rendering, out_dir / stargan_name(stems[index], camera))
            written += len(cameras)
            bar.update(task, advance=len(cameras))
    return GenerationCounts(written=written, skipped=skipped), styles
