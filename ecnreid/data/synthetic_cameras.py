"""Cameras of the synthetic dataset (``ecnreid.data.synthetic``): each camera's style, its scene, and how it
renders an image.

A style is a scene background, a colour cast (white-balance gains pointing in the camera's own direction of
the colour wheel), saturation, a small hue shift, exposure, contrast, gamma, a vertical shade, blur, sensor
noise, a typical viewpoint mix and framing, drawn within the bounds of the domain's ``CameraStyleSpec``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from ecnreid.config import CameraStyleSpec
from ecnreid.data.synthetic_people import rgb

SOURCE_BACKGROUNDS = ("solid", "gradient", "floor")
TARGET_BACKGROUNDS = ("bricks", "tiles", "stripes", "foliage")


# --- camera styles and backgrounds --------------------------------------------------------------------


def _hue_rotation(degrees: float) -> np.ndarray:
    """3×3 RGB matrix rotating colours about the grey axis (greys stay grey)."""
    angle = math.radians(degrees)
    axis = np.full(3, 1.0 / math.sqrt(3.0))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return math.cos(angle) * np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * np.outer(axis, axis)


def _saturation(factor: float) -> np.ndarray:
    """3×3 RGB matrix scaling saturation about the luma of each pixel (0 = grey, 1 = unchanged)."""
    luma = np.array([0.299, 0.587, 0.114])
    return factor * np.eye(3) + (1.0 - factor) * np.outer(np.ones(3), luma)


def make_camera(rng: np.random.Generator, index: int, count: int, style: CameraStyleSpec, cast_offset: float) -> dict:
    """Camera ``index`` of a domain with ``count`` cameras, drawn within the bounds of the domain's ``style``.

    The cast of camera ``index`` points in its own direction of the colour wheel, spread evenly over the
    domain's cameras (from ``cast_offset``, a fraction of the wheel), so that every camera's cast is distinct.
    """
    strength, textured = style.strength, style.textured
    direction = 2.0 * math.pi * (index / count + cast_offset + rng.uniform(-0.05, 0.05))
    channel_angles = np.array([0.0, 2.0 * math.pi / 3.0, 4.0 * math.pi / 3.0])  # R, G, B on the wheel
    gains = 1.0 + style.cast * np.cos(direction - channel_angles)
    gains = gains / gains.max()
    kinds = TARGET_BACKGROUNDS if textured else SOURCE_BACKGROUNDS
    if textured:  # a low-contrast texture in a tinted colour (walls, paving, hedges)
        hue_bg, sat, val = rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.75)
        colours = [rgb(hue_bg, sat, val), rgb(hue_bg + rng.uniform(-0.05, 0.05), sat, val * rng.uniform(0.8, 0.9))]
    else:
        base_hue = rng.uniform(0.05, 0.6)
        colours = [rgb(base_hue, rng.uniform(0.0, 0.15), rng.uniform(0.45, 0.8)) for _ in range(2)]
    return {
        "hue": float(rng.uniform(-10.0, 10.0) * strength),
        "gains": gains.tolist(),
        "saturation": float(math.exp(rng.uniform(-0.5, 0.35) * strength)),
        "exposure": float(rng.uniform(1.0 - 0.4 * strength, 1.0 + 0.2 * strength)),
        "contrast": float(rng.uniform(1.0 - 0.35 * strength, 1.0 + 0.25 * strength)),
        "gamma": float(math.exp(rng.uniform(-0.35, 0.35) * strength)),
        "shade": float(rng.uniform(-0.4, 0.4) * strength),
        "blur": float(rng.uniform(0.0, 1.0) * strength),
        "noise": float(0.01 + rng.uniform(0.0, 0.05) * strength),
        "background": {
            "kind": kinds[rng.integers(len(kinds))] if not textured else kinds[index % len(kinds)],
            "colours": colours,
            "scale": int(rng.integers(4, 12)),
        },
        "view_weights": rng.dirichlet(np.full(4, 2.0)).tolist(),  # cameras see people from typical angles
        "framing": float(rng.uniform(0.93, 1.04)),
    }


def make_scene(style: dict, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (height, 2·width, 3) float scene for one camera; images crop it at random offsets."""
    kind, scale = style["kind"], style["scale"]
    a, b = (np.asarray(c, dtype=np.float32) / 255.0 for c in style["colours"])
    wide = 2 * width
    ys, xs = np.mgrid[0:height, 0:wide].astype(np.float32)
    if kind == "solid":
        mix = np.zeros((height, wide), np.float32)
    elif kind == "gradient":
        mix = ys / (height - 1)
    elif kind == "floor":
        horizon = rng.uniform(0.55, 0.8) * height
        mix = (ys > horizon).astype(np.float32) * (0.6 + 0.4 * (ys - horizon) / height)
    elif kind == "bricks":
        row = (ys // scale).astype(int)
        offset = (row % 2) * scale
        mortar = ((ys % scale) < 1) | (((xs + offset) % (2 * scale)) < 1)
        mix = mortar.astype(np.float32)
    elif kind == "tiles":
        mix = (((ys // scale) + (xs // scale)) % 2).astype(np.float32)
    elif kind == "stripes":
        mix = ((xs // scale) % 2).astype(np.float32)
    elif kind == "foliage":
        coarse = rng.random((height // scale + 2, wide // scale + 2)).astype(np.float32)
        blob = Image.fromarray((coarse * 255).astype(np.uint8)).resize((wide, height), Image.Resampling.BICUBIC)
        mix = np.asarray(blob, np.float32) / 255.0
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    scene = a[None, None, :] * (1.0 - mix[..., None]) + b[None, None, :] * mix[..., None]
    scene += rng.normal(0.0, 0.02, size=scene.shape).astype(np.float32)  # surface texture
    return np.clip(scene, 0.0, 1.0)


def apply_camera(image: np.ndarray, camera: dict, rng: np.random.Generator) -> Image.Image:
    """Camera rendering of a float (H, W, 3) image in [0, 1]: colour, exposure, shade, gamma, blur, noise."""
    matrix = np.diag(camera["gains"]) @ _saturation(camera["saturation"]) @ _hue_rotation(camera["hue"])
    out = image @ matrix.T.astype(np.float32)
    out = (out - 0.5) * np.float32(camera["contrast"]) + 0.5
    ramp = np.linspace(-0.5, 0.5, image.shape[0], dtype=np.float32)[:, None, None]
    gain = np.float32(camera["exposure"] * rng.uniform(0.95, 1.05))  # per-image exposure flicker
    out = out * gain * (1.0 + np.float32(camera["shade"]) * ramp)
    out = np.clip(out, 0.0, 1.0) ** np.float32(camera["gamma"])
    pil = Image.fromarray((out * 255.0 + 0.5).astype(np.uint8))
    if camera["blur"] > 0.05:
        pil = pil.filter(ImageFilter.GaussianBlur(camera["blur"]))
    noise = rng.standard_normal(size=out.shape, dtype=np.float32) * np.float32(camera["noise"] * 255.0)
    noisy = np.asarray(pil, np.float32) + noise
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))
