"""experiments/camera_leakage.py: the camera probe finds a planted camera and not an absent one, the neighbours'
other-camera shares on hand-made features, and the script end to end on tiny trees with and without a camera
style."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from experiment_scripts import load_experiment
from inference_checkpoint import train_tiny_checkpoint
from PIL import Image


def load_script():
    return load_experiment("camera_leakage")


def _features(camera_strength: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """40 people x 3 cameras x 3 images of 16-d features: an identity centre, ``camera_strength`` times a
    camera direction, and noise."""
    generator = torch.Generator().manual_seed(seed)
    people, cameras, images = 40, 3, 3
    pids = torch.arange(1, people + 1).repeat_interleave(cameras * images)
    cams = torch.arange(cameras).repeat_interleave(images).repeat(people)
    centres = torch.randn(people + 1, 16, generator=generator)
    directions = torch.randn(cameras, 16, generator=generator)
    noise = 0.3 * torch.randn(len(pids), 16, generator=generator)
    features = centres[pids] + camera_strength * directions[cams] + noise
    return torch.nn.functional.normalize(features, dim=1), pids, cams


def test_probe_finds_a_planted_camera_and_stays_near_chance_without_one() -> None:
    leakage = load_script()
    planted = leakage.camera_probe(*_features(camera_strength=1.0), num_cameras=3, seed=0)
    absent = leakage.camera_probe(*_features(camera_strength=0.0), num_cameras=3, seed=0)
    assert planted["balanced_accuracy"] > 0.9 and planted["accuracy"] > 0.9
    assert abs(absent["balanced_accuracy"] - 1 / 3) < 0.15
    assert absent["train_accuracy"] > absent["accuracy"]  # it learnt its half's noise, which does not carry over
    for report in (planted, absent):
        assert report["chance"] == pytest.approx(1 / 3, abs=1e-4)
        assert report["majority"] == pytest.approx(1 / 3, abs=1e-4)
        assert report["taught_people"] == report["tested_people"] == 20
        assert report["taught_images"] == report["tested_images"] == 180


def test_identity_halves_are_disjoint_seeded_and_leave_distractors_out() -> None:
    leakage = load_script()
    pids = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4, 5, 6, 6, 6])
    teach, test = leakage.identity_halves(pids, seed=0)
    assert not (teach & test).any() and not (teach | test)[pids == 0].any()
    assert (teach | test)[pids != 0].all()
    assert not set(pids[teach].tolist()) & set(pids[test].tolist())
    assert len(set(pids[teach].tolist())) == 3 and len(set(pids[test].tolist())) == 3
    again, _ = leakage.identity_halves(pids, seed=0)
    assert torch.equal(teach, again)
    splits = {tuple(leakage.identity_halves(pids, seed=s)[0].tolist()) for s in range(8)}
    assert len(splits) > 1  # the seed decides the split
    with pytest.raises(leakage.EcnreidError, match="2 people or more, found 1"):
        leakage.identity_halves(torch.tensor([0, 7, 7]), seed=0)


def test_neighbour_shares_count_other_cameras_among_the_nearest_and_the_true_matches() -> None:
    leakage = load_script()
    angle = torch.tensor([0.0, 0.1, 0.2, 1.5, 1.6, 3.0])  # unit vectors on a circle: near angles, near features
    gallery = torch.stack([angle.cos(), angle.sin()], dim=1)
    gallery_ids = (torch.tensor([1, 1, 2, 2, 3, 0]), torch.tensor([0, 1, 1, 0, 0, 1]))
    query = torch.stack([torch.tensor([0.05, 1.55]).cos(), torch.tensor([0.05, 1.55]).sin()], dim=1)
    query_ids = (torch.tensor([1, 2]), torch.tensor([0, 1]))
    report = leakage.neighbour_camera_share(query, gallery, query_ids, gallery_ids, k=2)
    # Query 0 (person 1, camera 0): nearest 0 (1, cam 0), 1 (1, cam 1): one other camera, two matches, one other.
    # Query 1 (person 2, camera 1): nearest 3 (2, cam 0), 4 (3, cam 0): two other cameras, one match, other camera.
    assert report["topk_other_camera"] == pytest.approx(0.75)
    assert report["topk_true_per_query"] == pytest.approx(1.5)
    assert report["true_found_other_camera"] == pytest.approx(2 / 3, abs=1e-4)
    # The gallery: three of its six images are in camera 0, three in camera 1.
    assert report["gallery_other_camera"] == pytest.approx(0.5)
    # Person 1's two gallery images: one in another camera; person 2's two: one in another camera.
    assert report["true_in_gallery_other_camera"] == pytest.approx(0.5)
    assert report["k"] == 2 and report["queries"] == 2
    assert leakage.neighbour_camera_share(query, gallery, query_ids, gallery_ids, k=50)["k"] == 6


def _tree(root: Path, *, camera_tint: bool, people: int = 24, cameras: int = 3, seed: int = 0) -> Path:
    """A Market-style tree of two-colour people (a top and a bottom colour each); with ``camera_tint`` each
    camera adds its own strong colour cast."""
    rng = np.random.default_rng(seed)
    tints = np.array([[70.0, 0, 0], [0, 70.0, 0], [0, 0, 70.0]])[:cameras]
    clothes = rng.uniform(40, 180, (people + 1, 2, 3))
    for folder, per in (("bounding_box_train", 1), ("query", 1), ("bounding_box_test", 2)):
        out = root / folder
        out.mkdir(parents=True)
        n = 0
        for pid in range(1, people + 1):
            for cam in range(cameras):
                for _ in range(per):
                    pixels = np.concatenate([np.broadcast_to(clothes[pid, half], (16, 16, 3)) for half in (0, 1)])
                    pixels = pixels + rng.normal(0, 10, pixels.shape) + (tints[cam] if camera_tint else 0)
                    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                    image.save(out / f"{pid:04d}_c{cam + 1}s1_{n:06d}_01.jpg")
                    n += 1
    return root


@pytest.fixture(scope="module")
def random_resnet18(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18_random.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.mark.slow
def test_the_script_reports_a_planted_camera_style_and_not_an_absent_one(
    tmp_path: Path, random_resnet18: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leakage = load_script()
    checkpoint, _ = train_tiny_checkpoint(tmp_path / "tiny")
    reports = {}
    for tint in (True, False):
        root = _tree(tmp_path / f"market_{tint}", camera_tint=tint)
        out = tmp_path / f"leakage_{tint}.json"
        args = [
            "--dataset", "market1501", "--root", str(root), "--run", f"tiny ECN={checkpoint}",
            "--arch", "resnet18", "--weights", str(random_resnet18), "--workers", "0", "--batch-size", "64",
            "--out", str(out), "--png", str(tmp_path / f"leakage_{tint}.png"),
        ]
        returned = leakage.main(args)
        reports[tint] = json.loads(out.read_text())
        assert reports[tint] == json.loads(json.dumps(returned))
        with Image.open(tmp_path / f"leakage_{tint}.png") as image:
            assert image.format == "PNG" and image.width >= 600
    table = capsys.readouterr().out
    assert "Camera leakage" in table and "ImageNet only" in table and "tiny ECN" in table

    for report in reports.values():
        assert report["cameras"] == 3 and report["query"] == 72 and report["gallery"] == 144
        reference, trained = report["rows"]
        assert reference["label"] == "ImageNet only" and trained["label"] == "tiny ECN"
        # The reference takes the first run's input size (its card's 32x16) unless --height/--width say otherwise.
        assert reference["input"] == trained["input"] == "32x16"
        assert reference["model"]["weights"]["kind"] == "file" and trained["model"]["checkpoint"] == str(checkpoint)
        assert reference["feature_dim"] == 512
        probe = reference["camera_probe"]
        assert probe["taught_people"] == probe["tested_people"] == 12 and probe["chance"] == pytest.approx(1 / 3, 1e-3)
    planted, absent = reports[True]["rows"][0], reports[False]["rows"][0]
    # 108 images teach 512 random features: the probe overfits, yet the tint carries over and nothing else does.
    assert planted["camera_probe"]["balanced_accuracy"] > 0.65
    assert abs(absent["camera_probe"]["balanced_accuracy"] - 1 / 3) < 0.15
    # Tinted cameras pull each query's neighbours into its own camera; without a tint they follow the person.
    gallery_share = planted["neighbours"]["gallery_other_camera"]
    assert gallery_share == pytest.approx(2 / 3, abs=1e-3)
    assert planted["neighbours"]["topk_other_camera"] < gallery_share - 0.2
    assert absent["neighbours"]["topk_other_camera"] > planted["neighbours"]["topk_other_camera"] + 0.2


def test_bad_input_stops_with_one_line_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leakage = load_script()
    root = _tree(tmp_path / "market", camera_tint=False, people=4)
    missing = tmp_path / "missing.pt"
    with pytest.raises(SystemExit) as stop:
        leakage.main(["--dataset", "market1501", "--root", str(root), "--run", f"x={missing}"])
    assert stop.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "--run" in message and str(missing) in message
    for args, says in (
        (["--root", str(root)], "--run LABEL=CHECKPOINT"),
        (["--root", str(root), "--run", "no-label"], "expected LABEL=CHECKPOINT"),
        (["--root", str(root), "--arch", "resnet18", "--png", "chart.jpg"], "must end in .png"),
        (["--root", str(root), "--weights", "w.pth"], "--weights needs --arch"),
    ):
        with pytest.raises(SystemExit) as stop:
            leakage.main(args)
        assert stop.value.code == 2 and says in capsys.readouterr().err
