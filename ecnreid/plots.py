"""Small line plots drawn with Pillow (no matplotlib): training curves and CMC curves as PNG files.

Everything is drawn at ``SUPERSAMPLE`` times the requested size and scaled down, which gives smooth lines
and text without an anti-aliasing renderer.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ecnreid.errors import EcnreidError
from ecnreid.io import atomic_save_image

# Ten well-separated colours (the "tab10" set), assigned to series in order.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
SUPERSAMPLE = 2
BACKGROUND = (255, 255, 255)
GRID_COLOR = (228, 228, 228)
AXIS_COLOR = (70, 70, 70)
TEXT_COLOR = (30, 30, 30)
LINE_WIDTH = 2  # final pixels
MARKER_RADIUS = 3  # final pixels
MAX_POINTS_WITH_MARKERS = 40
MIN_SIZE = (200, 150)

# Keys of a training-log row drawn in the lower panel, in legend order.
METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")

Point = tuple[float, float]


@functools.lru_cache(maxsize=16)
def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font at ``size`` pixels (the fixed bitmap font if FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def text_size(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> tuple[int, int]:
    """Width and height in pixels of ``text`` drawn at the origin with ``font``."""
    left, top, right, bottom = font.getbbox(text)
    return int(math.ceil(right - min(left, 0))), int(math.ceil(bottom - min(top, 0)))


def nice_step(span: float, target: int = 5) -> float:
    """The round step (1, 2, 2.5 or 5 times a power of ten) giving about ``target`` intervals in ``span``."""
    raw = span / max(target, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for mantissa in (1.0, 2.0, 2.5, 5.0, 10.0):
        if mantissa * magnitude >= raw * (1 - 1e-9):
            return mantissa * magnitude
    return 10.0 * magnitude


def nice_ticks(lo: float, hi: float, step: float) -> list[float]:
    """Multiples of ``step`` inside ``[lo, hi]``, rounded so that 0.1 + 0.2 prints as 0.3."""
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    digits = max(0, -math.floor(math.log10(step))) + 2
    return [0.0 if i == 0 else round(i * step, digits) for i in range(first, last + 1)]


def format_tick(value: float, step: float) -> str:
    """A tick label with just enough decimals to tell neighbouring ticks apart."""
    if value != 0 and (abs(value) >= 1e6 or step < 1e-4):
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(step / 10.0 ** math.floor(math.log10(step) + 1e-9) - 2.5) < 1e-6:
        decimals += 1  # 0.25, 0.5, 0.75 needs one digit more than the power of ten says
    return f"{value:.{decimals}f}"


@dataclass(frozen=True)
class _Axis:
    lo: float
    hi: float
    step: float


def _axis(values: Sequence[float], *, fixed: tuple[float, float] | None, integer: bool) -> _Axis:
    """The axis range: ``fixed`` as given, else the finite data widened to whole ticks."""
    if fixed is not None:
        lo, hi = float(fixed[0]), float(fixed[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"axis limits must be finite with lo < hi, got {fixed}")
        return _Axis(lo, hi, nice_step(hi - lo))
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return _Axis(0.0, 1.0, 0.2)
    lo, hi = min(finite), max(finite)
    if hi - lo <= 1e-12 * max(1.0, abs(lo)):
        # A constant series still needs a range; centre it so the line sits mid-panel.
        pad = 1.0 if integer or lo == 0 else abs(lo) * 0.1
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo)
    if integer and step < 1:
        step = 1.0
    elif integer and step != int(step):
        step = 5.0 * step / 2.5  # 2.5 -> 5: integer axes keep integer ticks
    return _Axis(math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step, step)


@dataclass(frozen=True)
class _Series:
    label: str
    color: tuple[int, int, int]
    runs: list[list[Point]]  # stretches of consecutive finite points; a non-finite value breaks the line


Color = tuple[int, int, int]


def _make_series(label: str, xs: Sequence[float], ys: Sequence[float], color: Color) -> _Series:
    if len(xs) != len(ys):
        raise ValueError(f"series {label!r}: {len(xs)} x values but {len(ys)} y values")
    runs: list[list[Point]] = [[]]
    for x, y in zip(xs, ys, strict=True):
        x, y = float(x), float(y)
        if math.isfinite(x) and math.isfinite(y):
            runs[-1].append((x, y))
        elif runs[-1]:
            runs.append([])
    return _Series(label, color, [run for run in runs if run])


def _paste_rotated_text(canvas: Image.Image, text: str, font, center: tuple[int, int]) -> None:
    """Draw ``text`` turned 90 degrees counter-clockwise, centred on ``center`` (for the y-axis label)."""
    width, height = text_size(text, font)
    mask = Image.new("L", (width + 4, height + 4), 0)
    ImageDraw.Draw(mask).text((2, 2), text, font=font, fill=255)
    mask = mask.rotate(90, expand=True)
    ink = Image.new("RGB", mask.size, TEXT_COLOR)
    canvas.paste(ink, (center[0] - mask.width // 2, center[1] - mask.height // 2), mask)


def _draw_panel(
    canvas: Image.Image,
    box: tuple[int, int, int, int],
    series: list[_Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] | None,
) -> None:
    """Draw one titled panel (axes, grid, curves, legend) inside ``box`` of a supersampled canvas."""
    s = SUPERSAMPLE
    draw = ImageDraw.Draw(canvas)
    title_font, label_font, tick_font = load_font(16 * s), load_font(13 * s), load_font(12 * s)
    points = [p for item in series for run in item.runs for p in run]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_axis = _axis(xs, fixed=None, integer=bool(xs) and all(float(x).is_integer() for x in xs))
    y_axis = _axis(ys, fixed=ylim, integer=False)
    x_ticks = nice_ticks(x_axis.lo, x_axis.hi, x_axis.step)
    y_ticks = nice_ticks(y_axis.lo, y_axis.hi, y_axis.step)
    y_labels = [format_tick(t, y_axis.step) for t in y_ticks]
    tick_len, pad = 5 * s, 6 * s
    label_h = text_size("0123456789", tick_font)[1]

    left, top, right, bottom = box
    title_h = text_size(title, title_font)[1] if title else 0
    ylabel_w = text_size(ylabel, label_font)[1] if ylabel else 0
    xlabel_h = text_size(xlabel, label_font)[1] if xlabel else 0
    widest_y = max((text_size(t, tick_font)[0] for t in y_labels), default=0)
    x0 = left + 10 * s + ylabel_w + pad + widest_y + pad + tick_len
    x1 = right - 20 * s
    y0 = top + 10 * s + title_h + 10 * s
    y1 = bottom - (8 * s + xlabel_h + pad + label_h + pad + tick_len)
    if x1 - x0 < 20 * s or y1 - y0 < 20 * s:
        raise ValueError(f"plot size too small for the panel {title!r}")

    inset = 4 * s  # keeps points on the axis limits off the frame line

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = x0 + inset + (x - x_axis.lo) / (x_axis.hi - x_axis.lo) * (x1 - x0 - 2 * inset)
        py = y1 - inset - (y - y_axis.lo) / (y_axis.hi - y_axis.lo) * (y1 - y0 - 2 * inset)
        return px, py

    if title:
        width = text_size(title, title_font)[0]
        draw.text(((x0 + x1 - width) // 2, top + 10 * s), title, font=title_font, fill=TEXT_COLOR)
    for tick, text in zip(y_ticks, y_labels, strict=True):
        py = round(to_px(x_axis.lo, tick)[1])
        draw.line([(x0, py), (x1, py)], fill=GRID_COLOR, width=s)
        draw.line([(x0 - tick_len, py), (x0, py)], fill=AXIS_COLOR, width=s)
        width = text_size(text, tick_font)[0]
        draw.text((x0 - tick_len - pad - width, py), text, font=tick_font, fill=TEXT_COLOR, anchor="lm")
    for tick in x_ticks:
        px = round(to_px(tick, y_axis.lo)[0])
        draw.line([(px, y0), (px, y1)], fill=GRID_COLOR, width=s)
        draw.line([(px, y1), (px, y1 + tick_len)], fill=AXIS_COLOR, width=s)
        draw.text(
            (px, y1 + tick_len + pad), format_tick(tick, x_axis.step), font=tick_font, fill=TEXT_COLOR, anchor="mt"
        )
    draw.rectangle([x0, y0, x1, y1], outline=AXIS_COLOR, width=s)
    if xlabel:
        draw.text(((x0 + x1) // 2, bottom - 8 * s), xlabel, font=label_font, fill=TEXT_COLOR, anchor="md")
    if ylabel:
        _paste_rotated_text(canvas, ylabel, label_font, (left + 10 * s + ylabel_w // 2, (y0 + y1) // 2))

    # Curves go on a layer the size of the plot area, so anything outside ``ylim`` is clipped by the paste.
    layer = Image.new("RGBA", (x1 - x0 - s, y1 - y0 - s), (0, 0, 0, 0))
    layer_draw = ImageDraw.Draw(layer)
    with_markers = len(points) <= MAX_POINTS_WITH_MARKERS
    radius = MARKER_RADIUS * s
    for item in series:
        for run in item.runs:
            pixels = [(px - x0, py - y0) for px, py in (to_px(x, y) for x, y in run)]
            if len(pixels) > 1:
                layer_draw.line(pixels, fill=item.color, width=LINE_WIDTH * s, joint="curve")
            if with_markers or len(pixels) == 1:
                for px, py in pixels:
                    layer_draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=item.color)
    canvas.paste(layer, (x0 + s, y0 + s), layer)
    if not points:
        draw.text(((x0 + x1) // 2, (y0 + y1) // 2), "no data", font=label_font, fill=AXIS_COLOR, anchor="mm")
    # The legend avoids the lines, not only the data points: sample each segment along its length.
    samples = [
        to_px(ax + t * (bx - ax), ay + t * (by - ay))
        for item in series
        for run in item.runs
        for (ax, ay), (bx, by) in zip(run, run[1:] + run[-1:], strict=True)
        for t in (0.0, 0.2, 0.4, 0.6, 0.8)
    ]
    _draw_legend(draw, (x0, y0, x1, y1), [item for item in series if item.label], samples)


def _draw_legend(
    draw: ImageDraw.ImageDraw, area: tuple[int, int, int, int], series: list[_Series], pixels: list[Point]
) -> None:
    """A boxed legend in the corner of ``area`` that hides the fewest of the curve ``pixels``."""
    if not series:
        return
    s = SUPERSAMPLE
    font = load_font(12 * s)
    swatch, pad, row_h = 22 * s, 6 * s, text_size("Hg", font)[1] + 6 * s
    width = swatch + pad + max(text_size(item.label, font)[0] for item in series) + 2 * pad
    height = row_h * len(series) + pad
    x0, y0, x1, y1 = area
    margin = 8 * s
    corners = [
        (x1 - margin - width, y0 + margin),  # top right first: the usual place
        (x0 + margin, y0 + margin),
        (x1 - margin - width, y1 - margin - height),
        (x0 + margin, y1 - margin - height),
    ]

    def covered(corner: tuple[int, int]) -> int:
        cx, cy = corner
        near = 6 * s  # a line passing just outside the box still looks crossed by it
        left, top, right, bottom = cx - near, cy - near, cx + width + near, cy + height + near
        return sum(left <= px <= right and top <= py <= bottom for px, py in pixels)

    lx, ly = min(corners, key=covered)  # min keeps the first corner on ties
    draw.rectangle([lx, ly, lx + width, ly + height], fill=BACKGROUND, outline=(190, 190, 190), width=s)
    for row, item in enumerate(series):
        cy = ly + pad + row * row_h + row_h // 2 - 2 * s
        draw.line([(lx + pad, cy), (lx + pad + swatch, cy)], fill=item.color, width=LINE_WIDTH * s + s)
        draw.text((lx + 2 * pad + swatch, cy), item.label, font=font, fill=TEXT_COLOR, anchor="lm")


def _coloured(series: dict[str, tuple[Sequence[float], Sequence[float]]]) -> list[_Series]:
    """Series in dict order, each with the next palette colour."""
    items = enumerate(series.items())
    return [_make_series(label, xs, ys, PALETTE[i % len(PALETTE)]) for i, (label, (xs, ys)) in items]


def _check_png(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise EcnreidError(f"{path}: plot files are PNG, the name must end in .png")
    return path


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = int(size[0]), int(size[1])
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        raise ValueError(f"plot size {size} is below the minimum {MIN_SIZE}")
    return width, height


def _save(canvas: Image.Image, size: tuple[int, int], path: Path) -> None:
    atomic_save_image(canvas.resize(size, Image.Resampling.BOX), path)


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (800, 500),
    ylim: tuple[float, float] | None = None,
) -> None:
    """Plot ``{label: (xs, ys)}`` as coloured lines with axes, grid and legend; save a PNG atomically.

    Non-finite points are skipped (the line breaks there); a one-point series is drawn as a dot; a
    constant series gets a range around its value. ``ylim`` fixes the y range and clips what lies outside.
    """
    path = _check_png(path)
    size = _check_size(size)
    items = _coloured(series)
    canvas = Image.new("RGB", (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE), BACKGROUND)
    _draw_panel(canvas, (0, 0, *canvas.size), items, title=title, xlabel=xlabel, ylabel=ylabel, ylim=ylim)
    _save(canvas, size, path)


def _log_series(log_rows: list[dict], keys: Sequence[str]) -> dict[str, tuple[list[float], list[float]]]:
    """``{key: (epochs, values)}`` for each key that some row has as a number; other rows are skipped."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for key in keys:
        pairs = [
            (float(row["epoch"]), float(row[key]))
            for row in log_rows
            if _is_number(row.get("epoch")) and _is_number(row.get(key))
        ]
        if pairs:
            out[key] = ([e for e, _ in pairs], [v for _, v in pairs])
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def training_curves_png(
    log_rows: list[dict], path: str | os.PathLike, *, panel_size: tuple[int, int] = (800, 380)
) -> None:
    """Two stacked panels in one PNG: losses against epoch, then rank-1/mAP against epoch.

    Every numeric ``loss*`` key in the rows becomes a loss curve; ``rank1``, ``rank5``, ``rank10``, ``mAP``
    and ``mINP`` go to the lower panel as logged (in %, see ``evaluation.runner.metrics_row``). A row
    missing a key is skipped for that curve; a panel with no curve at all is left out.
    """
    path = _check_png(path)
    panel_size = _check_size(panel_size)
    loss_keys = [k for k in dict.fromkeys(k for row in log_rows for k in row) if str(k).startswith("loss")]
    panels = [
        (_log_series(log_rows, loss_keys), "Training losses", "loss"),
        (_log_series(log_rows, METRIC_KEYS), "Evaluation", "score (%)"),
    ]
    panels = [panel for panel in panels if panel[0]]
    if not panels:
        raise EcnreidError(f"{path}: no training-log row has a numeric 'epoch' and a loss or metric")
    s = SUPERSAMPLE
    width, height = panel_size[0], panel_size[1] * len(panels)
    canvas = Image.new("RGB", (width * s, height * s), BACKGROUND)
    for index, (series, title, ylabel) in enumerate(panels):
        box = (0, index * panel_size[1] * s, width * s, (index + 1) * panel_size[1] * s)
        _draw_panel(canvas, box, _coloured(series), title=title, xlabel="epoch", ylabel=ylabel, ylim=None)
    _save(canvas, (width, height), path)


def cmc_curve_png(
    cmc: Sequence[float],
    path: str | os.PathLike,
    *,
    label: str = "",
    extra: dict[str, Sequence[float]] | None = None,
    size: tuple[int, int] = (800, 500),
) -> None:
    """CMC curve: matching rate in % against rank 1..len(cmc).

    ``cmc[k-1]`` is the rank-k hit rate as a fraction in [0, 1] (what the evaluation computes); ``extra``
    adds more curves (e.g. after re-ranking) in the same units.
    """
    # Without a label the main curve stays out of the legend, unless other curves need telling apart.
    curves = {label or ("CMC" if extra else ""): cmc, **(extra or {})}
    series: dict[str, tuple[list[float], list[float]]] = {}
    for name, values in curves.items():
        values = [float(v) for v in values]
        if any(math.isfinite(v) and not -1e-6 <= v <= 1 + 1e-6 for v in values):
            raise ValueError(f"CMC curve {name!r} must hold fractions in [0, 1], got max {max(values)}")
        series[name] = (list(range(1, len(values) + 1)), [100.0 * v for v in values])
    line_plot(series, path, title="CMC curve", xlabel="rank", ylabel="matching rate (%)", size=size)
