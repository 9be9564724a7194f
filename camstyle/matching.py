"""Camera matching (``prepare --method capture``): each camera's full tone curves and its capture, fitted on
its own images, no training.

A camera's *profile* is measured on the real target training images of that camera (only camera ids are used):

- **tone**: per L*a*b* channel, the quantile function (``QUANTILES`` levels) averaged over the camera's images.
  Averaging quantile functions gives the distribution "in the middle" of the images' distributions (their
  1-D Wasserstein barycentre); pooling all pixels would add the spread between images, as a pooled standard
  deviation would in ``camstyle.colour``.
- **sharpness and resolution**: the radial amplitude spectrum of the grey image, as the mean log amplitude in
  ``SPECTRUM_BINS`` frequency bands relative to the lowest band, averaged over the camera's images. Blur is a
  roll-off of this curve and a lower resolution (a small crop upscaled) a cut of its top bands, so one curve
  describes both.
- **noise**: Immerkær's estimate of the standard deviation of white noise (a 3x3 operator that cancels planes
  and straight edges; "Fast Noise Variance Estimation", 1996), averaged over the camera's images in RMS.
- **JPEG quality**: the IJG quality that best explains each file's luminance quantisation table, averaged.

An image of camera ``a`` goes to camera ``b`` in the order a camera makes an image: its spectrum is filtered by
the ratio of the two cameras' spectra (a fixed gain per band, ``MAX_GAIN`` at most either way), its Lab
channels are matched to camera ``b``'s tone (``per_image``: the image's own distribution is mapped onto ``b``'s,
as histogram matching does; otherwise camera ``a``'s average curve is, which keeps what sets the image apart
from the others of its camera, and values beyond ``a``'s curve keep their distance to its end), white noise
tops its noise up to ``b``'s level, and it is saved at ``b``'s JPEG quality. ``capture=False`` keeps only the
tone step.

``prepare --method capture`` is camera-to-camera tone curves with the capture steps: on Market-1501 it carried
the cameras best of the variants that keep the person (docs/camstyle_methods.md); matching each image's own
histograms carried more camera but lost too much of the person.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from camstyle.colour import lab_to_rgb, per_camera_means, rgb_to_lab, to_float_rgb
from camstyle.generate import JPEG_QUALITY, GenerationCounts, ImageWriter, missing_outputs
from ecnreid.data.camstyle_names import stargan_name
from ecnreid.data.image_dataset import load_image
from ecnreid.data.records import ImageRecord
from ecnreid.progress import make_progress

QUANTILES = 64  # levels of each tone curve: finer than 8-bit JPEG noise resolves at these image sizes
SPECTRUM_BINS = 12  # radial frequency bands between 0 and 0.5 cycles per pixel
MAX_GAIN = 3.0  # the spectral filter never amplifies or attenuates a band by more than this
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of the grey image the spectrum and noise are measured on
# The IJG (libjpeg) base luminance table at quality 50, in natural (row-major) order, as Pillow reports it.
IJG_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


def quantile_levels(count: int = QUANTILES) -> torch.Tensor:
    """The probabilities (k + 0.5) / count the tone curves are sampled at."""
    return (torch.arange(count, dtype=torch.float32) + 0.5) / count


def tone_curve(lab: torch.Tensor, count: int = QUANTILES) -> torch.Tensor:
    """Quantile function of each channel of ``lab`` (3, H, W) at ``quantile_levels`` → (3, count)."""
    return torch.quantile(lab.flatten(1), quantile_levels(count).to(lab), dim=1).T.contiguous()


def evaluate_curve(curve: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Quantile functions ``curve`` (..., 3, Q) at probabilities ``p`` (..., 3, N), linear between levels and
    flat beyond the first and last → (..., 3, N)."""
    count = curve.shape[-1]
    position = (p * count - 0.5).clamp(0, count - 1)
    low = position.floor().clamp(max=count - 2).long()
    weight = position - low
    return torch.gather(curve, -1, low) * (1 - weight) + torch.gather(curve, -1, low + 1) * weight


def curve_probability(curve: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The inverse of ``evaluate_curve``: where ``values`` (3, N) fall on the quantile functions ``curve``
    (3, Q), as probabilities (linear between levels) → (3, N)."""
    count = curve.shape[-1]
    levels = quantile_levels(count).to(values)
    upper = torch.searchsorted(curve.contiguous(), values.contiguous()).clamp(1, count - 1)
    lo_value, hi_value = torch.gather(curve, 1, upper - 1), torch.gather(curve, 1, upper)
    weight = ((values - lo_value) / (hi_value - lo_value).clamp_min(1e-6)).clamp(0, 1)
    p = levels[upper - 1] + weight / count
    # Beyond the curve's ends: the outer half-levels, so that an own-camera round trip is the identity there.
    p = torch.where(values < curve[:, :1], torch.full_like(p, 0.5 / count), p)
    return torch.where(values > curve[:, -1:], torch.full_like(p, 1 - 0.5 / count), p)


def image_probability(lab: torch.Tensor) -> torch.Tensor:
    """Mid-rank of every pixel within its own channel (ties share one value), in (0, 1): (3, H, W) → (3, H*W)."""
    flat = lab.flatten(1).contiguous()
    ordered = flat.sort(dim=1).values
    below = torch.searchsorted(ordered, flat, right=False)
    up_to = torch.searchsorted(ordered, flat, right=True)
    return (below + up_to).float() / (2 * flat.shape[1])


def grey(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) → (..., H, W) BT.601 luma."""
    return torch.einsum("c,...chw->...hw", torch.tensor(LUMA).to(rgb), rgb)


def _mirror(x: torch.Tensor) -> torch.Tensor:
    """(..., H, W) → (..., 2H, 2W), mirrored at the bottom and right: periodic without edge jumps."""
    x = torch.cat([x, x.flip(-1)], dim=-1)
    return torch.cat([x, x.flip(-2)], dim=-2)


def _band_index(height: int, width: int, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Radial frequency of each rfft2 coefficient of a mirrored (2H, 2W) image, in cycles per pixel, and its
    band (0..bins-1; beyond 0.5 the last band)."""
    fy = torch.fft.fftfreq(2 * height)[:, None]
    fx = torch.fft.rfftfreq(2 * width)[None, :]
    radius = torch.sqrt(fy**2 + fx**2)
    band = (radius / 0.5 * bins).floor().clamp(max=bins - 1).long()
    return radius, band


def spectrum_profile(luma: torch.Tensor, bins: int = SPECTRUM_BINS) -> torch.Tensor:
    """Mean log amplitude of ``luma`` (H, W) in each radial band, relative to the lowest band → (bins,)."""
    height, width = luma.shape
    amplitude = torch.fft.rfft2(_mirror(luma - luma.mean())).abs()
    radius, band = _band_index(height, width, bins)
    keep = radius > 0  # the DC term is the mean, not a frequency
    log_amp = torch.log(amplitude[keep] + 1e-6)
    sums = torch.zeros(bins).index_add_(0, band[keep], log_amp)
    counts = torch.bincount(band[keep], minlength=bins).clamp_min(1)
    profile = sums / counts
    return profile - profile[0]


def filter_spectrum(rgb: torch.Tensor, band_gain: torch.Tensor) -> torch.Tensor:
    """Multiply the spectrum of ``rgb`` (T, 3, H, W) by per-band gains ``band_gain`` (T, bins), linear in radius
    between band centres (gain 1 at frequency 0, so the mean stays) → (T, 3, H, W)."""
    height, width = rgb.shape[-2:]
    bins = band_gain.shape[1]
    radius, _ = _band_index(height, width, bins)
    centres = (torch.arange(bins, dtype=torch.float32) + 0.5) * 0.5 / bins
    position = torch.cat([torch.zeros(1), centres])
    gains = torch.cat([torch.ones(band_gain.shape[0], 1), band_gain], dim=1)
    # Piecewise-linear interpolation of (position, gain) at every coefficient's radius, flat past the last centre.
    r = radius.clamp(max=float(position[-1])).flatten()
    upper = torch.searchsorted(position, r).clamp(1, bins)
    weight = (r - position[upper - 1]) / (position[upper] - position[upper - 1])
    gain_map = gains[:, upper - 1] * (1 - weight) + gains[:, upper] * weight
    spectrum = torch.fft.rfft2(_mirror(rgb)) * gain_map.view(-1, 1, *radius.shape)
    return torch.fft.irfft2(spectrum, s=(2 * height, 2 * width))[..., :height, :width]


_IMMERKAER = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def noise_sigma(luma: torch.Tensor) -> float:
    """Immerkær's white-noise standard deviation of ``luma`` (H, W), in the image's units."""
    height, width = luma.shape
    if height < 3 or width < 3:
        return 0.0
    response = F.conv2d(luma[None, None], _IMMERKAER[None, None]).abs().sum()
    return float(math.sqrt(math.pi / 2) * response / (6 * (width - 2) * (height - 2)))


def jpeg_quality(path: str) -> float:
    """The IJG quality whose scaled luminance table is nearest ``path``'s (least squares in log scale), or the
    writer's ``JPEG_QUALITY`` for a file that is not a JPEG."""
    with Image.open(path) as image:
        tables = getattr(image, "quantization", None)
    if not tables:
        return float(JPEG_QUALITY)
    table = np.asarray(tables[min(tables)], dtype=np.float64)
    base = np.asarray(IJG_LUMINANCE, dtype=np.float64)
    best, best_error = JPEG_QUALITY, math.inf
    for quality in range(1, 101):
        scale = 5000 / quality if quality < 50 else 200 - 2 * quality
        expected = np.clip(np.floor((base * scale + 50) / 100), 1, 255)
        error = float(np.square(np.log(expected) - np.log(np.maximum(table, 1))).sum())
        if error < best_error:
            best, best_error = quality, error
    return float(best)


@dataclass(frozen=True)
class CameraProfiles:
    """Per camera (C of them): ``tone`` (C, 3, Q) Lab quantile functions, ``spectrum`` (C, bins) log amplitude
    by band, ``noise`` (C,) white-noise sigma in 8-bit grey levels, ``jpeg_quality`` (C,), ``counts`` (C,)."""

    tone: torch.Tensor
    spectrum: torch.Tensor
    noise: torch.Tensor
    jpeg_quality: torch.Tensor
    counts: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        return {
            "tone": "CIE L*a*b* (D65) quantile functions, averaged over each camera's images",
            "tone_median_lab": self.tone[:, :, self.tone.shape[2] // 2].tolist(),
            "spectrum_log_amplitude": [[round(v, 4) for v in row] for row in self.spectrum.tolist()],
            "noise_sigma_8bit": [round(v, 3) for v in self.noise.tolist()],
            "jpeg_quality": [round(v, 1) for v in self.jpeg_quality.tolist()],
            "images": self.counts.tolist(),
        }


class _ImageProfile(Dataset):
    """Item ``i``: image ``i``'s tone curve (3*Q), spectrum (bins), noise variance and JPEG quality, flat,
    and its camera."""

    def __init__(self, records: Sequence[ImageRecord]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        record = self.records[index]
        rgb = to_float_rgb(load_image(record.path))
        luma = grey(rgb)
        parts = [
            tone_curve(rgb_to_lab(rgb)).flatten(),
            spectrum_profile(luma),
            torch.tensor([(255 * noise_sigma(luma)) ** 2, jpeg_quality(record.path)]),
        ]
        return torch.cat(parts), record.camid


def camera_profiles(
    records: Sequence[ImageRecord], num_cameras: int, workers: int = 2, progress: bool = True
) -> CameraProfiles:
    """Average each camera's per-image profiles (one decode per image, in workers)."""
    mean, counts = per_camera_means(_ImageProfile(records), num_cameras, "profile", workers, progress)
    tone, spectrum, rest = mean.split([3 * QUANTILES, SPECTRUM_BINS, 2], dim=1)
    return CameraProfiles(
        tone=tone.reshape(num_cameras, 3, QUANTILES).contiguous(),
        spectrum=spectrum.contiguous(),
        noise=rest[:, 0].sqrt(),
        jpeg_quality=rest[:, 1].contiguous(),
        counts=counts,
    )


def render(
    rgb: torch.Tensor,
    own: int,
    targets: torch.Tensor,
    profiles: CameraProfiles,
    noise: torch.Tensor | None,
    per_image: bool = False,
    capture: bool = True,
) -> torch.Tensor:
    """Image ``rgb`` (3, H, W) in [0, 1] of camera ``own`` in each camera of ``targets`` (T,) → (T, 3, H, W) in
    [0, 1]. ``noise`` (T, 3, H, W): standard normal draws for the noise step (unused without ``capture``)."""
    count = len(targets)
    images = rgb.unsqueeze(0).expand(count, -1, -1, -1)
    if capture:
        log_gain = profiles.spectrum[targets] - profiles.spectrum[own]
        gain = log_gain.exp().clamp(1 / MAX_GAIN, MAX_GAIN)
        images = filter_spectrum(images, gain)
    lab = rgb_to_lab(images.clamp(0, 1))
    if per_image:
        p = torch.stack([image_probability(one) for one in lab])
        matched = evaluate_curve(profiles.tone[targets], p).view_as(lab)
    else:
        own_curve = profiles.tone[own]
        flat = lab.flatten(2)
        p = torch.stack([curve_probability(own_curve, one) for one in flat])
        # Beyond the own curve's ends the excess carries over, so that the rarest colours are not clipped.
        excess = flat - torch.maximum(torch.minimum(flat, own_curve[:, -1:]), own_curve[:, :1])
        matched = (evaluate_curve(profiles.tone[targets], p) + excess).view_as(lab)
    out = lab_to_rgb(matched)
    if capture and noise is not None:
        # Independent noise per channel, scaled so that its luma has the missing sigma.
        missing = (profiles.noise[targets] ** 2 - profiles.noise[own] ** 2).clamp_min(0).sqrt() / 255.0
        luma_share = math.sqrt(sum(w * w for w in LUMA))
        out = out + noise * (missing / luma_share).view(-1, 1, 1, 1)
    return out.clamp(0.0, 1.0)


def noise_draws(seed: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal draws for image ``index`` under ``seed``: the same for a rerun, whatever the order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randn(shape, generator=generator)


class _MatchTransfer(Dataset):
    """Item ``k``: (uint8 (T, H, W, 3) renderings of one image in its T pending cameras, record index, cameras)."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        todo: torch.Tensor,
        indices: Sequence[int],
        profiles: CameraProfiles,
        seed: int,
        per_image: bool,
        capture: bool,
    ) -> None:
        self.records, self.todo, self.indices, self.profiles = records, todo, list(indices), profiles
        self.seed, self.per_image, self.capture = seed, per_image, capture

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        index = self.indices[k]
        record = self.records[index]
        cameras = self.todo[index].nonzero().flatten()
        rgb = to_float_rgb(load_image(record.path))
        # Draws for every camera, then the pending ones: a resumed run gives each file the noise a full run would.
        noise = noise_draws(self.seed, index, (self.todo.shape[1], *rgb.shape))[cameras]
        out = render(rgb, record.camid, cameras, self.profiles, noise, self.per_image, self.capture)
        pixels = (out * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return pixels, index, cameras


def generate_matched_camstyle(
    records: Sequence[ImageRecord],
    num_cameras: int,
    out_dir: str | os.PathLike,
    profiles: CameraProfiles | None = None,
    seed: int = 0,
    per_image: bool = False,
    capture: bool = True,
    only: Sequence[int] | None = None,
    workers: int = 2,
    writer_threads: int = 4,
    progress: bool = True,
) -> tuple[GenerationCounts, CameraProfiles]:
    """Write the StarGAN-named CamStyle set made by camera matching; skip files that exist. ``only``: the record
    indices to render (default all), e.g. the sample a fidelity score reads."""
    out_dir = Path(out_dir)
    if profiles is None:
        profiles = camera_profiles(records, num_cameras, workers=workers, progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo, skipped = missing_outputs(records, num_cameras, out_dir)
    if only is not None:
        chosen = torch.zeros(len(records), dtype=torch.bool)
        chosen[list(only)] = True
        todo &= chosen[:, None]
    total = int(todo.sum())
    pending = todo.any(dim=1).nonzero().flatten().tolist()
    stems = [Path(r.path).stem for r in records]
    dataset = _MatchTransfer(records, todo, pending, profiles, seed, per_image, capture)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    qualities = [round(q) for q in profiles.jpeg_quality.tolist()] if capture else None
    written = 0
    with make_progress() as bar, ImageWriter(threads=writer_threads) as writer:
        task = bar.add_task("matched CamStyle", total=total, unit="img", info="", visible=progress)
        for pixels, index, cameras in loader:
            for rendering, camera in zip(pixels.numpy(), cameras.tolist(), strict=True):
                quality = qualities[camera] if qualities is not None else None
                writer.submit(rendering, out_dir / stargan_name(stems[index], camera), quality=quality)
            written += len(cameras)
            bar.update(task, advance=len(cameras))
    return GenerationCounts(written=written, skipped=skipped), profiles
