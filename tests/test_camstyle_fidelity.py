"""`ecnreid prepare --check DIR --score` through the CLI: a planted camera style is found in fakes that carry
it and not in copies of the originals; identical images keep the identity; the files; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from inference_checkpoint import train_tiny_checkpoint
from PIL import Image
from typer.testing import CliRunner

from ecnreid.cli import app
from ecnreid.data.camstyle_names import stargan_name

runner = CliRunner()
CAMERAS = 3
# Each camera's style: white-balance gains, an exposure offset and sensor noise (what CamStyle should carry over).
GAINS = np.array([[1.35, 0.8, 0.8], [0.8, 1.35, 0.8], [0.8, 0.8, 1.35]], dtype=np.float32)
OFFSETS = np.array([25.0, -20.0, 0.0], dtype=np.float32)
NOISE = (2.0, 8.0, 16.0)
TINY = ["--no-pretrained", "--arch", "resnet18", "--height", "64", "--width", "32", "--workers", "0"]


def _styled(scene: np.ndarray, camera: int, rng: np.random.Generator) -> Image.Image:
    pixels = scene * GAINS[camera] + OFFSETS[camera] + rng.normal(0, NOISE[camera], scene.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _target(root: Path, fakes: str, people: int = 36, per_camera: int = 3) -> Path:
    """A Market-style train split of ``people`` people in 3 styled cameras, and its CamStyle set: each scene
    rendered in the other cameras' styles (``fakes="styled"``) or the original copied (``fakes="copies"``)."""
    rng = np.random.default_rng(0)
    train, camstyle = root / "bounding_box_train", root / "bounding_box_train_camstyle"
    train.mkdir(parents=True)
    camstyle.mkdir()
    n = 0
    for pid in range(1, people + 1):
        top, bottom = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
        for camera in range(CAMERAS):
            for _ in range(per_camera):
                scene = np.empty((64, 32, 3), dtype=np.float32)
                scene[:32], scene[32:] = top, bottom
                stem = f"{pid:04d}_c{camera + 1}s1_{n:06d}_00"
                n += 1
                original = _styled(scene, camera, rng)
                original.save(train / f"{stem}.jpg", quality=95)
                for other in set(range(CAMERAS)) - {camera}:
                    fake = _styled(scene, other, rng) if fakes == "styled" else original
                    fake.save(camstyle / stargan_name(stem, other), quality=95)
    return camstyle


def _score(camstyle: Path, out: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["prepare", "--check", str(camstyle), "--score", "--out", str(out), *TINY, *extra])
    assert result.exit_code == 0, result.output
    assert "camera fidelity" in result.output
    return json.loads((out / "fidelity.json").read_text())


def test_fakes_in_the_target_cameras_style_score_high_camera_fidelity(tmp_path: Path) -> None:
    camstyle = _target(tmp_path / "market", "styled")
    summary = _score(camstyle, tmp_path / "report")

    # A random-weight backbone tells these cameras apart less well than the statistics do: its ceiling is lower.
    probe, statistics = summary["camera_probe"], summary["statistics_probe"]
    assert probe["real_accuracy"] >= 0.7 and statistics["real_accuracy"] >= 0.9
    assert probe["fake_accuracy"] >= max(0.7, probe["real_accuracy"] - 0.15) and probe["fake_still_original"] <= 0.15
    assert statistics["fake_accuracy"] >= 0.85 and statistics["fake_still_original"] <= 0.1
    sample = summary["sample"]
    assert sample["fakes"] == 2 * sample["originals"] and sample["probe_people"] + sample["original_people"] == 36
    assert "resnet18" in probe["features"] and "frozen backbone" in summary["identity"]["model"]
    assert "logistic regression" in probe["classifier"] and probe["why"]
    with Image.open(tmp_path / "report" / "fidelity.png") as picture:
        assert picture.width > CAMERAS * 64 and picture.height > 6 * 128  # a row per original shown, 6 of them
    assert not list((tmp_path / "report").glob(".*.tmp"))


def test_copies_of_the_originals_score_no_fidelity_and_keep_the_identity(tmp_path: Path) -> None:
    camstyle = _target(tmp_path / "market", "copies")
    summary = _score(camstyle, tmp_path / "report", "--score-images", "12", "--seed", "3")

    # A copy is classified exactly as its original: as its own camera as often as the ceiling says.
    probe, statistics = summary["camera_probe"], summary["statistics_probe"]
    assert probe["fake_accuracy"] <= 0.15 and probe["real_accuracy"] >= 0.7
    assert probe["fake_still_original"] == pytest.approx(probe["real_accuracy"], abs=0.05)
    assert statistics["fake_accuracy"] <= 0.05 and statistics["fake_still_original"] >= 0.9
    identity = summary["identity"]
    assert identity["fake_vs_original"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert identity["fake_vs_original"]["pairs"] == 24 and summary["sample"]["originals"] == 12
    # The default folder is beside the CamStyle set; the same seed scores the same sample the same way.
    again = runner.invoke(app, ["prepare", "--check", str(camstyle.parent), "--score", *TINY, "--score-images",
                                "12", "--seed", "3"])
    assert again.exit_code == 0, again.output
    rerun = json.loads((camstyle.parent / "bounding_box_train_camstyle_fidelity" / "fidelity.json").read_text())
    for key in ("camera_probe", "statistics_probe", "identity", "sample"):
        assert rerun[key] == summary[key]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no such folder", "--check {check}: folder does not exist"),
        ("fakes missing", "2 of the 6 CamStyle images to score are missing"),
        ("score without check", "--score: goes with --check DIR"),
        ("probe option without score", "--arch: an option of --check DIR --score"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_report_folder(tmp_path: Path, case: str, expected: str) -> None:
    camstyle = _target(tmp_path / "market", "copies", people=4, per_camera=1)
    check = tmp_path / "nothing" if case == "no such folder" else camstyle
    if case == "fakes missing":
        for fake in camstyle.glob("*_fake_2.jpg"):  # the scored person's originals in cameras 1 and 3 lose one
            fake.unlink()
    out = tmp_path / "report" / "deeper"
    args = {
        "score without check": ["prepare", "--score", "--out", str(out)],
        "probe option without score": ["prepare", "--check", str(check), "--arch", "resnet18"],
    }.get(case, ["prepare", "--check", str(check), "--score", "--out", str(out), *TINY, "--score-images", "100"])

    result = runner.invoke(app, args)

    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected.format(check=check) in lines[0], result.output
    assert not (tmp_path / "report").exists()


def test_identity_from_a_checkpoint_names_that_model(tmp_path: Path) -> None:
    checkpoint, _ = train_tiny_checkpoint(tmp_path / "run")
    camstyle = _target(tmp_path / "market", "copies", people=12, per_camera=2)
    summary = _score(camstyle, tmp_path / "report", "--checkpoint", str(checkpoint))

    identity = summary["identity"]
    assert identity["model"].startswith(f"checkpoint {checkpoint}") and "resnet18" in identity["model"]
    assert identity["fake_vs_original"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert identity["same_person_other_camera"]["pairs"] > 0 and identity["other_person_same_camera"]["pairs"] > 0
