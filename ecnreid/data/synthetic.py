"""The built-in synthetic dataset: procedurally drawn people in two domains that differ in camera style.

Each domain is a small re-ID dataset in the standard layout (``bounding_box_train/``, ``query/``,
``bounding_box_test/``, files ``{pid:04d}_c{cam}_{n:05d}.jpg`` with 1-based cameras, 128×64 JPEG).
Identities are disjoint between the domains and between train and test. What a domain holds is a
:class:`~ecnreid.config.DomainSpec`: its people's fashion, its cameras' style, its layout.

- A person is drawn with Pillow from identity attributes (clothing colours, torso pattern, sleeves,
  trousers/shorts/skirt, hair, hat, bag, build) and per-image pose (offset, scale, walking phase,
  viewpoint: front/back/left/right, which changes what is visible, e.g. a chest logo or a backpack).
- Every camera has a style: a scene background, a colour cast (white-balance gains pointing in the
  camera's own direction of the colour wheel), saturation, a small hue shift, exposure, contrast, gamma,
  a vertical shade, blur, sensor noise, a typical viewpoint mix and framing.
- In the default pair (``DEFAULT_SOURCE``, ``DEFAULT_TARGET``) the source's cameras are mild variations of
  neutral styles on plain backgrounds; the target's cameras have strong, distinct colour casts, lighting, blur
  and noise, and textured backgrounds. Appearance identifies a person within a camera; matching across target
  cameras needs camera invariance, which a model trained on the source alone does not learn. That is the gap
  ECN is meant to close. Measured with a small CNN trained on the source ids (``tests/test_synthetic.py``,
  seeds 0 and 1): source rank-1 ≈ 95%, target rank-1 ≈ 0% (the nearest neighbour is nearly always a
  same-camera stranger), and ≈ 50% once each target camera's colour statistics are normalised: identity
  survives the style.

Output is byte-identical for the same specs and seed (NumPy ``Generator`` streams keyed by seed, domain and
item; Pillow drawing and JPEG encoding are deterministic for a given Pillow build).
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ecnreid.config import (
    DEFAULT_SOURCE,
    DEFAULT_TARGET,
    CameraStyleSpec,
    DomainSpec,
    LayoutSpec,
)
from ecnreid.errors import EcnreidError
from ecnreid.io import write_json

FORMAT_VERSION = 2  # 2: ``params`` holds the seed and each domain's spec
SPLITS = ("bounding_box_train", "query", "bounding_box_test")
FILE_NAME = re.compile(r"^\d{4}_c\d+_\d{5,}\.jpg$")
CAMSTYLE_PREFIX = "bounding_box_train_camstyle"  # derived from the target by `prepare`; stale once regenerated
HEIGHT, WIDTH = 128, 64  # output images
JPEG_QUALITY = 92
SUPERSAMPLE = 2  # people are drawn at 2× and box-filtered down, for anti-aliased edges
FIRST_PIDS = {"source": 1, "target": 5001}  # both written with 4 digits

PATTERNS = ("plain", "stripes", "checks", "logo")
BOTTOMS = ("trousers", "trousers", "shorts", "skirt")
BAGS = ("none", "none", "backpack", "shoulder")
VIEWS = ("front", "back", "left", "right")
SOURCE_BACKGROUNDS = ("solid", "gradient", "floor")
TARGET_BACKGROUNDS = ("bricks", "tiles", "stripes", "foliage")


# --- colours and random helpers -----------------------------------------------------------------------


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _clothing_colour(rng: np.random.Generator, achromatic: float) -> tuple[int, int, int]:
    """Real clothes are often black, white or grey (with probability ``achromatic``); otherwise any hue."""
    if rng.random() < achromatic:
        return _rgb(0.0, 0.0, float(rng.choice([0.12, 0.3, 0.55, 0.85])) + rng.uniform(-0.05, 0.05))
    return _rgb(rng.random(), rng.uniform(0.35, 0.95), rng.uniform(0.35, 0.95))


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(min(255, round(c * factor)) for c in colour)  # type: ignore[return-value]


def _round(value: Any) -> Any:
    """JSON-friendly copy with floats rounded (keeps synthetic.json readable and comparable)."""
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_round(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), 5)
    if isinstance(value, np.integer):
        return int(value)
    return value


# --- identities ---------------------------------------------------------------------------------------


def _make_identity(rng: np.random.Generator, achromatic: float) -> dict[str, Any]:
    """Appearance attributes that stay fixed for one person across all images and cameras; ``achromatic``
    is the share of black, white and grey garments (the domain's fashion)."""
    skin = _rgb(rng.uniform(0.03, 0.09), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    hair = _rgb(rng.uniform(0.0, 0.12), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.6))
    if rng.random() < 0.12:  # dyed or grey hair, whatever the fashion
        hair = _clothing_colour(rng, 0.3)
    return {
        "top": _clothing_colour(rng, achromatic),
        "bottom": _clothing_colour(rng, achromatic),
        "pattern": PATTERNS[rng.integers(len(PATTERNS))],
        "pattern_colour": _clothing_colour(rng, achromatic),
        "pattern_period": int(rng.integers(3, 7)),  # in output pixels
        "logo_shape": int(rng.integers(3)),  # 0 disc, 1 square, 2 triangle
        "long_sleeves": bool(rng.random() < 0.55),
        "bottom_kind": BOTTOMS[rng.integers(len(BOTTOMS))],
        "skin": skin,
        "hair": hair,
        "long_hair": bool(rng.random() < 0.35),
        "hat": _clothing_colour(rng, achromatic) if rng.random() < 0.15 else None,
        "bag": BAGS[rng.integers(len(BAGS))],
        "bag_colour": _clothing_colour(rng, achromatic),
        "shoes": _rgb(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.1, 0.9)),
        "build_w": float(rng.uniform(0.85, 1.2)),
        "build_h": float(rng.uniform(0.9, 1.05)),
    }


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


def _make_camera(rng: np.random.Generator, index: int, count: int, style: CameraStyleSpec, cast_offset: float) -> dict:
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
        colours = [_rgb(hue_bg, sat, val), _rgb(hue_bg + rng.uniform(-0.05, 0.05), sat, val * rng.uniform(0.8, 0.9))]
    else:
        base_hue = rng.uniform(0.05, 0.6)
        colours = [_rgb(base_hue, rng.uniform(0.0, 0.15), rng.uniform(0.45, 0.8)) for _ in range(2)]
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


def _background(style: dict, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
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


def _apply_camera(image: np.ndarray, camera: dict, rng: np.random.Generator) -> Image.Image:
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


# --- drawing a person ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Body:
    """Where one person's parts go on the supersampled canvas, in canvas pixels, for one view and pose."""

    view: str
    s: float  # canvas pixels per pixel of a 128-high output image
    ph: float  # person height, head top to soles
    cx: float  # the body's vertical axis
    side: bool  # seen from the left or the right
    facing: float  # +1 facing right, -1 facing left (side views)
    swing: float  # walking phase, as a limb angle
    head_r: float
    head_cy: float
    shoulder_y: float
    hip_y: float
    torso_w: float
    hip_w: float
    leg_w: float
    arm_w: float
    leg_len: float  # hip to ankle


def _place_body(size: tuple[int, int], who: dict, rng: np.random.Generator, view: str, framing: float) -> _Body:
    """The body of ``who`` on a canvas of ``size`` (width, height): per-image scale, offset and walking phase."""
    width, height = size
    s = height / 128.0
    scale = framing * who["build_h"] * rng.uniform(0.92, 1.04)
    ph = 108.0 * s * scale
    cx = width / 2.0 + rng.uniform(-4.0, 4.0) * s
    feet = height - (5.0 + rng.uniform(-3.0, 3.0)) * s
    top = feet - ph
    side = view in ("left", "right")
    phase = rng.uniform(0.0, 2.0 * math.pi)
    head_r = 0.068 * ph
    hip_y = top + 0.5 * ph
    leg_w = 0.075 * ph * who["build_w"]
    return _Body(
        view=view,
        s=s,
        ph=ph,
        cx=cx,
        side=side,
        facing=1.0 if view == "right" else -1.0,
        swing=math.sin(phase) * (0.45 if side else 0.12),
        head_r=head_r,
        head_cy=top + head_r,
        shoulder_y=top + 0.17 * ph,
        hip_y=hip_y,
        torso_w=0.22 * ph * who["build_w"] * (0.62 if side else 1.0),
        hip_w=0.18 * ph * who["build_w"] * (0.6 if side else 1.0),
        leg_w=leg_w,
        arm_w=0.058 * ph * who["build_w"],
        leg_len=feet - hip_y - leg_w / 2,
    )


def _limb(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour, width: float) -> None:
    draw.line(points, fill=colour, width=max(1, round(width)), joint="curve")
    r = width / 2.0
    for x, y in (points[0], points[-1]):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def _leg_points(b: _Body, sign: float) -> list[tuple[float, float]]:
    """Hip, knee, ankle of one leg; side views swing along x, front/back views mostly in place."""
    hip_x = b.cx + (0.0 if b.side else sign * b.hip_w * 0.28)
    angle = sign * b.swing
    knee = (hip_x + math.sin(angle) * b.leg_len * 0.5 * (b.facing if b.side else 0.4), b.hip_y + b.leg_len * 0.5)
    bend = 0.1 * max(0.0, -angle) if b.side else 0.0
    ankle = (knee[0] + math.sin(angle - bend) * b.leg_len * 0.5 * (b.facing if b.side else 0.4), b.hip_y + b.leg_len)
    return [(hip_x, b.hip_y), knee, ankle]


def _arm_points(b: _Body, sign: float) -> list[tuple[float, float]]:
    """Shoulder, elbow, hand of one arm, swinging against the legs."""
    shoulder = (b.cx + (0.0 if b.side else sign * (b.torso_w / 2 + b.arm_w * 0.2)), b.shoulder_y + b.arm_w * 0.4)
    angle = -sign * b.swing * 1.1
    length = 0.34 * b.ph
    reach = length * 0.5 * (b.facing if b.side else 0.3)
    elbow = (shoulder[0] + math.sin(angle) * reach + (0.0 if b.side else sign * b.s), shoulder[1] + length * 0.5)
    hand = (elbow[0] + math.sin(angle * 1.3) * reach, shoulder[1] + length * 0.97)
    return [shoulder, elbow, hand]


def _draw_leg(draw: ImageDraw.ImageDraw, b: _Body, who: dict, sign: float, dim: float) -> None:
    """One leg in trousers, or bare under shorts or a skirt, and its shoe; ``dim`` darkens the far leg."""
    hip, knee, ankle = _leg_points(b, sign)
    skin, bottom = _shade(who["skin"], dim), _shade(who["bottom"], dim)
    kind = who["bottom_kind"]
    if kind == "trousers":
        _limb(draw, [hip, knee, ankle], bottom, b.leg_w)
    else:
        _limb(draw, [hip, knee, ankle], skin, b.leg_w * 0.85)
        if kind == "shorts":
            mid = (hip[0] + (knee[0] - hip[0]) * 0.8, hip[1] + (knee[1] - hip[1]) * 0.8)
            _limb(draw, [hip, mid], bottom, b.leg_w * 1.05)
    shoe_w = b.leg_w * (1.5 if b.side else 1.1)
    shoe_dx = b.facing * b.leg_w * 0.3 if b.side else 0.0
    draw.ellipse(
        [
            ankle[0] - shoe_w / 2 + shoe_dx,
            ankle[1] - b.leg_w * 0.35,
            ankle[0] + shoe_w / 2 + shoe_dx,
            ankle[1] + b.leg_w * 0.45,
        ],
        fill=_shade(who["shoes"], dim),
    )


def _draw_arm(draw: ImageDraw.ImageDraw, b: _Body, who: dict, sign: float, dim: float) -> None:
    """One arm in a long or short sleeve, and its hand; ``dim`` darkens the far arm."""
    shoulder, elbow, hand = _arm_points(b, sign)
    skin, top_c = _shade(who["skin"], dim), _shade(who["top"], dim)
    if who["long_sleeves"]:
        _limb(draw, [shoulder, elbow, hand], top_c, b.arm_w)
    else:
        _limb(draw, [shoulder, elbow, hand], skin, b.arm_w * 0.85)
        _limb(draw, [shoulder, elbow], top_c, b.arm_w)
    r = b.arm_w * 0.55
    draw.ellipse([hand[0] - r, hand[1] - r, hand[0] + r, hand[1] + r], fill=skin)


def _draw_torso(canvas: Image.Image, draw: ImageDraw.ImageDraw, b: _Body, who: dict) -> None:
    """Waist (and skirt) in the bottom colour, shoulders and torso in the top colour, then its pattern."""
    ph, cx, hip_w, torso_w = b.ph, b.cx, b.hip_w, b.torso_w
    polygon = [
        (cx - torso_w / 2, b.shoulder_y),
        (cx + torso_w / 2, b.shoulder_y),
        (cx + hip_w / 2 + 0.01 * ph, b.hip_y + 0.03 * ph),
        (cx - hip_w / 2 - 0.01 * ph, b.hip_y + 0.03 * ph),
    ]
    # Pelvis/waist in the bottom colour, so legs join the body.
    draw.rectangle([cx - hip_w / 2, b.hip_y - 0.02 * ph, cx + hip_w / 2, b.hip_y + 0.06 * ph], fill=who["bottom"])
    if who["bottom_kind"] == "skirt":
        flare = 0.05 * ph
        draw.polygon(
            [
                (cx - hip_w / 2, b.hip_y - 0.02 * ph),
                (cx + hip_w / 2, b.hip_y - 0.02 * ph),
                (cx + hip_w / 2 + flare, b.hip_y + 0.2 * ph),
                (cx - hip_w / 2 - flare, b.hip_y + 0.2 * ph),
            ],
            fill=who["bottom"],
        )
    draw.rounded_rectangle(
        [cx - torso_w / 2, b.shoulder_y - 0.012 * ph, cx + torso_w / 2, b.shoulder_y + 0.05 * ph],
        radius=0.03 * ph,
        fill=who["top"],
    )
    draw.polygon(polygon, fill=who["top"])
    if who["pattern"] in ("stripes", "checks"):
        _draw_stripes(canvas, b, who, polygon)
    elif who["pattern"] == "logo" and b.view == "front":
        _draw_logo(draw, b, who)


def _draw_stripes(canvas: Image.Image, b: _Body, who: dict, torso: list[tuple[float, float]]) -> None:
    """Horizontal stripes (and vertical ones too, for checks) clipped to the ``torso`` polygon."""
    width, height = canvas.size
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).polygon(torso, fill=255)
    layer = Image.new("L", canvas.size, 0)
    layer_draw = ImageDraw.Draw(layer)
    period = who["pattern_period"] * b.s
    y = b.shoulder_y
    while y < b.hip_y + 0.03 * b.ph:
        layer_draw.rectangle([0, y, width, y + period / 2], fill=255)
        y += period
    if who["pattern"] == "checks":
        x = b.cx - b.torso_w
        while x < b.cx + b.torso_w:
            layer_draw.rectangle([x, 0, x + period / 2, height], fill=255)
            x += period
    mask = Image.fromarray(np.minimum(np.asarray(mask), np.asarray(layer)))
    canvas.paste(who["pattern_colour"], mask=mask)


def _draw_logo(draw: ImageDraw.ImageDraw, b: _Body, who: dict) -> None:
    """A chest logo (disc, square or triangle), seen from the front only."""
    cx, r = b.cx, 0.055 * b.ph
    ly = b.shoulder_y + 0.12 * b.ph
    box = [cx - r, ly - r, cx + r, ly + r]
    shape = who["logo_shape"]
    if shape == 0:
        draw.ellipse(box, fill=who["pattern_colour"])
    elif shape == 1:
        draw.rectangle(box, fill=who["pattern_colour"])
    else:
        draw.polygon([(cx, ly - r), (cx + r, ly + r), (cx - r, ly + r)], fill=who["pattern_colour"])


def _draw_backpack(draw: ImageDraw.ImageDraw, b: _Body, who: dict, full: bool) -> None:
    """A backpack: a block behind the back (side views), the whole pack (``full``, from behind) or its straps."""
    colour, ph, cx = who["bag_colour"], b.ph, b.cx
    if b.side:  # a block sticking out behind the back
        x0 = cx - b.facing * b.torso_w / 2
        x1 = x0 - b.facing * 0.09 * ph
        draw.rectangle([min(x0, x1), b.shoulder_y + 0.02 * ph, max(x0, x1) + 1, b.hip_y - 0.06 * ph], fill=colour)
    elif full:
        draw.rounded_rectangle(
            [cx - b.torso_w * 0.36, b.shoulder_y + 0.03 * ph, cx + b.torso_w * 0.36, b.hip_y - 0.04 * ph],
            radius=0.02 * ph,
            fill=colour,
        )
    else:  # straps seen from the front
        for sign in (-1.0, 1.0):
            x = cx + sign * b.torso_w * 0.3
            draw.line([(x, b.shoulder_y), (x, b.shoulder_y + 0.2 * ph)], fill=colour, width=max(1, round(0.022 * ph)))


def _draw_shoulder_bag(draw: ImageDraw.ImageDraw, b: _Body, who: dict) -> None:
    """A bag at the hip; its strap crosses the chest in front and back views."""
    colour, ph, cx = who["bag_colour"], b.ph, b.cx
    bag_x = cx + (-b.facing if b.side else 1.0) * (b.hip_w * 0.5 + 0.02 * ph)
    strap_w = max(1, round(0.015 * ph))
    if not b.side:
        draw.line([(cx - b.torso_w * 0.4, b.shoulder_y), (bag_x, b.hip_y - 0.03 * ph)], fill=colour, width=strap_w)
    w, h = 0.11 * ph, 0.1 * ph
    draw.rectangle([bag_x - w / 2, b.hip_y - 0.04 * ph, bag_x + w / 2, b.hip_y - 0.04 * ph + h], fill=colour)


def _draw_head(draw: ImageDraw.ImageDraw, b: _Body, who: dict) -> None:
    """Neck, head, hair as seen from the view, and the hat if any."""
    hair, cx, head_r, head_cy = who["hair"], b.cx, b.head_r, b.head_cy
    box = [cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r]
    neck_w = head_r * 0.8
    draw.rectangle([cx - neck_w / 2, head_cy, cx + neck_w / 2, b.shoulder_y + 0.01 * b.ph], fill=who["skin"])
    if who["long_hair"] and b.view != "back":  # hair falling behind the shoulders
        draw.rectangle([cx - head_r * 1.05, head_cy, cx + head_r * 1.05, head_cy + head_r * 2.1], fill=hair)
    if b.view == "back":
        draw.ellipse(box, fill=hair)
        if who["long_hair"]:
            draw.rectangle([cx - head_r, head_cy, cx + head_r, head_cy + head_r * 2.2], fill=hair)
    else:
        draw.ellipse(box, fill=who["skin"])
        if b.side:  # hair covers the back half of the head
            draw.pieslice(box, 90 if b.facing > 0 else -90, 270 if b.facing > 0 else 90, fill=hair)
        draw.chord([box[0], box[1] - head_r * 0.1, box[2], box[3] - head_r * 0.5], 180, 360, fill=hair)
    if who["hat"] is not None:
        draw.chord(
            [box[0] - head_r * 0.1, box[1] - head_r * 0.25, box[2] + head_r * 0.1, box[3] - head_r * 0.6],
            180,
            360,
            fill=who["hat"],
        )
        brim = head_r * (1.6 if b.side else 1.2)
        bx = cx + (b.facing * head_r * 0.5 if b.side else 0.0)
        draw.rectangle([bx - brim, head_cy - head_r * 0.3, bx + brim, head_cy - head_r * 0.15], fill=who["hat"])


def _draw_person(canvas: Image.Image, who: dict, rng: np.random.Generator, view: str, framing: float) -> None:
    """Draw one person on ``canvas`` (RGB, supersampled) in place, back to front."""
    draw = ImageDraw.Draw(canvas)
    b = _place_body(canvas.size, who, rng, view, framing)
    bag = who["bag"]
    if b.side:
        _draw_arm(draw, b, who, -b.facing, 0.75)  # the far limbs are darker
        _draw_leg(draw, b, who, -1.0, 0.75)
        if bag == "backpack":
            _draw_backpack(draw, b, who, True)
        _draw_torso(canvas, draw, b, who)
        _draw_leg(draw, b, who, 1.0, 1.0)
        if bag == "shoulder":
            _draw_shoulder_bag(draw, b, who)
        _draw_arm(draw, b, who, b.facing, 1.0)
    else:
        _draw_leg(draw, b, who, -1.0, 1.0)
        _draw_leg(draw, b, who, 1.0, 1.0)
        _draw_torso(canvas, draw, b, who)
        if bag == "backpack":
            _draw_backpack(draw, b, who, view == "back")
        if bag == "shoulder":
            _draw_shoulder_bag(draw, b, who)
        _draw_arm(draw, b, who, -1.0, 1.0)
        _draw_arm(draw, b, who, 1.0, 1.0)
    _draw_head(draw, b, who)


def render_image(
    who: dict,
    camera: dict,
    scene: np.ndarray,
    rng: np.random.Generator,
    pose_rng: np.random.Generator | None = None,
) -> Image.Image:
    """One 8-bit RGB image of person ``who`` seen by ``camera`` over ``scene`` (from ``_background``: the image
    is as high as the scene and half as wide).

    ``pose_rng`` (default: ``rng``) draws the view and pose; images given generators in the same state show
    the person in the same pose, as the frames of one track do.
    """
    pose_rng = rng if pose_rng is None else pose_rng
    height, width = scene.shape[0], scene.shape[1] // 2
    left = int(rng.integers(0, scene.shape[1] - width + 1))
    background = scene[:, left : left + width]
    big = Image.fromarray((background * 255.0 + 0.5).astype(np.uint8)).resize(
        (width * SUPERSAMPLE, height * SUPERSAMPLE), Image.Resampling.NEAREST
    )
    view = VIEWS[pose_rng.choice(4, p=camera["view_weights"])]
    _draw_person(big, who, pose_rng, view, camera["framing"])
    small = big.resize((width, height), Image.Resampling.BOX)
    return _apply_camera(np.asarray(small, np.float32) / 255.0, camera, rng)


# --- dataset layout -----------------------------------------------------------------------------------


def _plan_domain(rng: np.random.Generator, first_pid: int, layout: LayoutSpec) -> list[tuple[str, int, int]]:
    """(split, pid, 0-based camera) for every image of one domain, in generation order (see ``LayoutSpec``)."""
    plan = []
    for offset in range(layout.train_ids + layout.test_ids):
        pid = first_pid + offset
        cameras = layout.cameras
        seen_by = sorted(rng.choice(cameras, size=int(rng.integers(2, cameras + 1)), replace=False).tolist())
        for cam in seen_by:
            if offset < layout.train_ids:
                count = int(rng.integers(1, layout.train_images_per_camera + 1))
                plan += [("bounding_box_train", pid, cam)] * count
            else:
                plan += [("query", pid, cam)] + [("bounding_box_test", pid, cam)] * layout.gallery_per_camera
    return plan


def _render_domain(folder: Path, spec: DomainSpec, seed: int, index: int, first_pid: int) -> dict[str, Any]:
    """Write one domain's three splits under ``folder`` and return its description. Its random streams are
    keyed by ``seed``, ``index`` (0 source, 1 target), what they draw, and the camera, person or image."""

    def stream(*key: int) -> np.random.Generator:
        return np.random.default_rng([seed, index, *key])

    layout = spec.layout
    plan = _plan_domain(stream(0), first_pid, layout)
    cast_offset = float(stream(5).random())
    cams = [_make_camera(stream(1, c), c, layout.cameras, spec.camera, cast_offset) for c in range(layout.cameras)]
    scenes = [_background(cam["background"], stream(2, c), HEIGHT, WIDTH) for c, cam in enumerate(cams)]
    people: dict[int, dict] = {}
    for split in SPLITS:
        (folder / split).mkdir(parents=True, exist_ok=True)
    for n, (split, pid, cam) in enumerate(plan):
        if pid not in people:
            people[pid] = _make_identity(stream(3, pid), spec.person.achromatic)
        # Training tracks: a person's images in one camera share view and pose (as the frames of a track do);
        # background crop, exposure flicker and noise still change per image.
        pose_rng = stream(6, pid, cam) if layout.tracks and split == "bounding_box_train" else None
        image = render_image(people[pid], cams[cam], scenes[cam], stream(4, n), pose_rng=pose_rng)
        image.save(folder / split / f"{pid:04d}_c{cam + 1}_{n:05d}.jpg", quality=JPEG_QUALITY)
    first_test = first_pid + layout.train_ids
    return {
        "pids": {"train": [first_pid, first_test - 1], "test": [first_test, first_test + layout.test_ids - 1]},
        "images": {split: sum(1 for s, _, _ in plan if s == split) for split in SPLITS},
        "cameras": _round(cams),
    }


def _check_replaceable(folder: Path) -> None:
    """Refuse to delete ``folder`` unless it only holds what ``generate_synthetic`` writes (and CamStyle
    sets made from it, which a regeneration makes stale)."""
    if not folder.exists():
        return
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        ours = parts[0].startswith(CAMSTYLE_PREFIX) or (
            parts[0] in SPLITS
            and (len(parts) == 1 and path.is_dir() or len(parts) == 2 and FILE_NAME.match(path.name) is not None)
        )
        if not ours:
            raise EcnreidError(f"{path}: not written by the synthetic generator; refusing to replace {folder}")


def generate_synthetic(
    out_dir: str | Path,
    *,
    source: DomainSpec = DEFAULT_SOURCE,
    target: DomainSpec = DEFAULT_TARGET,
    seed: int = 0,
) -> dict:
    """Write the two-domain synthetic dataset under ``out_dir`` and return its description.

    Layout: ``out_dir/source/`` and ``out_dir/target/`` (each ``bounding_box_train/``, ``query/``,
    ``bounding_box_test/``) and ``out_dir/synthetic.json``: ``params`` (the seed and each domain's spec as
    ``dataclasses.asdict``), and per domain its id ranges, image counts and drawn camera styles.
    Nothing is rewritten when ``synthetic.json`` already records the same parameters; folders holding files
    the generator did not write are never replaced. Source person ids start at 1, target ids at 5001; in each
    domain the first ``layout.train_ids`` ids are the training ids and the next ``layout.test_ids`` the
    query/gallery ids. A domain's images depend only on its own spec and the seed.
    """
    out_dir = Path(out_dir)
    domains = {"source": source, "target": target}
    for name, spec in domains.items():
        if not isinstance(spec, DomainSpec):
            raise EcnreidError(f"synthetic {name}: expected a DomainSpec, got {type(spec).__name__}")
    if seed < 0:
        raise EcnreidError(f"--seed: must be non-negative, got {seed}")
    params = json.loads(json.dumps({"seed": seed, **{name: dataclasses.asdict(s) for name, s in domains.items()}}))
    meta_path = out_dir / "synthetic.json"
    if meta_path.is_file():
        try:
            existing = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            existing = {}
        complete = all((out_dir / d / s).is_dir() for d in domains for s in SPLITS)
        if existing.get("format") == FORMAT_VERSION and existing.get("params") == params and complete:
            return existing

    for name in domains:
        _check_replaceable(out_dir / name)
    staging = out_dir / ".synthetic.staging"
    if staging.exists():
        shutil.rmtree(staging)  # a previous run was interrupted; the name is ours
    meta: dict[str, Any] = {"format": FORMAT_VERSION, "params": params, "domains": {}}
    for index, (name, spec) in enumerate(domains.items()):
        meta["domains"][name] = _render_domain(staging / name, spec, seed, index, FIRST_PIDS[name])

    meta_path.unlink(missing_ok=True)  # from here on the folders and the JSON may disagree
    for name in domains:
        final = out_dir / name
        if final.exists():
            shutil.rmtree(final)
        (staging / name).rename(final)
    staging.rmdir()
    write_json(meta, meta_path)
    return json.loads(json.dumps(meta))
