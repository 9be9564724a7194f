"""``experiments/fidelity_compare.py`` on reports that ``ecnreid prepare --check SET --score`` wrote for two
methods' sets of one target: the table holds each report's figures, the picture each report's picture under
its label, and reports of different samples stop with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_reid_tree
from experiment_scripts import run_experiment
from PIL import Image
from typer.testing import CliRunner

from ecnreid.cli import app

runner = CliRunner()
TINY = ["--no-pretrained", "--arch", "resnet18", "--height", "64", "--width", "32", "--workers", "0",
        "--score-images", "6", "--probe-images", "12"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fidelity reports of the colour and capture sets of one synthetic target, and one scored with another
    seed."""
    root = tmp_path_factory.mktemp("compare")
    target = make_reid_tree(root / "target", ids=8, cameras=3, per_camera=2, test_ids=1, seed=4)
    folders = {}
    for method, seed in [("colour", "0"), ("capture", "0"), ("capture", "1")]:
        camstyle = root / f"set_{method}"
        if not camstyle.exists():
            made = runner.invoke(app, ["prepare", "--dataset", "synthetic", "--root", str(target), "--method", method,
                                       "--out", str(camstyle), "--workers", "0"])
            assert made.exit_code == 0, made.output
        report = root / f"report_{method}_{seed}"
        scored = runner.invoke(app, ["prepare", "--check", str(camstyle), "--score", "--out", str(report), *TINY,
                                     "--seed", seed])
        assert scored.exit_code == 0, scored.output
        folders[f"{method}_{seed}"] = report
    return folders


def test_the_table_and_picture_hold_each_report(reports, tmp_path, monkeypatch, capsys):
    picture, table = tmp_path / "compare.png", tmp_path / "compare.json"
    run_experiment(monkeypatch, "fidelity_compare", "--report", f"colour={reports['colour_0']}",
                   "--report", f"tone + capture={reports['capture_0']}", "--out", str(picture), "--json", str(table))
    printed = capsys.readouterr().out
    summaries = [json.loads((reports[k] / "fidelity.json").read_text()) for k in ("colour_0", "capture_0")]
    rows = json.loads(table.read_text())
    assert [r["label"] for r in rows] == ["colour", "tone + capture"]
    for row, summary in zip(rows, summaries, strict=True):
        assert row["camera_fidelity"] == summary["camera_probe"]["fake_accuracy"]
        assert row["still_original"] == summary["camera_probe"]["fake_still_original"]
        assert row["statistics_fidelity"] == summary["statistics_probe"]["fake_accuracy"]
        assert row["identity_fake_vs_original"] == summary["identity"]["fake_vs_original"]["mean"]
        assert len(row["per_camera_fidelity"]) == 3
        fidelity = summary["camera_probe"]["fake_accuracy"]
        line = next(line for line in printed.splitlines() if line.startswith(f"| {row['label']} |"))
        assert line.split(" | ")[1] == f"{100 * fidelity:.1f} %"
        assert line.endswith(f"| {summary['identity']['fake_vs_original']['mean']:.3f} |")
    assert "12 images, seed 0" in printed

    with Image.open(reports["colour_0"] / "fidelity.png") as first, Image.open(picture) as both:
        first, both = np.asarray(first.convert("RGB")), np.asarray(both.convert("RGB"))
    with Image.open(reports["capture_0"] / "fidelity.png") as second:
        second = np.asarray(second.convert("RGB"))
    assert both.shape[1] == first.shape[1] + 16 + second.shape[1]
    height = first.shape[0]
    assert np.array_equal(both[24 : 24 + height, : first.shape[1]], first)
    assert np.array_equal(both[24 : 24 + second.shape[0], first.shape[1] + 16 :], second)
    assert both[:24].min() < 128  # the labels


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("another seed", "its sample seed is 1, colour's is 0; score every set with the same"),
        ("no report", "no fidelity.json and fidelity.png; give the --out folder"),
        ("not a report", "fidelity.json: not a fidelity report; score the set again"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(reports, tmp_path, monkeypatch, capsys, case, expected):
    second = {"another seed": reports["capture_1"], "no report": tmp_path}.get(case, tmp_path / "copy")
    if case == "not a report":
        second.mkdir()
        (second / "fidelity.png").write_bytes((reports["capture_0"] / "fidelity.png").read_bytes())
        (second / "fidelity.json").write_text('{"sample": {}}')
    picture = tmp_path / "compare.png"
    with pytest.raises(SystemExit) as stop:
        run_experiment(monkeypatch, "fidelity_compare", "--report", f"colour={reports['colour_0']}",
                       "--report", f"capture={second}", "--out", str(picture))
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fidelity_compare.py: ") and expected in lines[0], lines
    assert not picture.exists()
