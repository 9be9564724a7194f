"""matplotlib line plots: PNG files of the asked size, written atomically, and the figures' content.

Pixels are never compared with fixed values (fonts and anti-aliasing differ between machines); what a
plot shows is checked on the matplotlib figure (lines, legend, limits), the file with Pillow.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecnreid.errors import EcnreidError
from ecnreid.plots import (
    _cmc_series,
    _line_figure,
    _training_figure,
    cmc_curve_png,
    line_plot,
    panel_plot,
    training_curves_png,
)

LABELS = {"title": "t", "xlabel": "x", "ylabel": "y"}


def _open_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The image as an RGB array, after checking that the file is a valid PNG of ``size`` pixels."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size
        return np.asarray(image.convert("RGB"))


def _legend(axes) -> list[str]:
    legend = axes.get_legend()
    return [] if legend is None else [text.get_text() for text in legend.get_texts()]


def _figure(series, **kwargs):
    return _line_figure(series, **{**LABELS, "size": (800, 500), "ylim": None, **kwargs})


@pytest.mark.parametrize("size", [(800, 500), (200, 150), (637, 411)])
def test_png_has_the_requested_pixel_size(tmp_path: Path, size: tuple[int, int]):
    path = tmp_path / "plot.png"
    line_plot({"a": ([0, 1, 2], [1.0, 3.0, 2.0])}, path, **LABELS, size=size)
    _open_png(path, size)


def test_a_second_series_adds_a_line_and_a_legend_entry(tmp_path: Path):
    xs = list(range(10))
    one = {"a": (xs, [1.0] * 10)}
    two = {**one, "b": (xs, [float(x) for x in xs])}
    line_plot(one, tmp_path / "one.png", **LABELS)
    line_plot(two, tmp_path / "two.png", **LABELS)
    pixels_one, pixels_two = _open_png(tmp_path / "one.png", (800, 500)), _open_png(tmp_path / "two.png", (800, 500))
    assert (pixels_one != pixels_two).any()
    assert (pixels_two < 250).any(axis=2).sum() > (pixels_one < 250).any(axis=2).sum()  # more ink

    axes = _figure(two).axes[0]
    assert _legend(axes) == ["a", "b"]
    colors = {line.get_label(): line.get_color() for line in axes.lines}
    assert colors["a"] != colors["b"]


def test_series_with_empty_label_stays_out_of_the_legend():
    assert _figure({"": ([0, 1], [0.0, 1.0])}).axes[0].get_legend() is None
    assert _legend(_figure({"": ([0, 1], [0.0, 1.0]), "b": ([0, 1], [1.0, 0.0])}).axes[0]) == ["b"]


def test_non_finite_points_break_the_line_without_crashing(tmp_path: Path):
    xs = [0, 1, 2, 3, 4]
    series = {
        "gap": (xs, [1.0, 2.0, math.nan, 2.0, 1.0]),
        "inf": (xs, [math.inf, 1.0, 1.5, -math.inf, 2.0]),
        "none": (xs, [math.nan] * 5),
    }
    line_plot(series, tmp_path / "nan.png", **LABELS)
    _open_png(tmp_path / "nan.png", (800, 500))

    lines = {line.get_label(): line for line in _figure(series).axes[0].lines}
    gap_y = np.asarray(lines["gap"].get_ydata(), dtype=float)
    assert np.isnan(gap_y[2]) and np.isfinite(np.delete(gap_y, 2)).all()  # a NaN in the data breaks the line
    inf_y = np.asarray(lines["inf"].get_ydata(), dtype=float)
    assert np.isnan(inf_y[[0, 3]]).all()  # infinities become breaks too, not points off the chart
    axes = _figure(series).axes[0]
    assert all(math.isfinite(v) for v in axes.get_ylim())


def test_empty_and_all_nan_plots_say_no_data(tmp_path: Path):
    for name, series in (("empty", {"empty": ([], [])}), ("nan", {"nan": ([0, 1], [math.nan, math.nan])})):
        line_plot(series, tmp_path / f"{name}.png", **LABELS)
        _open_png(tmp_path / f"{name}.png", (800, 500))
        assert "no data" in [text.get_text() for text in _figure(series).axes[0].texts]


def test_lone_points_get_a_marker_even_on_long_series():
    ys = [float(i % 7) for i in range(100)]
    ys[49] = ys[51] = math.nan  # point 50 has no neighbour to draw a line to
    axes = _figure({"long": (list(range(100)), ys)}).axes[0]
    dots = [line for line in axes.lines if line.get_linestyle() == "None"]
    assert len(dots) == 1 and list(dots[0].get_xdata()) == [50.0]
    assert axes.lines[0].get_marker() in (None, "None", "")  # 100 points: no markers on the line itself

    single = _figure({"": ([3], [0.5])}).axes[0]
    assert single.lines[0].get_marker() == "o"


def test_constant_series_gets_a_range_around_its_value():
    lo, hi = _figure({"flat": ([0, 1, 2, 3], [5.0] * 4)}).axes[0].get_ylim()
    assert lo < 5.0 < hi


def test_ylim_fixes_the_range_and_integer_x_gets_integer_ticks():
    axes = _figure({"a": ([0, 1, 2], [5.0, 6.0, 7.0])}, ylim=(0.0, 1.0)).axes[0]
    assert axes.get_ylim() == (0.0, 1.0)
    ticks = [t for t in axes.get_xticks() if 0 <= t <= 2]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_write_is_atomic_and_a_failed_plot_writes_nothing(tmp_path: Path):
    path = tmp_path / "plot.png"
    line_plot({"a": ([0, 1], [0.0, 1.0])}, path, **LABELS)
    line_plot({"a": ([0, 1], [1.0, 0.0])}, path, **LABELS, size=(400, 300))  # overwrite in place
    _open_png(path, (400, 300))
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temp file left next to it

    with pytest.raises(ValueError, match="x values"):
        line_plot({"a": ([1, 2], [1])}, tmp_path / "bad.png", **LABELS)
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_bad_plot_arguments(tmp_path: Path):
    with pytest.raises(EcnreidError, match=r"\.png"):
        line_plot({"a": ([1], [1])}, tmp_path / "a.jpg", **LABELS)
    with pytest.raises(ValueError, match="size"):
        line_plot({"a": ([1], [1])}, tmp_path / "a.png", **LABELS, size=(50, 50))
    with pytest.raises(ValueError, match="limits"):
        line_plot({"a": ([1], [1])}, tmp_path / "a.png", **LABELS, ylim=(1.0, 1.0))
    with pytest.raises(EcnreidError, match=r"\.png"):
        training_curves_png([{"epoch": 0, "loss_total": 1.0}], tmp_path / "curves.pdf")
    with pytest.raises(EcnreidError, match=r"\.png"):
        cmc_curve_png([0.5, 1.0], tmp_path / "cmc")
    assert list(tmp_path.iterdir()) == []


def test_training_curves_with_partial_rows(tmp_path: Path):
    rows = [
        {"epoch": 0, "loss_total": 3.0, "loss_source": 2.0, "lr": 0.1},
        {"epoch": 1, "loss_total": 2.5, "loss_source": 1.5, "loss_target": 1.0},
        {"epoch": 2, "loss_total": 2.0, "rank1": 40.0, "mAP": 20.0},
        {"loss_total": 9.0},  # no epoch: skipped
        {"epoch": 3, "loss_total": 1.8, "loss_source": 1.2, "loss_target": 0.8, "rank1": 50.0},
        {"epoch": 4, "loss_total": None, "rank1": 55.0, "mAP": 30.0},
        {"epoch": 5, "loss_total": 1.5, "rank1": math.nan, "mAP": None},  # a failed evaluation
    ]
    path = tmp_path / "curves.png"
    training_curves_png(rows, path, panel_size=(600, 300))
    _open_png(path, (600, 600))  # two panels stacked

    losses, scores = _training_figure(rows, (600, 300), path).axes
    assert _legend(losses) == ["loss_total", "loss_source", "loss_target"]  # "lr" is not a loss
    assert _legend(scores) == ["rank1", "mAP"]  # metrics nobody logged get no curve
    lines = {line.get_label(): line for line in scores.lines}
    assert list(lines["rank1"].get_xdata())[:3] == [2.0, 3.0, 4.0]
    assert list(lines["mAP"].get_xdata()) == [2.0, 4.0]
    total = {line.get_label(): line for line in losses.lines}["loss_total"]
    assert list(total.get_xdata()) == [0.0, 1.0, 2.0, 3.0, 5.0]


def test_training_curves_without_metrics_or_rows(tmp_path: Path):
    rows = [{"epoch": 0, "loss_total": 1.0}, {"epoch": 1, "loss_total": 0.5}]
    training_curves_png(rows, tmp_path / "l.png", panel_size=(500, 300))
    _open_png(tmp_path / "l.png", (500, 300))  # one panel: there is no metric to show
    with pytest.raises(EcnreidError, match="epoch"):
        training_curves_png([{"loss_total": 1.0}, {"epoch": 2, "lr": 0.1}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_cmc_curve(tmp_path: Path):
    cmc = [0.5, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 1.0]
    cmc_curve_png(cmc, tmp_path / "cmc.png", label="ours", extra={"re-ranked": [0.6] * 10})
    _open_png(tmp_path / "cmc.png", (800, 500))
    axes = _figure(_cmc_series(cmc, "ours", {"re-ranked": [0.6] * 10})).axes[0]
    assert _legend(axes) == ["ours", "re-ranked"]
    ours = axes.lines[0]
    assert list(ours.get_xdata()) == list(range(1, 11))  # ranks start at 1
    assert list(ours.get_ydata())[:2] == [50.0, 70.0]  # fractions are drawn in %
    assert _figure(_cmc_series(cmc, "", None)).axes[0].get_legend() is None  # one unnamed curve: no legend
    with pytest.raises(ValueError, match="fractions"):
        cmc_curve_png([50.0, 70.0], tmp_path / "pct.png")
    assert not (tmp_path / "pct.png").exists()


def test_panel_plot_draws_each_panel_side_by_side(tmp_path: Path):
    xs = [1000, 2000, 3000]
    left = ("R1", "%", {"a": (xs, [10.0, 20.0, 30.0])})
    right = ("ratio", "x", {"b": (xs, [1.0, 1.5, 2.0])})
    panel_plot([left], tmp_path / "one.png", xlabel="step", size=(900, 300))
    panel_plot([left, right], tmp_path / "two.png", xlabel="step", size=(900, 300))
    one, two = _open_png(tmp_path / "one.png", (900, 300)), _open_png(tmp_path / "two.png", (900, 300))
    # The second panel takes the right half: its curve and frame put ink where the single panel has its own.
    assert (one != two).any()
    assert (two[:, 450:] < 250).any(axis=2).sum() > 0
    with pytest.raises(ValueError, match="at least one panel"):
        panel_plot([], tmp_path / "none.png", xlabel="step")
    with pytest.raises(EcnreidError, match="must end in .png"):
        panel_plot([left], tmp_path / "plot.jpg", xlabel="step")
