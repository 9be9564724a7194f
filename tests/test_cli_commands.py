"""User paths through the command line that end in files and exit codes: `prepare --check` on a complete and an
incomplete set, `train --resume` against a straight run, and training on a pseudo-camera CamStyle set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ecnreid.cli import app
from ecnreid.data.camstyle_dataset import PSEUDO_CAMERAS_FILE

runner = CliRunner()


def said(result) -> str:
    return " ".join(result.output.split())  # rich wraps long lines at the runner's width


def prepare_colour(root: Path, *extra: str) -> None:
    args = ["prepare", "--dataset", "synthetic", "--root", str(root), "--method", "colour", "--workers", "0"]
    result = runner.invoke(app, [*args, "--device", "cpu", *extra])
    assert result.exit_code == 0, result.output


def train_args(source: Path, target: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--source", "synthetic", "--source-root", str(source), "--target", "synthetic"]
    args += ["--target-root", str(target), "--arch", "resnet18", "--no-pretrained", "--height", "32", "--width", "16"]
    args += ["--batch-size", "8", "--workers", "0", "--device", "cpu", "--eval-every", "0", "--out", str(out)]
    return [*args, *extra]


def test_prepare_check_exits_0_on_a_complete_set_and_1_naming_what_is_missing(two_domains) -> None:
    _, target = two_domains
    prepare_colour(target)
    camstyle = target / "bounding_box_train_camstyle"
    complete = runner.invoke(app, ["prepare", "--check", str(camstyle)])
    assert complete.exit_code == 0, complete.output
    text = said(complete)
    assert "incomplete" not in text and "24 training images x 2 other cameras: 48/48 present" in text
    removed = sorted(camstyle.glob("*_fake_*.jpg"))[::10]  # 5 of 48
    for path in removed:
        path.unlink()
    incomplete = runner.invoke(app, ["prepare", "--check", str(target)])  # the dataset folder works too
    assert incomplete.exit_code == 1
    text = said(incomplete)
    assert "incomplete" in text and "43/48 present" in text and "5 missing:" in text
    assert removed[0].name in text and "Traceback" not in text


def test_prepare_check_of_a_folder_that_is_no_camstyle_set_is_a_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", "--check", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().startswith("error:") and str(tmp_path / "nowhere") in said(result)


@pytest.mark.slow
def test_train_resume_continues_to_the_straight_runs_weights_and_memory(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    straight = runner.invoke(app, train_args(source, target, tmp_path / "straight", "--epochs", "2", "--no-camera"))
    assert straight.exit_code == 0, straight.output
    first = runner.invoke(app, train_args(source, target, tmp_path / "resumed", "--epochs", "1", "--no-camera"))
    assert first.exit_code == 0, first.output
    resumed = runner.invoke(
        app, train_args(source, target, tmp_path / "resumed", "--epochs", "2", "--no-camera", "--resume")
    )
    assert resumed.exit_code == 0, resumed.output
    assert "resumed" in said(resumed) and "at epoch 1" in said(resumed)
    a = torch.load(tmp_path / "straight" / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "last.pt", map_location="cpu", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert torch.equal(a["method"]["memory"]["features"], b["method"]["memory"]["features"])
    logged = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in logged] == [1, 2]
    assert logged[-1]["loss_total"] == a["history"][-1]["loss_total"]


def test_training_on_a_pseudo_camera_camstyle_set(two_domains, tmp_path: Path) -> None:
    """`prepare --pseudo-cameras 2` groups the target's images into 2 style clusters; training then draws
    camera styles among those 2 clusters, not among the 3 cameras of the file names."""
    source, target = two_domains
    prepare_colour(target, "--pseudo-cameras", "2")
    camstyle = target / "bounding_box_train_camstyle"
    mapping = json.loads((camstyle / PSEUDO_CAMERAS_FILE).read_text())
    assert len(mapping) == 24 and set(mapping.values()) == {0, 1}
    assert len(list(camstyle.glob("*_fake_*.jpg"))) == 24  # one other pseudo camera per image
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(source, target, out, "--epochs", "1"))
    assert result.exit_code == 0, result.output
    assert "2 cameras" in said(result)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["setting"] == "+E+C+N"
    assert metrics["camstyle"] == {"dir": str(camstyle), "scheme": "stargan", "expected": 24, "present": 24,
                                   "coverage": 1.0}
