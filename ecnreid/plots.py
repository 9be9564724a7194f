"""Line plots as PNG files (training curves, CMC curves), drawn with matplotlib's object API on Agg.

No ``pyplot``: each plot builds its own ``Figure`` with a ``FigureCanvasAgg``, so nothing global is touched,
it works headless and in worker threads, and the figure is freed with its last reference.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ecnreid.errors import EcnreidError
from ecnreid.io import atomic_write_bytes

DPI = 100  # figure inches times DPI is the PNG size in pixels
MIN_SIZE = (200, 150)
MAX_POINTS_WITH_MARKERS = 40  # above this, markers would hide the line's shape
NUM_COLORS = 10  # matplotlib's default cycle ("tab10"): C0..C9

# Keys of a training-log row drawn in the lower panel, in legend order.
METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")

Series = dict[str, tuple[Sequence[float], Sequence[float]]]


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


def _check_ylim(ylim: tuple[float, float] | None) -> tuple[float, float] | None:
    if ylim is None:
        return None
    lo, hi = float(ylim[0]), float(ylim[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"axis limits must be finite with lo < hi, got {ylim}")
    return lo, hi


def _points(label: str, xs: Sequence[float], ys: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``xs, ys`` as float arrays where a point with a non-finite coordinate is NaN, which breaks the line."""
    if len(xs) != len(ys):
        raise ValueError(f"series {label!r}: {len(xs)} x values but {len(ys)} y values")
    x, y = np.asarray(xs, dtype=float).reshape(-1), np.asarray(ys, dtype=float).reshape(-1)
    bad = ~(np.isfinite(x) & np.isfinite(y))
    x[bad], y[bad] = np.nan, np.nan
    return x, y


def _isolated(x: np.ndarray) -> np.ndarray:
    """Bool mask of finite points with no finite neighbour: a line alone would not show them."""
    finite = np.isfinite(x)
    before = np.concatenate(([False], finite[:-1]))
    after = np.concatenate((finite[1:], [False]))
    return finite & ~before & ~after


def _new_figure(width: int, height: int) -> Figure:
    """A figure of exactly ``width`` x ``height`` pixels, attached to an Agg canvas."""
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _draw_panel(
    axes: Axes, series: Series, *, title: str, xlabel: str, ylabel: str, ylim: tuple[float, float] | None
) -> None:
    """Curves, grid, labels and legend of one panel; series with an empty label stay out of the legend."""
    data = [(label, *_points(label, xs, ys)) for label, (xs, ys) in series.items()]
    finite_x = np.concatenate([x[np.isfinite(x)] for _, x, _ in data]) if data else np.empty(0)
    markers = finite_x.size <= MAX_POINTS_WITH_MARKERS
    for index, (label, x, y) in enumerate(data):
        color = f"C{index % NUM_COLORS}"
        axes.plot(x, y, color=color, linewidth=2, marker="o" if markers else None, markersize=4, label=label or None)
        lone = _isolated(x)
        if not markers and lone.any():
            axes.plot(x[lone], y[lone], color=color, linestyle="none", marker="o", markersize=4)
    if finite_x.size == 0:
        axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", va="center", color="0.4")
    elif np.all(finite_x == np.round(finite_x)):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and ranks: no 2.5 ticks
    if ylim is not None:
        axes.set_ylim(*ylim)
    axes.grid(True, color="0.9")
    axes.set_axisbelow(True)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if any(label for label, _, _ in data):
        axes.legend(loc="best")  # "best" puts it where it hides the fewest points


def _save_png(figure: Figure, path: Path) -> None:
    """Render to memory first, so a failed render leaves no file and the write itself is atomic."""
    buffer = io.BytesIO()
    figure.canvas.print_png(buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def _line_figure(
    series: Series, *, title: str, xlabel: str, ylabel: str, size: tuple[int, int], ylim: tuple[float, float] | None
) -> Figure:
    figure = _new_figure(*_check_size(size))
    _draw_panel(figure.add_subplot(), series, title=title, xlabel=xlabel, ylabel=ylabel, ylim=_check_ylim(ylim))
    return figure


def line_plot(
    series: Series,
    path: str | os.PathLike,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (800, 500),
    ylim: tuple[float, float] | None = None,
) -> None:
    """Plot ``{label: (xs, ys)}`` as coloured lines with grid and legend; save a ``size``-pixel PNG atomically.

    Each series has its own xs, so runs evaluated at different steps share one x axis. Non-finite points are
    skipped (the line breaks there); a lone point is drawn as a dot; ``ylim`` fixes the y range and clips.
    """
    path = _check_png(path)
    figure = _line_figure(series, title=title, xlabel=xlabel, ylabel=ylabel, size=size, ylim=ylim)
    _save_png(figure, path)


def panel_plot(
    panels: Sequence[tuple[str, str, Series]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    size: tuple[int, int] = (1200, 420),
) -> None:
    """Panels side by side, each ``(title, ylabel, series)`` drawn as ``line_plot`` draws one, sharing ``xlabel``;
    save a ``size``-pixel PNG atomically."""
    path = _check_png(path)
    if not panels:
        raise ValueError("panel_plot needs at least one panel")
    figure = _new_figure(*_check_size(size))
    for index, (title, ylabel, series) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        _draw_panel(axes, series, title=title, xlabel=xlabel, ylabel=ylabel, ylim=None)
        axes.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))  # narrow panels: labels must not touch
    _save_png(figure, path)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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


def _training_figure(log_rows: list[dict], panel_size: tuple[int, int], path: Path) -> Figure:
    width, height = _check_size(panel_size)
    loss_keys = [k for k in dict.fromkeys(k for row in log_rows for k in row) if str(k).startswith("loss")]
    panels = [
        (_log_series(log_rows, loss_keys), "Training losses", "loss"),
        (_log_series(log_rows, METRIC_KEYS), "Evaluation", "score (%)"),
    ]
    panels = [panel for panel in panels if panel[0]]
    if not panels:
        raise EcnreidError(f"{path}: no training-log row has a numeric 'epoch' and a loss or metric")
    figure = _new_figure(width, height * len(panels))
    for axes, (series, title, ylabel) in zip(figure.subplots(len(panels), 1, squeeze=False)[:, 0], panels, strict=True):
        _draw_panel(axes, series, title=title, xlabel="epoch", ylabel=ylabel, ylim=None)
    return figure


def training_curves_png(
    log_rows: list[dict], path: str | os.PathLike, *, panel_size: tuple[int, int] = (800, 380)
) -> None:
    """Two stacked panels in one PNG: losses against epoch, then rank-1/mAP against epoch.

    Every numeric ``loss*`` key in the rows becomes a loss curve; ``rank1``, ``rank5``, ``rank10``, ``mAP``
    and ``mINP`` go to the lower panel as logged (in %, see ``evaluation.evaluator.metrics_row``). A row
    missing a key is skipped for that curve; a panel with no curve at all is left out.
    """
    path = _check_png(path)
    _save_png(_training_figure(log_rows, panel_size, path), path)


def _cmc_series(cmc: Sequence[float], label: str, extra: dict[str, Sequence[float]] | None) -> Series:
    # Without a label the main curve stays out of the legend, unless other curves need telling apart.
    curves = {label or ("CMC" if extra else ""): cmc, **(extra or {})}
    series: Series = {}
    for name, values in curves.items():
        values = [float(v) for v in values]
        if any(math.isfinite(v) and not -1e-6 <= v <= 1 + 1e-6 for v in values):
            raise ValueError(f"CMC curve {name!r} must hold fractions in [0, 1], got max {max(values)}")
        series[name] = (list(range(1, len(values) + 1)), [100.0 * v for v in values])
    return series


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
    series = _cmc_series(cmc, label, extra)
    line_plot(series, path, title="CMC curve", xlabel="rank", ylabel="matching rate (%)", size=size)
