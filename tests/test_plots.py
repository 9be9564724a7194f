"""Pillow line plots: tick arithmetic by hand, and the drawn PNGs checked by their pixels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecnreid.errors import EcnreidError
from ecnreid.plots import (
    PALETTE,
    cmc_curve_png,
    format_tick,
    line_plot,
    nice_step,
    nice_ticks,
    training_curves_png,
)

# A legend swatch is about 22 x 3 pixels; a curve across the plot is several hundred.
CURVE_PIXELS = 300


def _pixels_of(image: Image.Image, color: tuple[int, int, int], tol: float = 30.0) -> np.ndarray:
    """Bool [H, W]: pixels within ``tol`` of ``color``."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return np.linalg.norm(array - np.array(color, dtype=np.float32), axis=2) < tol


def _open_png(path: Path, size: tuple[int, int]) -> Image.Image:
    image = Image.open(path)
    assert image.format == "PNG"
    assert image.size == size
    return image


def test_nice_steps_and_ticks():
    assert nice_step(10, 5) == 2
    assert nice_step(7, 5) == 2  # 1.4 rounds up to 2
    assert nice_step(1, 4) == 0.25
    assert nice_step(0.03, 5) == pytest.approx(0.01)
    assert nice_step(300, 5) == 100  # 60 -> 100
    assert nice_ticks(0, 1, 0.2) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0.05, 0.95, 0.25) == [0.25, 0.5, 0.75]
    assert nice_ticks(-3, 3, 2) == [-2, 0, 2]
    assert format_tick(0.25, 0.25) == "0.25"
    assert format_tick(0.3, 0.1) == "0.3"
    assert format_tick(20, 5) == "20"
    assert format_tick(2e7, 1e7) == "2e+07"


def test_line_plot_draws_each_series_in_its_colour(tmp_path: Path):
    path = tmp_path / "plot.png"
    xs = list(range(10))
    line_plot(
        {"a": (xs, [1.0] * 10), "b": (xs, [float(x) for x in xs])},
        path,
        title="t",
        xlabel="x",
        ylabel="y",
        size=(640, 400),
    )
    image = _open_png(path, (640, 400))
    assert _pixels_of(image, PALETTE[0]).sum() > CURVE_PIXELS
    assert _pixels_of(image, PALETTE[1]).sum() > CURVE_PIXELS
    assert _pixels_of(image, PALETTE[2]).sum() == 0  # no third series, no third colour


def test_non_finite_values_are_skipped_and_break_the_line(tmp_path: Path):
    xs = [0, 1, 2, 3, 4]
    line_plot({"": (xs, [1.0, 2.0, 1.0, 2.0, 1.0])}, tmp_path / "full.png", title="", xlabel="", ylabel="")
    line_plot({"": (xs, [1.0, 2.0, math.nan, 2.0, 1.0])}, tmp_path / "gap.png", title="", xlabel="", ylabel="")
    full = _pixels_of(Image.open(tmp_path / "full.png"), PALETTE[0]).sum()
    gap = _pixels_of(Image.open(tmp_path / "gap.png"), PALETTE[0]).sum()
    assert full > CURVE_PIXELS
    assert 0.3 * full < gap < 0.7 * full  # two of the four segments are gone

    line_plot(
        {"a": (xs, [1, 2, 3, 4, 5]), "b": (xs, [math.nan, math.inf, -math.inf, math.nan, math.nan])},
        tmp_path / "nan.png",
        title="nan",
        xlabel="x",
        ylabel="y",
    )
    image = Image.open(tmp_path / "nan.png")
    assert _pixels_of(image, PALETTE[0]).sum() > CURVE_PIXELS
    assert 0 < _pixels_of(image, PALETTE[1]).sum() < 150  # the legend swatch only

    line_plot({"empty": ([], [])}, tmp_path / "empty.png", title="nothing", xlabel="x", ylabel="y")
    _open_png(tmp_path / "empty.png", (800, 500))


def test_one_point_and_constant_series(tmp_path: Path):
    line_plot({"": ([3], [0.5])}, tmp_path / "one.png", title="", xlabel="", ylabel="")
    dot = _pixels_of(Image.open(tmp_path / "one.png"), PALETTE[0])
    assert 10 < dot.sum() < 100  # one marker, no legend (empty label)

    line_plot(
        {"": ([0, 1, 2, 3], [5.0] * 4)}, tmp_path / "flat.png", title="flat", xlabel="x", ylabel="y", size=(600, 400)
    )
    rows = np.nonzero(_pixels_of(Image.open(tmp_path / "flat.png"), PALETTE[0]))[0]
    assert rows.size > CURVE_PIXELS
    assert rows.max() - rows.min() <= 8  # a horizontal line...
    assert 0.3 * 400 < rows.mean() < 0.7 * 400  # ...in the middle of a range built around the value


def test_ylim_clips_points_outside(tmp_path: Path):
    line_plot(
        {"": ([0, 1, 2], [5.0, 6.0, 7.0])}, tmp_path / "clip.png", title="", xlabel="", ylabel="", ylim=(0.0, 1.0)
    )
    assert _pixels_of(Image.open(tmp_path / "clip.png"), PALETTE[0]).sum() == 0


def test_bad_plot_arguments(tmp_path: Path):
    with pytest.raises(ValueError, match="x values"):
        line_plot({"a": ([1, 2], [1])}, tmp_path / "a.png", title="", xlabel="", ylabel="")
    with pytest.raises(EcnreidError, match=r"\.png"):
        line_plot({"a": ([1], [1])}, tmp_path / "a.jpg", title="", xlabel="", ylabel="")
    with pytest.raises(ValueError, match="size"):
        line_plot({"a": ([1], [1])}, tmp_path / "a.png", title="", xlabel="", ylabel="", size=(50, 50))
    with pytest.raises(ValueError, match="limits"):
        line_plot({"a": ([1], [1])}, tmp_path / "a.png", title="", xlabel="", ylabel="", ylim=(1.0, 1.0))


def test_training_curves_with_partial_rows(tmp_path: Path):
    rows = [
        {"epoch": 0, "loss_total": 3.0, "loss_source": 2.0, "lr": 0.1},
        {"epoch": 1, "loss_total": 2.5, "loss_source": 1.5, "loss_target": 1.0},
        {"epoch": 2, "loss_total": 2.0, "rank1": 40.0, "mAP": 20.0},
        {"loss_total": 9.0},  # no epoch: skipped
        {"epoch": 3, "loss_total": 1.8, "loss_source": 1.2, "loss_target": 0.8, "rank1": 50.0},
        {"epoch": 4, "loss_total": None, "rank1": 55.0, "mAP": 30.0},
    ]
    path = tmp_path / "curves.png"
    training_curves_png(rows, path, panel_size=(600, 300))
    image = _open_png(path, (600, 600))
    top, bottom = image.crop((0, 0, 600, 300)), image.crop((0, 300, 600, 600))
    # top panel: loss_total, loss_source, loss_target; bottom panel: rank1, mAP (palette restarts per panel)
    for color in PALETTE[:3]:
        assert _pixels_of(top, color).sum() > 100
    assert _pixels_of(top, PALETTE[3]).sum() == 0  # "lr" is not a loss
    for color in PALETTE[:2]:
        assert _pixels_of(bottom, color).sum() > 100
    assert _pixels_of(bottom, PALETTE[2]).sum() == 0


def test_training_curves_without_metrics_or_rows(tmp_path: Path):
    training_curves_png(
        [{"epoch": 0, "loss_total": 1.0}, {"epoch": 1, "loss_total": 0.5}], tmp_path / "l.png", panel_size=(500, 300)
    )
    _open_png(tmp_path / "l.png", (500, 300))  # one panel: there is no metric to show
    with pytest.raises(EcnreidError, match="epoch"):
        training_curves_png([{"loss_total": 1.0}, {"epoch": 2, "lr": 0.1}], tmp_path / "none.png")


def test_cmc_curve(tmp_path: Path):
    cmc = [0.5, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 1.0]
    cmc_curve_png(cmc, tmp_path / "cmc.png", label="ours", extra={"re-ranked": [0.6] * 10})
    image = _open_png(tmp_path / "cmc.png", (800, 500))
    assert _pixels_of(image, PALETTE[0]).sum() > CURVE_PIXELS
    assert _pixels_of(image, PALETTE[1]).sum() > CURVE_PIXELS
    with pytest.raises(ValueError, match="fractions"):
        cmc_curve_png([50.0, 70.0], tmp_path / "pct.png")
