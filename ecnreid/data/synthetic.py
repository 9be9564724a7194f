"""The built-in synthetic dataset: procedurally drawn people in two domains that differ in camera style.

Each domain is a small re-ID dataset in the standard layout (``bounding_box_train/``, ``query/``,
``bounding_box_test/``, files ``{pid:04d}_c{cam}_{n:05d}.jpg`` with 1-based cameras, 128×64 JPEG).
Identities are disjoint between the domains and between train and test.

- A person is drawn with Pillow from identity attributes (clothing colours, torso pattern, sleeves,
  trousers/shorts/skirt, hair, hat, bag, build) and per-image pose (offset, scale, walking phase,
  viewpoint: front/back/left/right, which changes what is visible, e.g. a chest logo or a backpack).
- Every camera has a style: a scene background, a colour cast (white-balance gains pointing in the
  camera's own direction of the colour wheel), saturation, a small hue shift, exposure, contrast, gamma,
  a vertical shade, blur, sensor noise, a typical viewpoint mix and framing.
- The source's cameras are mild variations of neutral styles on plain backgrounds; the target's cameras
  have strong, distinct colour casts, lighting, blur and noise, and textured backgrounds. Appearance
  identifies a person within a camera; matching across target cameras needs camera invariance, which a
  model trained on the source alone does not learn. That is the gap ECN is meant to close.
  Measured with a small CNN trained on the source ids (``tests/test_synthetic.py``, seeds 0 and 1):
  source rank-1 ≈ 95%, target rank-1 ≈ 0% (the nearest neighbour is nearly always a same-camera
  stranger), and ≈ 50% once each target camera's colour statistics are normalised: identity survives
  the style.

Output is byte-identical for the same parameters (NumPy ``Generator`` streams keyed by seed, domain and
item; Pillow drawing and JPEG encoding are deterministic for a given Pillow build).
"""

from __future__ import annotations

import colorsys
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ecnreid.errors import EcnreidError
from ecnreid.io import write_json

FORMAT_VERSION = 1
SPLITS = ("bounding_box_train", "query", "bounding_box_test")
FILE_NAME = re.compile(r"^\d{4}_c\d+_\d{5,}\.jpg$")
CAMSTYLE_PREFIX = "bounding_box_train_camstyle"  # derived from the target by `prepare`; stale once regenerated
SUPERSAMPLE = 2  # people are drawn at 2× and box-filtered down, for anti-aliased edges

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


def _clothing_colour(rng: np.random.Generator, achromatic: float = 0.3) -> tuple[int, int, int]:
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


def _make_identity(rng: np.random.Generator, achromatic: float = 0.3, plain: bool = False) -> dict[str, Any]:
    """Appearance attributes that stay fixed for one person across all images and cameras; ``achromatic``
    is the share of black, white and grey garments (the domain's fashion). ``plain`` people wear plain tops
    and trousers, with no bag, hat or long hair: only their colours tell them apart (same colours as
    without it, the random stream is unchanged)."""
    skin = _rgb(rng.uniform(0.03, 0.09), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    hair = _rgb(rng.uniform(0.0, 0.12), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.6))
    if rng.random() < 0.12:  # dyed or grey hair
        hair = _clothing_colour(rng)
    who = {
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
    if plain:
        who |= {"pattern": "plain", "bottom_kind": "trousers", "hat": None, "bag": "none", "long_hair": False}
    return who


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


def _make_camera(
    rng: np.random.Generator,
    index: int,
    count: int,
    strength: float,
    cast: float,
    textured: bool,
    cast_offset: float,
) -> dict:
    """A camera style. ``cast`` is the amplitude of the colour cast (white balance: channel gains up to
    ``1 ± cast``); ``strength`` scales every other departure from a neutral camera (0 = neutral).

    The cast of camera ``index`` points in its own direction of the colour wheel, spread evenly over the
    domain's cameras, so that every camera's cast is distinct.
    """
    direction = 2.0 * math.pi * (index / count + cast_offset + rng.uniform(-0.05, 0.05))
    channel_angles = np.array([0.0, 2.0 * math.pi / 3.0, 4.0 * math.pi / 3.0])  # R, G, B on the wheel
    gains = 1.0 + cast * np.cos(direction - channel_angles)
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


def _limb(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour, width: float) -> None:
    draw.line(points, fill=colour, width=max(1, round(width)), joint="curve")
    r = width / 2.0
    for x, y in (points[0], points[-1]):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def _draw_person(canvas: Image.Image, who: dict, rng: np.random.Generator, view: str, framing: float) -> None:
    """Draw one person on ``canvas`` (RGB, supersampled) in place."""
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    s = height / 128.0  # pixels per output-pixel unit of a 128-high image, times the supersampling
    scale = framing * who["build_h"] * rng.uniform(0.92, 1.04)
    ph = 108.0 * s * scale  # person height, head top to soles
    cx = width / 2.0 + rng.uniform(-4.0, 4.0) * s
    feet = height - (5.0 + rng.uniform(-3.0, 3.0)) * s
    top = feet - ph
    side = view in ("left", "right")
    facing = 1.0 if view == "right" else -1.0
    phase = rng.uniform(0.0, 2.0 * math.pi)
    swing = math.sin(phase) * (0.45 if side else 0.12)

    head_r = 0.068 * ph
    head_cy = top + head_r
    shoulder_y = top + 0.17 * ph
    hip_y = top + 0.5 * ph
    torso_w = 0.22 * ph * who["build_w"] * (0.62 if side else 1.0)
    hip_w = 0.18 * ph * who["build_w"] * (0.6 if side else 1.0)
    leg_w = 0.075 * ph * who["build_w"]
    arm_w = 0.058 * ph * who["build_w"]
    leg_len = feet - hip_y - leg_w / 2

    def leg_points(sign: float) -> list[tuple[float, float]]:
        """Hip, knee, ankle of one leg; side views swing along x, front/back views mostly in place."""
        hip_x = cx + (0.0 if side else sign * hip_w * 0.28)
        angle = sign * swing
        knee = (hip_x + math.sin(angle) * leg_len * 0.5 * (facing if side else 0.4), hip_y + leg_len * 0.5)
        bend = 0.1 * max(0.0, -angle) if side else 0.0
        ankle = (knee[0] + math.sin(angle - bend) * leg_len * 0.5 * (facing if side else 0.4), hip_y + leg_len)
        return [(hip_x, hip_y), knee, ankle]

    def arm_points(sign: float) -> list[tuple[float, float]]:
        shoulder = (cx + (0.0 if side else sign * (torso_w / 2 + arm_w * 0.2)), shoulder_y + arm_w * 0.4)
        angle = -sign * swing * 1.1
        length = 0.34 * ph
        reach = length * 0.5 * (facing if side else 0.3)
        elbow = (shoulder[0] + math.sin(angle) * reach + (0.0 if side else sign * s), shoulder[1] + length * 0.5)
        hand = (elbow[0] + math.sin(angle * 1.3) * reach, shoulder[1] + length * 0.97)
        return [shoulder, elbow, hand]

    def draw_leg(sign: float, dim: float) -> None:
        hip, knee, ankle = leg_points(sign)
        skin, bottom = _shade(who["skin"], dim), _shade(who["bottom"], dim)
        kind = who["bottom_kind"]
        if kind == "trousers":
            _limb(draw, [hip, knee, ankle], bottom, leg_w)
        else:
            _limb(draw, [hip, knee, ankle], skin, leg_w * 0.85)
            if kind == "shorts":
                mid = (hip[0] + (knee[0] - hip[0]) * 0.8, hip[1] + (knee[1] - hip[1]) * 0.8)
                _limb(draw, [hip, mid], bottom, leg_w * 1.05)
        shoe_w = leg_w * (1.5 if side else 1.1)
        shoe_dx = facing * leg_w * 0.3 if side else 0.0
        draw.ellipse(
            [
                ankle[0] - shoe_w / 2 + shoe_dx,
                ankle[1] - leg_w * 0.35,
                ankle[0] + shoe_w / 2 + shoe_dx,
                ankle[1] + leg_w * 0.45,
            ],
            fill=_shade(who["shoes"], dim),
        )

    def draw_arm(sign: float, dim: float) -> None:
        shoulder, elbow, hand = arm_points(sign)
        skin, top_c = _shade(who["skin"], dim), _shade(who["top"], dim)
        if who["long_sleeves"]:
            _limb(draw, [shoulder, elbow, hand], top_c, arm_w)
        else:
            _limb(draw, [shoulder, elbow, hand], skin, arm_w * 0.85)
            _limb(draw, [shoulder, elbow], top_c, arm_w)
        r = arm_w * 0.55
        draw.ellipse([hand[0] - r, hand[1] - r, hand[0] + r, hand[1] + r], fill=skin)

    def draw_backpack(full: bool) -> None:
        colour = who["bag_colour"]
        if side:  # a block sticking out behind the back
            x0 = cx - facing * torso_w / 2
            x1 = x0 - facing * 0.09 * ph
            draw.rectangle([min(x0, x1), shoulder_y + 0.02 * ph, max(x0, x1) + 1, hip_y - 0.06 * ph], fill=colour)
        elif full:
            draw.rounded_rectangle(
                [cx - torso_w * 0.36, shoulder_y + 0.03 * ph, cx + torso_w * 0.36, hip_y - 0.04 * ph],
                radius=0.02 * ph,
                fill=colour,
            )
        else:  # straps seen from the front
            for sign in (-1.0, 1.0):
                x = cx + sign * torso_w * 0.3
                draw.line([(x, shoulder_y), (x, shoulder_y + 0.2 * ph)], fill=colour, width=max(1, round(0.022 * ph)))

    def draw_shoulder_bag() -> None:
        colour = who["bag_colour"]
        bag_x = cx + (-facing if side else 1.0) * (hip_w * 0.5 + 0.02 * ph)
        strap_w = max(1, round(0.015 * ph))
        if not side:
            draw.line([(cx - torso_w * 0.4, shoulder_y), (bag_x, hip_y - 0.03 * ph)], fill=colour, width=strap_w)
        w, h = 0.11 * ph, 0.1 * ph
        draw.rectangle([bag_x - w / 2, hip_y - 0.04 * ph, bag_x + w / 2, hip_y - 0.04 * ph + h], fill=colour)

    def draw_torso() -> None:
        polygon = [
            (cx - torso_w / 2, shoulder_y),
            (cx + torso_w / 2, shoulder_y),
            (cx + hip_w / 2 + 0.01 * ph, hip_y + 0.03 * ph),
            (cx - hip_w / 2 - 0.01 * ph, hip_y + 0.03 * ph),
        ]
        # Pelvis/waist in the bottom colour, so legs join the body.
        draw.rectangle([cx - hip_w / 2, hip_y - 0.02 * ph, cx + hip_w / 2, hip_y + 0.06 * ph], fill=who["bottom"])
        if who["bottom_kind"] == "skirt":
            flare = 0.05 * ph
            draw.polygon(
                [
                    (cx - hip_w / 2, hip_y - 0.02 * ph),
                    (cx + hip_w / 2, hip_y - 0.02 * ph),
                    (cx + hip_w / 2 + flare, hip_y + 0.2 * ph),
                    (cx - hip_w / 2 - flare, hip_y + 0.2 * ph),
                ],
                fill=who["bottom"],
            )
        draw.rounded_rectangle(
            [cx - torso_w / 2, shoulder_y - 0.012 * ph, cx + torso_w / 2, shoulder_y + 0.05 * ph],
            radius=0.03 * ph,
            fill=who["top"],
        )
        draw.polygon(polygon, fill=who["top"])
        pattern = who["pattern"]
        if pattern in ("stripes", "checks"):
            mask = Image.new("L", canvas.size, 0)
            ImageDraw.Draw(mask).polygon(polygon, fill=255)
            layer = Image.new("L", canvas.size, 0)
            layer_draw = ImageDraw.Draw(layer)
            period = who["pattern_period"] * s
            y = shoulder_y
            while y < hip_y + 0.03 * ph:
                layer_draw.rectangle([0, y, width, y + period / 2], fill=255)
                y += period
            if pattern == "checks":
                x = cx - torso_w
                while x < cx + torso_w:
                    layer_draw.rectangle([x, 0, x + period / 2, height], fill=255)
                    x += period
            mask = Image.fromarray(np.minimum(np.asarray(mask), np.asarray(layer)))
            canvas.paste(who["pattern_colour"], mask=mask)
        elif pattern == "logo" and view == "front":
            r = 0.055 * ph
            ly = shoulder_y + 0.12 * ph
            box = [cx - r, ly - r, cx + r, ly + r]
            shape = who["logo_shape"]
            if shape == 0:
                draw.ellipse(box, fill=who["pattern_colour"])
            elif shape == 1:
                draw.rectangle(box, fill=who["pattern_colour"])
            else:
                draw.polygon([(cx, ly - r), (cx + r, ly + r), (cx - r, ly + r)], fill=who["pattern_colour"])

    def draw_head() -> None:
        hair = who["hair"]
        box = [cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r]
        neck_w = head_r * 0.8
        draw.rectangle([cx - neck_w / 2, head_cy, cx + neck_w / 2, shoulder_y + 0.01 * ph], fill=who["skin"])
        if who["long_hair"] and view != "back":  # hair falling behind the shoulders
            draw.rectangle([cx - head_r * 1.05, head_cy, cx + head_r * 1.05, head_cy + head_r * 2.1], fill=hair)
        if view == "back":
            draw.ellipse(box, fill=hair)
            if who["long_hair"]:
                draw.rectangle([cx - head_r, head_cy, cx + head_r, head_cy + head_r * 2.2], fill=hair)
        else:
            draw.ellipse(box, fill=who["skin"])
            if side:  # hair covers the back half of the head
                draw.pieslice(box, 90 if facing > 0 else -90, 270 if facing > 0 else 90, fill=hair)
            draw.chord([box[0], box[1] - head_r * 0.1, box[2], box[3] - head_r * 0.5], 180, 360, fill=hair)
        if who["hat"] is not None:
            draw.chord(
                [box[0] - head_r * 0.1, box[1] - head_r * 0.25, box[2] + head_r * 0.1, box[3] - head_r * 0.6],
                180,
                360,
                fill=who["hat"],
            )
            brim = head_r * (1.6 if side else 1.2)
            bx = cx + (facing * head_r * 0.5 if side else 0.0)
            draw.rectangle([bx - brim, head_cy - head_r * 0.3, bx + brim, head_cy - head_r * 0.15], fill=who["hat"])

    bag = who["bag"]
    if side:
        draw_arm(-facing, 0.75)  # the far limbs are darker
        draw_leg(-1.0, 0.75)
        if bag == "backpack":
            draw_backpack(True)
        draw_torso()
        draw_leg(1.0, 1.0)
        if bag == "shoulder":
            draw_shoulder_bag()
        draw_arm(facing, 1.0)
        draw_head()
    else:
        draw_leg(-1.0, 1.0)
        draw_leg(1.0, 1.0)
        draw_torso()
        if bag == "backpack":
            draw_backpack(view == "back")
        if bag == "shoulder":
            draw_shoulder_bag()
        draw_arm(-1.0, 1.0)
        draw_arm(1.0, 1.0)
        draw_head()


def render_image(
    who: dict,
    camera: dict,
    scene: np.ndarray,
    rng: np.random.Generator,
    height: int = 128,
    width: int = 64,
    pose_rng: np.random.Generator | None = None,
) -> Image.Image:
    """One 8-bit RGB image (``height × width``) of person ``who`` seen by ``camera`` over ``scene``.

    ``pose_rng`` (default: ``rng``) draws the view and pose; images given generators in the same state show
    the person in the same pose, as the frames of one track do.
    """
    pose_rng = rng if pose_rng is None else pose_rng
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


def _plan_domain(
    rng: np.random.Generator,
    first_pid: int,
    train_ids: int,
    test_ids: int,
    cameras: int,
    train_images_per_camera: int,
    gallery_per_camera: int,
) -> list[tuple[str, int, int]]:
    """(split, pid, 0-based camera) for every image of one domain, in generation order.

    Each person is seen by 2..``cameras`` cameras. Train: 1..``train_images_per_camera`` images per camera.
    Test: per camera, one query and ``gallery_per_camera`` gallery images.
    """
    plan = []
    for offset in range(train_ids + test_ids):
        pid = first_pid + offset
        seen_by = sorted(rng.choice(cameras, size=int(rng.integers(2, cameras + 1)), replace=False).tolist())
        for cam in seen_by:
            if offset < train_ids:
                count = int(rng.integers(1, train_images_per_camera + 1))
                plan += [("bounding_box_train", pid, cam)] * count
            else:
                plan += [("query", pid, cam)] + [("bounding_box_test", pid, cam)] * gallery_per_camera
    return plan


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
    seed: int = 0,
    source_cameras: int = 4,
    target_cameras: int = 5,
    train_ids: int = 60,
    target_train_ids: int | None = None,
    test_ids: int = 40,
    train_images_per_camera: int = 2,
    target_train_images_per_camera: int | None = None,
    gallery_per_camera: int = 2,
    source_style: float = 0.3,
    target_style: float = 0.8,
    source_cast: float = 0.12,
    target_cast: float = 0.35,
    target_textured: bool = True,
    source_achromatic: float = 0.3,
    target_achromatic: float = 0.3,
    source_plain: bool = False,
    target_tracks: bool = False,
    height: int = 128,
    width: int = 64,
    jpeg_quality: int = 92,
    progress: bool = False,
) -> dict:
    """Write the two-domain synthetic dataset under ``out_dir`` and return its description.

    Layout: ``out_dir/source/`` and ``out_dir/target/`` (each ``bounding_box_train/``, ``query/``,
    ``bounding_box_test/``) and ``out_dir/synthetic.json`` (parameters, camera styles, counts).
    Nothing is rewritten when ``synthetic.json`` already records the same parameters.
    ``source_cast`` / ``target_cast`` are the amplitudes of the cameras' colour casts (channel gains up to
    ``1 ± cast``); ``source_style`` / ``target_style`` scale every other departure from a neutral camera
    (saturation, hue, exposure, contrast, gamma, shade, blur, noise).
    ``source_plain`` dresses every source person plainly (see ``_make_identity``): the target's patterns,
    bags, hats and skirts are then cues a source-trained model never needed.
    ``target_tracks`` makes a target person's training images in one camera frames of one track (same view
    and pose), as in real re-ID training sets, where they are near-duplicates.
    ``target_train_ids`` (default: ``train_ids``) sets the target's training ids apart from the source's, and
    ``target_train_images_per_camera`` (default: ``train_images_per_camera``) its images per person and camera.
    Source person ids start at 1, target ids at 5001; in each domain the first ``train_ids`` ids are
    the training ids and the next ``test_ids`` the query/gallery ids.
    """
    out_dir = Path(out_dir)
    if source_cameras < 2 or target_cameras < 2:
        raise EcnreidError(f"{out_dir}: synthetic domains need at least 2 cameras each")
    target_train_ids = train_ids if target_train_ids is None else target_train_ids
    if target_train_images_per_camera is None:
        target_train_images_per_camera = train_images_per_camera
    per_camera = min(train_images_per_camera, target_train_images_per_camera, gallery_per_camera)
    if min(train_ids, target_train_ids) < 1 or test_ids < 1 or per_camera < 1:
        raise EcnreidError(f"{out_dir}: synthetic id and image counts must be at least 1")
    # Source ids are 1.., target ids 5001.., both written with 4 digits.
    if max(train_ids, target_train_ids) + test_ids > 4999:
        raise EcnreidError(f"{out_dir}: at most 4999 synthetic ids per domain (train + test)")
    if seed < 0:
        raise EcnreidError(f"--seed: must be non-negative, got {seed}")
    params = {
        "seed": seed,
        "source_cameras": source_cameras,
        "target_cameras": target_cameras,
        "train_ids": train_ids,
        "target_train_ids": target_train_ids,
        "test_ids": test_ids,
        "train_images_per_camera": train_images_per_camera,
        "target_train_images_per_camera": target_train_images_per_camera,
        "gallery_per_camera": gallery_per_camera,
        "source_style": source_style,
        "target_style": target_style,
        "source_cast": source_cast,
        "target_cast": target_cast,
        "target_textured": target_textured,
        "source_achromatic": source_achromatic,
        "target_achromatic": target_achromatic,
        "source_plain": source_plain,
        "target_tracks": target_tracks,
        "height": height,
        "width": width,
        "jpeg_quality": jpeg_quality,
    }
    params = json.loads(json.dumps(params))
    meta_path = out_dir / "synthetic.json"
    if meta_path.is_file():
        try:
            existing = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            existing = {}
        complete = all((out_dir / d / s).is_dir() for d in ("source", "target") for s in SPLITS)
        if existing.get("format") == FORMAT_VERSION and existing.get("params") == params and complete:
            return existing

    domains = {
        "source": {
            "first_pid": 1,
            "cameras": source_cameras,
            "style": source_style,
            "cast": source_cast,
            "textured": False,
            "achromatic": source_achromatic,
            "plain": source_plain,
            "train_ids": train_ids,
            "train_images_per_camera": train_images_per_camera,
            "tracks": False,
        },
        "target": {
            "first_pid": 5001,
            "cameras": target_cameras,
            "style": target_style,
            "cast": target_cast,
            "textured": target_textured,
            "achromatic": target_achromatic,
            "plain": False,
            "train_ids": target_train_ids,
            "train_images_per_camera": target_train_images_per_camera,
            "tracks": target_tracks,
        },
    }
    for name in domains:
        _check_replaceable(out_dir / name)
    staging = out_dir / ".synthetic.staging"
    if staging.exists():
        shutil.rmtree(staging)  # a previous run was interrupted; the name is ours
    meta: dict[str, Any] = {"format": FORMAT_VERSION, "params": params, "domains": {}}
    plans = {}
    for index, (name, spec) in enumerate(domains.items()):
        plan_rng = np.random.default_rng([seed, index, 0])
        plans[name] = _plan_domain(
            plan_rng,
            spec["first_pid"],
            spec["train_ids"],
            test_ids,
            spec["cameras"],
            spec["train_images_per_camera"],
            gallery_per_camera,
        )
    total = sum(len(p) for p in plans.values())

    bar = task = None
    if progress:
        from ecnreid.progress import make_progress

        bar = make_progress()
        bar.start()
        task = bar.add_task("synthetic", total=total, unit="img", info="")
    try:
        for index, (name, spec) in enumerate(domains.items()):
            cast_offset = float(np.random.default_rng([seed, index, 5]).random())
            cams = [
                _make_camera(
                    np.random.default_rng([seed, index, 1, c]),
                    c,
                    spec["cameras"],
                    spec["style"],
                    spec["cast"],
                    spec["textured"],
                    cast_offset,
                )
                for c in range(spec["cameras"])
            ]
            scenes = [
                _background(cam["background"], np.random.default_rng([seed, index, 2, c]), height, width)
                for c, cam in enumerate(cams)
            ]
            people: dict[int, dict] = {}
            for split in SPLITS:
                (staging / name / split).mkdir(parents=True, exist_ok=True)
            for n, (split, pid, cam) in enumerate(plans[name]):
                if pid not in people:
                    people[pid] = _make_identity(
                        np.random.default_rng([seed, index, 3, pid]), spec["achromatic"], spec["plain"]
                    )
                # Target training tracks: a person's images in one camera share view and pose (as the frames
                # of a track do); background crop, exposure flicker and noise still change per image.
                track = spec["tracks"] and split == "bounding_box_train"
                pose_rng = np.random.default_rng([seed, index, 6, pid, cam]) if track else None
                image = render_image(
                    people[pid],
                    cams[cam],
                    scenes[cam],
                    np.random.default_rng([seed, index, 4, n]),
                    height,
                    width,
                    pose_rng=pose_rng,
                )
                image.save(staging / name / split / f"{pid:04d}_c{cam + 1}_{n:05d}.jpg", quality=jpeg_quality)
                if bar is not None:
                    bar.update(task, advance=1)
            counts = {split: sum(1 for s, _, _ in plans[name] if s == split) for split in SPLITS}
            meta["domains"][name] = {
                "pids": {
                    "train": [spec["first_pid"], spec["first_pid"] + spec["train_ids"] - 1],
                    "test": [
                        spec["first_pid"] + spec["train_ids"],
                        spec["first_pid"] + spec["train_ids"] + test_ids - 1,
                    ],
                },
                "images": counts,
                "cameras": _round(cams),
            }
    finally:
        if bar is not None:
            bar.stop()

    meta_path.unlink(missing_ok=True)  # from here on the folders and the JSON may disagree
    for name in domains:
        final = out_dir / name
        if final.exists():
            shutil.rmtree(final)
        (staging / name).rename(final)
    staging.rmdir()
    write_json(meta, meta_path)
    return json.loads(json.dumps(meta))
