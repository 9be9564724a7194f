import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camstyle.prepare import run_prepare
from camstyle.pseudo_cameras import (
    adjusted_rand_index,
    assign_pseudo_cameras,
    canonical_labels,
    cluster_purity,
    kmeans,
    write_pseudo_cameras,
)
from ecnreid.config import PrepareConfig, RuntimeConfig
from ecnreid.data.camstyle_dataset import apply_pseudo_cameras, load_pseudo_cameras
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError


def test_purity_and_adjusted_rand_index_by_hand():
    assert cluster_purity([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
    assert adjusted_rand_index([1, 1, 0, 0], [5, 5, 7, 7]) == pytest.approx(1.0)
    assert cluster_purity([0, 0, 0, 0], [0, 0, 1, 1]) == 0.5
    assert adjusted_rand_index([0, 0, 0, 0], [0, 0, 1, 1]) == pytest.approx(0.0)
    # Table [[2, 0], [1, 2]]: index 2, row and column pair sums 4 and 4, expected 16/10, max 4.
    assert cluster_purity([0, 0, 1, 1, 1], [0, 0, 0, 1, 1]) == pytest.approx(4 / 5)
    assert adjusted_rand_index([0, 0, 1, 1, 1], [0, 0, 0, 1, 1]) == pytest.approx((2 - 1.6) / (4 - 1.6))


def test_canonical_labels_follow_first_appearance():
    assert canonical_labels(torch.tensor([2, 2, 0, 1, 0])).tolist() == [0, 0, 1, 2, 1]


def test_kmeans_finds_separated_blobs_deterministically():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(3).repeat_interleave(20)
    points = centres[truth] + torch.randn(60, 2, generator=generator)
    labels, found, inertia = kmeans(points, 3, seed=0)
    assert adjusted_rand_index(labels.tolist(), truth.tolist()) == pytest.approx(1.0)
    assert torch.cdist(found, centres).min(dim=0).values.max() < 1.0
    assert inertia == pytest.approx(float(((points - found[labels]) ** 2).sum()), rel=1e-5)
    again, _, _ = kmeans(points, 3, seed=0)
    assert torch.equal(labels, again)
    with pytest.raises(ValueError):
        kmeans(points, 61)


def test_kmeans_keeps_every_cluster_non_empty():
    points = torch.tensor([[0.0], [0.0], [0.0], [0.0], [5.0]])  # four duplicates: k-means++ may repeat a centre
    labels, _, _ = kmeans(points, 3, seed=1, n_init=2)
    assert torch.bincount(labels, minlength=3).min() >= 1


GAINS = {0: (1.35, 1.0, 0.6), 1: (0.6, 0.95, 1.4), 2: (0.55, 0.55, 0.55)}  # warm, cool, dark


def _planted_tree(root: Path, per_camera: int = 10) -> list[ImageRecord]:
    """People (random clothing colours) on grey backgrounds, seen through three cameras' colour casts."""
    rng = np.random.default_rng(0)
    folder = root / "bounding_box_train"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for camera, gains in GAINS.items():
        for k in range(per_camera):
            scene = np.full((48, 24, 3), rng.uniform(110, 170), dtype=float) + rng.normal(0, 12, (48, 24, 3))
            scene[8:44, 7:17] = rng.uniform(20, 235, 3)  # torso/legs in one random colour
            pixels = np.clip(scene * np.array(gains), 0, 255).astype(np.uint8)
            path = folder / f"{camera * 100 + k:04d}_c1_{k:05d}.jpg"  # every image claims camera 1
            Image.fromarray(pixels).save(path, quality=95)
            records.append(ImageRecord(str(path), camera * 100 + k, camera))
    return records


def test_pseudo_cameras_recover_planted_styles(tmp_path):
    records = _planted_tree(tmp_path)
    truth = [r.camid for r in records]
    hidden = [ImageRecord(r.path, r.pid, 0) for r in records]
    cameras = assign_pseudo_cameras(hidden, 3, seed=0, workers=0, progress=False)
    assert cluster_purity(cameras, truth) >= 0.95
    assert adjusted_rand_index(cameras, truth) >= 0.9
    assert cameras[0] == 0  # canonical numbering
    path = write_pseudo_cameras(tmp_path / "cs", hidden, cameras)
    assert path.name == "pseudo_cameras.json"
    grouped = apply_pseudo_cameras(hidden, load_pseudo_cameras(tmp_path / "cs"))
    assert [r.camid for r in grouped] == cameras


def test_prepare_with_pseudo_cameras_writes_the_mapping_and_a_matching_set(tmp_path):
    _planted_tree(tmp_path, per_camera=4)
    config = PrepareConfig(
        dataset="custom",
        root=tmp_path,
        method="colour",
        pseudo_cameras=3,
        workers=0,
        runtime=RuntimeConfig(device="cpu"),
    )
    summary = run_prepare(config, progress=False)
    out = tmp_path / "bounding_box_train_camstyle"
    mapping = load_pseudo_cameras(out)
    assert len(mapping) == 12 and set(mapping.values()) == {0, 1, 2}
    assert summary["cameras"] == 3 and summary["written"] == 12 * 2
    assert sorted(summary["pseudo_cameras"]["images_per_camera"]) == sorted(
        list(np.bincount(list(mapping.values()), minlength=3))
    )
    # Every image has files for exactly the two pseudo cameras it does not belong to.
    for name, camera in mapping.items():
        stem = Path(name).stem
        present = {c for c in range(3) if (out / f"{stem}_fake_{c + 1}.jpg").exists()}
        assert present == {0, 1, 2} - {camera}
    assert run_prepare(config, progress=False)["written"] == 0  # the mapping is reused, the set is complete
    with pytest.raises(EcnreidError, match="holds 3 pseudo cameras, not 2"):
        run_prepare(dataclasses.replace(config, pseudo_cameras=2), progress=False)
    with pytest.raises(EcnreidError, match="made with --pseudo-cameras"):
        run_prepare(dataclasses.replace(config, pseudo_cameras=None), progress=False)


def test_pseudo_cameras_on_the_synthetic_target(tmp_path):
    synthetic = pytest.importorskip("ecnreid.data.synthetic")
    from ecnreid.data.datasets import read_dataset

    synthetic.generate_synthetic(
        tmp_path,
        seed=0,
        source=synthetic.DomainSpec(layout=synthetic.LayoutSpec(train_ids=8, test_ids=1, gallery_per_camera=1)),
        target=synthetic.DomainSpec(
            camera=synthetic.DEFAULT_TARGET.camera,
            layout=synthetic.LayoutSpec(cameras=5, train_ids=8, test_ids=1, gallery_per_camera=1),
        ),
    )
    target = read_dataset("synthetic", tmp_path / "target", require_test=False)
    truth = [r.camid for r in target.train]
    num_cameras = max(truth) + 1
    hidden = [ImageRecord(r.path, r.pid, 0) for r in target.train]
    cameras = assign_pseudo_cameras(hidden, num_cameras, seed=0, workers=0, progress=False)
    assert cluster_purity(cameras, truth) >= 0.9
