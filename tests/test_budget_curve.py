"""Tests for experiments/budget_curve.py: steps from either config format, the ratio table, the figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from experiment_scripts import load_experiment, run_experiment
from PIL import Image


def _main(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    run_experiment(monkeypatch, "budget_curve", *args)


def _run_folder(folder: Path, config: dict, evaluations: dict[int, tuple[float, float]]) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    rows = []
    for epoch in range(1, 21):
        row = {"epoch": epoch, "loss_total": 1.0}
        if epoch in evaluations:
            row.update(rank1=evaluations[epoch][0], mAP=evaluations[epoch][1])
        rows.append(json.dumps(row))
    (folder / "log.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_table_ratios_and_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # The baseline has today's config tree, the other run an earlier flat config.json: both give 50 steps/epoch.
    base = _run_folder(tmp_path / "base", {"optim": {"iters_per_epoch": 50}}, {10: (20.0, 10.0), 20: (25.0, 10.0)})
    ecn = _run_folder(tmp_path / "ecn", {"iters_per_epoch": 50}, {10: (30.0, 15.0), 20: (50.0, 25.0)})
    out = tmp_path / "curve.png"
    _main(monkeypatch, "--baseline", f"src={base}", "--run", f"ecn={ecn}", "--out", str(out))
    lines = capsys.readouterr().out.splitlines()
    assert "| 500 | 20.0 / 10.0 | 30.0 / 15.0 | ×1.50, ×1.50 |" in lines
    assert "| 1,000 | 25.0 / 10.0 | 50.0 / 25.0 | ×2.00, ×2.50 |" in lines
    assert json.loads(lines[-1])["runs"]["ecn"]["1000"] == {"rank1": 50.0, "mAP": 25.0}
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1600, 420)


def _error(monkeypatch: pytest.MonkeyPatch, capsys, *args: str) -> str:
    """The one line a bad input stops the script with (exit 2)."""
    with pytest.raises(SystemExit) as stop:
        _main(monkeypatch, *args)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_a_run_without_evaluations_or_files_stops_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    base = _run_folder(tmp_path / "base", {"iters_per_epoch": 50}, {})
    out = ("--out", str(tmp_path / "c.png"))
    log = base / "log.jsonl"
    no_evaluation = f"budget_curve.py: error: {log}: no evaluation logged yet\n"
    assert _error(monkeypatch, capsys, "--baseline", f"src={base}", "--run", f"ecn={base}", *out) == no_evaluation
    missing = tmp_path / "none"
    assert _error(monkeypatch, capsys, "--baseline", f"src={missing}", "--run", f"ecn={base}", *out) == (
        f"budget_curve.py: error: {missing / 'config.json'}: No such file or directory\n"
    )
    assert not (tmp_path / "c.png").exists()


def test_a_recorded_curve_stands_for_its_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # The JSON record written by one figure names a run in the next, by its label.
    base = _run_folder(tmp_path / "base", {"optim": {"iters_per_epoch": 50}}, {10: (20.0, 10.0), 20: (25.0, 10.0)})
    ecn = _run_folder(tmp_path / "ecn", {"optim": {"iters_per_epoch": 50}}, {10: (30.0, 15.0), 20: (50.0, 25.0)})
    record = tmp_path / "curves.json"
    args = ("--out", str(tmp_path / "a.png"), "--json", str(record))
    _main(monkeypatch, "--baseline", f"src={base}", "--run", f"ecn={ecn}", *args)
    first = capsys.readouterr().out
    assert json.loads(record.read_text()) == json.loads(first.splitlines()[-1])
    _main(monkeypatch, "--baseline", f"src={record}", "--run", f"ecn={record}", "--out", str(tmp_path / "b.png"))
    assert capsys.readouterr().out == first
    message = _error(monkeypatch, capsys, "--baseline", f"src={record}", "--run", f"spcl={record}", "--out", "c.png")
    assert message == f"budget_curve.py: error: {record}: no curve labelled 'spcl' (it has 'src', 'ecn')\n"


def test_a_run_keeps_its_colour_in_every_panel_and_the_baseline_ratio_is_one() -> None:
    # panel_plot colours a panel's series by their order, so one order in every panel is one colour per run.
    runs = {
        "src": {500: {"rank1": 20.0, "mAP": 10.0}, 1000: {"rank1": 25.0, "mAP": 10.0}},
        "ecn": {500: {"rank1": 30.0, "mAP": 15.0}, 1000: {"rank1": 50.0, "mAP": 25.0}},
        "spcl": {1000: {"rank1": 40.0, "mAP": 20.0}},
    }
    panels = load_experiment("budget_curve").curve_panels(runs, "src")
    assert [title for title, _, _ in panels] == ["rank-1 (%)", "mAP (%)", "rank-1 ÷ src", "mAP ÷ src"]
    assert all(list(series) == ["src", "ecn", "spcl"] for _, _, series in panels)
    ratio_r1, ratio_map = panels[2][2], panels[3][2]
    assert ratio_r1["src"] == ([500, 1000], [1.0, 1.0])
    assert ratio_r1["ecn"] == ([500, 1000], [1.5, 2.0]) and ratio_map["ecn"] == ([500, 1000], [1.5, 2.5])
    assert ratio_map["spcl"] == ([1000], [2.0])
