"""Camera matching (``prepare --method capture``): tone curves, spectrum, noise and JPEG quality measured and
carried over; through the CLI: names, completeness, determinism, bad input, and a planted camera style found
by the fidelity score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_reid_tree
from PIL import Image
from typer.testing import CliRunner

from camstyle.colour import rgb_to_lab
from camstyle.generate import JPEG_QUALITY
from camstyle.matching import (
    CameraProfiles,
    camera_profiles,
    curve_probability,
    evaluate_curve,
    filter_spectrum,
    image_probability,
    jpeg_quality,
    noise_sigma,
    quantile_levels,
    render,
    spectrum_profile,
    tone_curve,
)
from ecnreid.cli import app
from ecnreid.data.camstyle_names import stargan_name
from ecnreid.data.records import ImageRecord

runner = CliRunner()


def _smooth_image(seed: int = 0, size: tuple[int, int] = (32, 16)) -> torch.Tensor:
    """(3, H, W) in [0, 1]: a few blurred blobs, with edges at every scale but no pixel-level noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size[0] // 4, size[1] // 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0]


def test_curve_probability_inverts_evaluate_curve():
    curve = torch.tensor([[0.0, 1.0, 4.0, 9.0], [-5.0, -1.0, 0.0, 10.0], [2.0, 2.5, 3.0, 3.5]])
    p = torch.linspace(0.125, 0.875, 13).expand(3, -1)
    values = evaluate_curve(curve, p)
    assert torch.allclose(curve_probability(curve, values), p, atol=1e-5)
    # Hand-worked: levels at 1/8, 3/8, 5/8, 7/8; halfway between the first two levels of channel 0 is 0.5 → p 1/4.
    assert curve_probability(curve, torch.tensor([[0.5], [-5.0], [3.5]]))[:, 0].tolist() == pytest.approx(
        [0.25, 0.125, 0.875]
    )


def test_per_image_matching_gives_the_image_the_target_distribution():
    lab = rgb_to_lab(torch.rand(3, 32, 16, generator=torch.Generator().manual_seed(1)))
    target = torch.sort(torch.randn(3, 64) * torch.tensor([[8.0], [5.0], [3.0]]) + 20, dim=1).values
    matched = evaluate_curve(target, image_probability(lab)).view_as(lab)
    assert torch.allclose(tone_curve(matched), target, atol=0.6)
    # Rank order within each channel is kept: matching is monotone.
    for own, new in zip(lab.flatten(1), matched.flatten(1), strict=True):
        order = own.argsort()
        assert (new[order].diff() >= -1e-5).all()


def test_ties_share_one_probability():
    lab = torch.zeros(3, 4, 2)
    lab[:, :2] = 5.0  # half the pixels at one value, half at another
    p = image_probability(lab)
    assert p.unique().tolist() == pytest.approx([0.25, 0.75])


def test_unit_gain_leaves_the_image_and_a_low_gain_blurs_it():
    image = torch.rand(1, 3, 32, 16, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(filter_spectrum(image, torch.ones(1, 12)), image, atol=1e-5)
    gain = torch.ones(1, 12)
    gain[0, 6:] = 1 / 3  # the upper half of the frequencies at a third
    blurred = filter_spectrum(image, gain)
    assert torch.allclose(blurred.mean(), image.mean(), atol=1e-5)  # the mean (frequency 0) is kept
    before, after = spectrum_profile(image[0, 0]), spectrum_profile(blurred[0, 0])
    assert after[8:].mean() < before[8:].mean() - 0.8  # log(3) ≈ 1.1 lower at the top
    assert torch.allclose(after[:3], before[:3], atol=0.4)


def test_noise_sigma_reads_white_noise_and_ignores_smooth_content():
    smooth = _smooth_image(size=(128, 64))[0] * 255
    noise = torch.randn(128, 64, generator=torch.Generator().manual_seed(3)) * 6.0
    assert noise_sigma(smooth) < 1.0
    assert noise_sigma(smooth + noise) == pytest.approx(6.0, rel=0.1)


@pytest.mark.parametrize("quality", [40, 75, 92])
def test_jpeg_quality_is_read_from_the_quantisation_table(tmp_path: Path, quality: int):
    path = tmp_path / "a.jpg"
    Image.fromarray(np.full((16, 8, 3), 120, dtype=np.uint8)).save(path, quality=quality)
    assert jpeg_quality(str(path)) == quality
    png = tmp_path / "a.png"
    Image.fromarray(np.full((16, 8, 3), 120, dtype=np.uint8)).save(png)
    assert jpeg_quality(str(png)) == JPEG_QUALITY


def _profiles_of(tone: torch.Tensor, spectrum: torch.Tensor, noise: list[float]) -> CameraProfiles:
    cameras = len(noise)
    return CameraProfiles(tone, spectrum, torch.tensor(noise), torch.full((cameras,), 90.0), torch.ones(cameras))


def test_render_in_the_own_camera_keeps_the_image_and_other_cameras_move_it():
    image = _smooth_image()
    lab = rgb_to_lab(image)
    dark = tone_curve(lab) - torch.tensor([[15.0], [0.0], [0.0]])  # camera 1: 15 L* darker
    tone = torch.stack([tone_curve(lab), dark])
    spectrum = torch.stack([torch.zeros(12), -torch.linspace(0, 2, 12)])  # camera 1 loses the high frequencies
    profiles = _profiles_of(tone, spectrum, [0.0, 8.0])
    draws = torch.randn(2, 3, 32, 16, generator=torch.Generator().manual_seed(4))
    same = render(image, 0, torch.tensor([0]), profiles, draws[:1], per_image=False, capture=True)[0]
    assert torch.allclose(same, image, atol=1e-3)
    other = render(image, 0, torch.tensor([1]), profiles, draws[1:], per_image=False, capture=True)[0]
    lightness = rgb_to_lab(other)[0].mean() - lab[0].mean()
    assert -18.0 < float(lightness) < -12.0
    # White noise of 8 grey levels was added (on top of what the filter took away).
    assert noise_sigma(255 * other.mean(0)) > noise_sigma(255 * image.mean(0)) + 4.0
    tone_only = render(image, 0, torch.tensor([1]), profiles, draws[1:], per_image=False, capture=False)[0]
    assert noise_sigma(255 * tone_only.mean(0)) < noise_sigma(255 * other.mean(0)) - 4.0


def _styled_tree(root: Path, people: int, per_camera: int = 2) -> list[ImageRecord]:
    """Cameras 0 and 1: bright and clean at JPEG 92; camera 2: dark, noisy, soft, at JPEG 50."""
    rng = np.random.default_rng(0)
    folder = root / "bounding_box_train"
    folder.mkdir(parents=True)
    records = []
    for pid in range(1, people + 1):
        shirt, trousers = rng.uniform(60, 200, 3), rng.uniform(30, 150, 3)
        for camera in range(3):
            for k in range(per_camera):
                pixels = np.empty((32, 16, 3))
                pixels[:16], pixels[16:] = shirt, trousers
                if camera == 2:
                    pixels = pixels * 0.6 + rng.normal(0, 10, pixels.shape)
                path = folder / f"{pid:04d}_c{camera + 1}_{k:05d}.jpg"
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                image.save(path, quality=50 if camera == 2 else 92)
                records.append(ImageRecord(str(path), pid, camera))
    return records


def test_camera_profiles_measure_each_camera(tmp_path: Path):
    profiles = camera_profiles(_styled_tree(tmp_path, people=4), 3, workers=0, progress=False)
    assert profiles.counts.tolist() == [8, 8, 8]
    assert profiles.jpeg_quality.tolist() == [92.0, 92.0, 50.0]
    assert profiles.noise[2] > 3 * profiles.noise[:2].max()
    median = profiles.tone[:, 0, len(quantile_levels()) // 2]  # median L*
    assert median[2] < median[:2].min() - 10


def _prepare(root: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--dataset", "synthetic", "--root", str(root), "--method", "capture", "--out", str(out),
            "--workers", "0", *extra]


def test_prepare_capture_writes_every_fake_once_complete_and_deterministic(tmp_path: Path):
    target = make_reid_tree(tmp_path / "target", ids=3, cameras=3, per_camera=2, test_ids=1, seed=2)
    out = tmp_path / "a"
    result = runner.invoke(app, _prepare(target, out, "--seed", "5"))
    assert result.exit_code == 0, result.output
    stems = sorted(p.stem for p in (target / "bounding_box_train").glob("*.jpg"))
    expected = {
        stargan_name(stem, camera) for stem in stems for camera in range(3) if f"_c{camera + 1}_" not in stem
    }
    assert {p.name for p in out.glob("*.jpg")} == expected and len(expected) == 18 * 2
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["method"] == "capture" and summary["written"] == 36
    assert len(summary["camera_profiles"]["jpeg_quality"]) == 3

    check = runner.invoke(app, ["prepare", "--check", str(out)])
    assert check.exit_code == 0 and "complete" in check.output

    same = tmp_path / "b"
    assert runner.invoke(app, _prepare(target, same, "--seed", "5")).exit_code == 0
    other = tmp_path / "c"
    assert runner.invoke(app, _prepare(target, other, "--seed", "6")).exit_code == 0
    assert all((out / name).read_bytes() == (same / name).read_bytes() for name in expected)
    assert any((out / name).read_bytes() != (other / name).read_bytes() for name in expected)

    # A deleted file comes back identical on a rerun; the others are skipped.
    name = sorted(expected)[0]
    kept = (out / name).read_bytes()
    (out / name).unlink()
    rerun = runner.invoke(app, _prepare(target, out, "--seed", "5"))
    assert rerun.exit_code == 0 and (out / name).read_bytes() == kept
    assert json.loads((out / "prepare.json").read_text())["written"] == 1


def test_prepare_capture_on_a_broken_image_is_one_line_and_keeps_what_was_written(tmp_path: Path):
    target = make_reid_tree(tmp_path / "target", ids=3, cameras=2, per_camera=1, test_ids=1, seed=2)
    out = tmp_path / "cs"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    broken = sorted((target / "bounding_box_train").glob("*.jpg"))[-1]
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated download

    result = runner.invoke(app, _prepare(target, out))

    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {broken}: cannot decode image"), result.output
    assert "Traceback" not in result.output and (out / "keep.txt").read_text() == "mine"


def test_a_camera_style_planted_in_the_target_is_carried_into_the_fakes(tmp_path: Path):
    """The fidelity score's statistics probe places the capture fakes in the camera they were made for."""
    root = tmp_path / "market"
    _styled_tree(root, people=24, per_camera=3)
    out = root / "bounding_box_train_camstyle"
    assert runner.invoke(app, _prepare(root, out)).exit_code == 0
    tiny = ["--no-pretrained", "--arch", "resnet18", "--height", "64", "--width", "32", "--workers", "0"]
    report = tmp_path / "report"
    result = runner.invoke(app, ["prepare", "--check", str(out), "--score", "--out", str(report), *tiny])
    assert result.exit_code == 0, result.output
    statistics = json.loads((report / "fidelity.json").read_text())["statistics_probe"]
    # Cameras 1 and 2 look alike (the probe cannot tell them apart), camera 3 is the planted style: most fakes
    # made for camera 3 must be placed there, and those made from it for cameras 1 and 2 must leave it (copies
    # of the originals would score 0 and all).
    confusion = torch.tensor(statistics["fake_confusion"])
    assert confusion[2, 2] >= 0.6 * confusion[2].sum() and confusion[2].sum() > 0
    assert confusion[:2, 2].sum() <= 0.1 * confusion[:2].sum()
