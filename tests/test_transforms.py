"""Training/test transforms: shapes, determinism under torch's seed, crop ranges and the erasing fill."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from ecnreid.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomErasing,
    RandomSizedRectCrop,
    build_test_transform,
    build_train_transform,
)


def _person_image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(128, 64, 3), dtype=np.uint8))


def test_train_transform_shape_and_determinism() -> None:
    image = _person_image()
    transform = build_train_transform(64, 32)
    torch.manual_seed(3)
    random.seed(1)
    first = transform(image)
    torch.manual_seed(3)
    random.seed(2)  # Python's RNG must not matter
    second = transform(image)
    assert first.shape == (3, 64, 32) and first.dtype == torch.float32
    assert torch.equal(first, second)
    outputs = {transform(image).sum().item() for _ in range(5)}
    assert len(outputs) > 1  # it is random at all


def test_test_transform_is_a_normalised_bicubic_resize() -> None:
    grey = Image.new("RGB", (64, 128), (51, 102, 204))
    out = build_test_transform(256, 128)(grey)
    assert out.shape == (3, 256, 128)
    expected = (torch.tensor([51, 102, 204]) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    # A constant image stays constant under resizing, so every pixel is the normalised colour.
    assert torch.allclose(out, expected[:, None, None].expand_as(out), atol=1e-5)
    image = _person_image()
    assert torch.equal(build_test_transform(64, 32)(image), build_test_transform(64, 32)(image))


def test_crop_area_and_aspect_ranges() -> None:
    crop = RandomSizedRectCrop(256, 128)
    image = torch.zeros(3, 1000, 300)
    torch.manual_seed(0)
    fitted = 0
    for _ in range(300):
        top, left, h, w = crop.params(image)
        assert 0 <= top <= 1000 - h and 0 <= left <= 300 - w
        if (h, w) == (1000, 300):
            continue  # the plain-resize fallback
        fitted += 1
        # Rounding h and w to integers moves the ratios by at most about one pixel's worth.
        assert 2.0 - 0.02 <= h / w <= 3.0 + 0.02
        assert 0.64 - 0.01 <= h * w / (1000 * 300) <= 1.0
    assert fitted > 250


def test_crop_falls_back_to_a_resize_when_nothing_fits() -> None:
    # A 10-high, 100-wide image has no rectangle with h/w >= 2 covering 64% of it.
    wide = Image.new("RGB", (100, 10), (1, 2, 3))
    crop = RandomSizedRectCrop(32, 16)
    assert crop.params(wide) == (0, 0, 10, 100)
    out = crop(wide)
    assert out.size == (16, 32)
    assert np.array_equal(np.asarray(out), np.full((32, 16, 3), (1, 2, 3), dtype=np.uint8))


def test_crop_output_size_on_pil_and_tensor() -> None:
    crop = RandomSizedRectCrop(256, 128)
    assert crop(_person_image()).size == (128, 256)
    assert crop(torch.rand(3, 128, 64)).shape == (3, 256, 128)


def test_erasing_fills_with_the_imagenet_mean_in_pixel_terms() -> None:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    pixels = torch.ones(3, 64, 32)  # white, before normalisation
    normalised = (pixels - mean) / std
    erase = RandomErasing(p=1.0)
    torch.manual_seed(0)
    for _ in range(20):
        out = erase(normalised)
        assert torch.equal(normalised, (pixels - mean) / std)  # the input is not modified
        unnormalised = out * std + mean
        erased = (unnormalised - mean).abs().amax(dim=0) < 1e-6  # pixels equal to the mean colour
        assert torch.allclose(out[:, erased], torch.zeros(1))  # i.e. exactly 0 once normalised
        rows, cols = erased.any(dim=1).nonzero(), erased.any(dim=0).nonzero()
        h, w = len(rows), len(cols)
        assert erased.sum() == h * w  # one rectangle
        assert 0.02 - 0.01 <= h * w / (64 * 32) <= 0.2 + 0.01
        assert torch.equal(out[:, ~erased], normalised[:, ~erased])


def test_erasing_custom_fill_and_probability() -> None:
    image = torch.zeros(3, 40, 20)
    erase = RandomErasing(p=1.0, fill=(1.0, 1.0, 1.0))
    out = erase(image)
    expected = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    changed = out.ne(0).any(dim=0)
    assert changed.any()
    assert torch.allclose(out[:, changed], expected[:, None].expand(3, int(changed.sum())))
    never = RandomErasing(p=0.0)
    assert all(never(image) is image for _ in range(10))


def test_erasing_rate_is_p() -> None:
    p = 0.5
    erase = RandomErasing(p=p)
    image = torch.ones(3, 64, 32)
    torch.manual_seed(1)
    hits = sum(erase.params(image) is not None for _ in range(2000))
    assert abs(hits / 2000 - p) < 0.05
