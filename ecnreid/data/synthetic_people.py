"""People of the synthetic dataset (``ecnreid.data.synthetic``): identity attributes and drawing a person.

A person is drawn with Pillow from identity attributes (clothing colours, torso pattern, sleeves,
trousers/shorts/skirt, hair, hat, bag, build) and a per-image pose (offset, scale, walking phase, viewpoint:
front/back/left/right, which changes what is visible, e.g. a chest logo or a backpack).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

PATTERNS = ("plain", "stripes", "checks", "logo")
BOTTOMS = ("trousers", "trousers", "shorts", "skirt")
BAGS = ("none", "none", "backpack", "shoulder")
VIEWS = ("front", "back", "left", "right")


# --- colours and random helpers -----------------------------------------------------------------------


def rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _clothing_colour(rng: np.random.Generator, achromatic: float) -> tuple[int, int, int]:
    """Real clothes are often black, white or grey (with probability ``achromatic``); otherwise any hue."""
    if rng.random() < achromatic:
        return rgb(0.0, 0.0, float(rng.choice([0.12, 0.3, 0.55, 0.85])) + rng.uniform(-0.05, 0.05))
    return rgb(rng.random(), rng.uniform(0.35, 0.95), rng.uniform(0.35, 0.95))


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(min(255, round(c * factor)) for c in colour)  # type: ignore[return-value]


# --- identities ---------------------------------------------------------------------------------------


def make_identity(rng: np.random.Generator, achromatic: float) -> dict[str, Any]:
    """Appearance attributes that stay fixed for one person across all images and cameras; ``achromatic``
    is the share of black, white and grey garments (the domain's fashion)."""
    skin = rgb(rng.uniform(0.03, 0.09), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    hair = rgb(rng.uniform(0.0, 0.12), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.6))
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
        "shoes": rgb(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.1, 0.9)),
        "build_w": float(rng.uniform(0.85, 1.2)),
        "build_h": float(rng.uniform(0.9, 1.05)),
    }


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


def draw_person(canvas: Image.Image, who: dict, rng: np.random.Generator, view: str, framing: float) -> None:
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
