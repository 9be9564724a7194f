"""The synthetic two-domain dataset: layout, determinism, regeneration rules, and that it poses a real
domain-adaptation problem (camera style breaks cross-camera matching in the target; identity survives it)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ecnreid.config import (
    DEFAULT_SOURCE,
    DEFAULT_TARGET,
    CameraStyleSpec,
    DomainSpec,
    LayoutSpec,
    PersonSpec,
)
from ecnreid.data.datasets import read_dataset
from ecnreid.data.records import ImageRecord, ReidDataset, relabel_pids
from ecnreid.data.synthetic import SOURCE_BACKGROUNDS, generate_synthetic, render_image
from ecnreid.data.synthetic_cameras import make_camera, make_scene
from ecnreid.data.synthetic_people import make_identity
from ecnreid.errors import EcnreidError


def _layout(spec: DomainSpec, **changes: object) -> DomainSpec:
    """``spec`` with some of its layout fields changed."""
    return dataclasses.replace(spec, layout=dataclasses.replace(spec.layout, **changes))


def _tiny(**changes: object) -> dict[str, DomainSpec]:
    """The default domains with 3 train and 2 test ids, on 2 source and 3 target cameras, plus ``changes``
    to both layouts."""
    return {
        "source": _layout(DEFAULT_SOURCE, **{"cameras": 2, "train_ids": 3, "test_ids": 2, **changes}),
        "target": _layout(DEFAULT_TARGET, **{"cameras": 3, "train_ids": 3, "test_ids": 2, **changes}),
    }


TINY = _tiny()


# The default domains with 15 training and 25 test ids each.
MID = {
    name: _layout(spec, train_ids=15, test_ids=25)
    for name, spec in (("source", DEFAULT_SOURCE), ("target", DEFAULT_TARGET))
}


@pytest.fixture(scope="module")
def mid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic")
    return out, generate_synthetic(out, **MID)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_counts_and_names(mid: tuple[Path, dict]) -> None:
    out, meta = mid
    assert json.loads((out / "synthetic.json").read_text()) == meta
    # The parameters are the seed and the two specs, as dataclasses.asdict writes them.
    assert meta["params"] == {"seed": 0, **{name: dataclasses.asdict(spec) for name, spec in MID.items()}}
    assert meta["params"]["target"]["camera"] == {"strength": 0.8, "cast": 0.35, "textured": True}
    for domain, cameras in (("source", 4), ("target", 5)):
        data = read_dataset("synthetic", out / domain)
        counts = meta["domains"][domain]["images"]
        assert (len(data.train), len(data.query), len(data.gallery)) == (
            counts["bounding_box_train"],
            counts["query"],
            counts["bounding_box_test"],
        )
        assert data.num_cameras == cameras and len(meta["domains"][domain]["cameras"]) == cameras
        assert data.num_train_pids == 15 and len({r.pid for r in data.query}) == 25
        names = [Path(r.path).name for r in [*data.train, *data.query, *data.gallery]]
        assert all(re.fullmatch(r"\d{4}_c\d_\d{5}\.jpg", n) for n in names)
        assert len(set(names)) == len(names)
        with Image.open(data.query[0].path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 128))


def test_identities_disjoint_and_test_protocol(mid: tuple[Path, dict]) -> None:
    out, _ = mid
    source, target = (read_dataset("synthetic", out / d) for d in ("source", "target"))
    ids = {
        d: ({r.pid for r in data.train}, {r.pid for r in [*data.query, *data.gallery]})
        for d, data in (("source", source), ("target", target))
    }
    assert not ids["source"][0] & ids["source"][1] and not ids["target"][0] & ids["target"][1]
    assert not (ids["source"][0] | ids["source"][1]) & (ids["target"][0] | ids["target"][1])
    for data in (source, target):
        query_keys = [(r.pid, r.camid) for r in data.query]
        assert len(query_keys) == len(set(query_keys))  # one query per id and camera
        gallery_keys = {(r.pid, r.camid) for r in data.gallery}
        assert set(query_keys) == gallery_keys  # and gallery images in the same cameras
        for pid in {r.pid for r in data.query}:  # every query has a cross-camera true match
            assert len({cam for p, cam in gallery_keys if p == pid}) >= 2


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", seed=5, **TINY)
    generate_synthetic(tmp_path / "b", seed=5, **_tiny())  # equal specs, other objects
    generate_synthetic(tmp_path / "c", seed=6, **TINY)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert len(a) > 10 and a == b
    assert a != c


def test_regeneration_is_skipped_redone_or_refused(tmp_path: Path) -> None:
    meta = generate_synthetic(tmp_path, **TINY)
    first = sorted((tmp_path / "target" / "query").iterdir())[0]
    stamp = first.stat().st_mtime_ns
    assert generate_synthetic(tmp_path, **TINY) == meta
    assert first.stat().st_mtime_ns == stamp  # untouched
    # A CamStyle set made from the target is stale after a regeneration and may be replaced.
    (tmp_path / "target" / "bounding_box_train_camstyle").mkdir()
    (tmp_path / "target" / "bounding_box_train_camstyle" / "x_fake_1.jpg").write_bytes(b"")
    changed = generate_synthetic(tmp_path, **_tiny(train_ids=4))
    assert changed["params"]["source"]["layout"]["train_ids"] == 4
    assert read_dataset("synthetic", tmp_path / "source").num_train_pids == 4
    assert not (tmp_path / "target" / "bounding_box_train_camstyle").exists()
    # Anything else in the folders is the user's: refuse, and delete nothing.
    (tmp_path / "source" / "notes.txt").write_text("mine")
    with pytest.raises(EcnreidError, match="refusing"):
        generate_synthetic(tmp_path, **TINY)
    assert (tmp_path / "source" / "notes.txt").read_text() == "mine"
    assert read_dataset("synthetic", tmp_path / "source").num_train_pids == 4


def _load(records: list[ImageRecord]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(r.path).convert("RGB"), np.float32) / 255.0 for r in records])


def _histograms(images: np.ndarray, bins: int = 4) -> np.ndarray:
    """Joint RGB histograms on a 4×2 grid over the body, Hellinger-mapped and L2-normalised: (N, 8·bins³)."""
    q = np.clip((images * bins).astype(int), 0, bins - 1)
    code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    blocks = []
    for r0 in (16, 42, 68, 94):
        for c0 in (16, 32):
            cells = code[:, r0 : r0 + 26, c0 : c0 + 16].reshape(len(images), -1)
            counts = np.stack([np.bincount(c, minlength=bins**3) for c in cells]).astype(np.float32)
            blocks.append(np.sqrt(counts / counts.sum(1, keepdims=True)))
    features = np.concatenate(blocks, axis=1)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def _rank1(qf: np.ndarray, gf: np.ndarray, data: ReidDataset) -> tuple[float, float]:
    """(rank-1 %, % of queries whose top match is in the query's own camera), same-id-same-camera removed."""
    qp, qc = (np.array([getattr(r, k) for r in data.query]) for k in ("pid", "camid"))
    gp, gc = (np.array([getattr(r, k) for r in data.gallery]) for k in ("pid", "camid"))
    sim = qf @ gf.T
    sim[(qp[:, None] == gp[None]) & (qc[:, None] == gc[None])] = -np.inf
    top = sim.argmax(axis=1)
    return 100.0 * float(np.mean(gp[top] == qp)), 100.0 * float(np.mean(gc[top] == qc))


def _camera_normalised(data: ReidDataset, records: list[ImageRecord]) -> np.ndarray:
    """Images with each camera's RGB mean/std (measured on the train split) mapped to a common one."""
    train, cams = _load(data.train), np.array([r.camid for r in data.train])
    images, rec_cams = _load(records), np.array([r.camid for r in records])
    for cam in range(data.num_cameras):
        mean, std = train[cams == cam].mean((0, 1, 2)), train[cams == cam].std((0, 1, 2))
        images[rec_cams == cam] = (images[rec_cams == cam] - mean) / std * 0.2 + 0.5
    return np.clip(images, 0.0, 1.0)


def test_target_camera_style_breaks_matching_but_identity_survives(mid: tuple[Path, dict]) -> None:
    """Colour histograms (no training): in the target, the nearest neighbour of almost every query is a
    same-camera stranger; normalising each camera's colour statistics (what a colour CamStyle transfer
    undoes) brings rank-1 far up, so identities are recoverable across cameras."""
    out, _ = mid
    target = read_dataset("synthetic", out / "target")
    raw_r1, raw_same_camera = _rank1(_histograms(_load(target.query)), _histograms(_load(target.gallery)), target)
    norm_r1, _ = _rank1(
        _histograms(_camera_normalised(target, target.query)),
        _histograms(_camera_normalised(target, target.gallery)),
        target,
    )
    assert raw_r1 <= 10.0 and raw_same_camera >= 85.0
    assert norm_r1 >= 35.0 and norm_r1 >= raw_r1 + 25.0


@pytest.mark.slow
def test_default_dataset_size_and_source_model_gap(tmp_path: Path) -> None:
    """A small CNN trained on source ids matches source people well and target people badly (a real domain
    gap), and target identity survives camera normalisation. (No timing here: a loaded CI machine is not a
    benchmark.)"""
    meta = generate_synthetic(tmp_path)
    for domain in ("source", "target"):
        assert 200 <= sum(meta["domains"][domain]["images"].values()) <= 1000

    torch.manual_seed(0)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def tensor(images: np.ndarray) -> torch.Tensor:  # (N, 3, 64, 32): half resolution keeps it fast
        return F.avg_pool2d((torch.from_numpy(images).permute(0, 3, 1, 2) - mean) / std, 2)

    def block(cin: int, cout: int) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(cout),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        )

    source, target = (read_dataset("synthetic", tmp_path / d) for d in ("source", "target"))
    train = relabel_pids(source.train)
    x, y = tensor(_load(train)), torch.tensor([r.pid for r in train])
    net = torch.nn.Sequential(
        block(3, 16), block(16, 32), block(32, 64), block(64, 128), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    head = torch.nn.Linear(128, int(y.max()) + 1)
    optimiser = torch.optim.SGD(
        [*net.parameters(), *head.parameters()], lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    for _ in range(10):  # source rank-1 about 96 here, target 0, camera-normalised target about 47
        order = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            batch = x[order[i : i + 32]]
            batch = batch.flip(3) if torch.rand(()) < 0.5 else batch
            loss = F.cross_entropy(head(net(batch)), y[order[i : i + 32]])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    net.eval()

    def features(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return F.normalize(net(tensor(images)), dim=1).numpy()

    source_r1, _ = _rank1(features(_load(source.query)), features(_load(source.gallery)), source)
    target_r1, _ = _rank1(features(_load(target.query)), features(_load(target.gallery)), target)
    normalised_r1, _ = _rank1(
        features(_camera_normalised(target, target.query)), features(_camera_normalised(target, target.gallery)), target
    )
    print(f"CNN rank-1: source {source_r1:.1f}, target {target_r1:.1f}, target camera-normalised {normalised_r1:.1f}")
    assert source_r1 >= 80.0
    assert target_r1 <= source_r1 - 50.0
    assert normalised_r1 >= target_r1 + 25.0


def test_domain_fashion_sets_the_share_of_achromatic_garments() -> None:
    garments = ("top", "bottom", "pattern_colour", "bag_colour")

    def grey_share(achromatic: float) -> float:
        people = [make_identity(np.random.default_rng([0, pid]), achromatic) for pid in range(200)]
        return float(np.mean([len(set(person[g])) == 1 for person in people for g in garments]))

    assert grey_share(1.0) == 1.0
    assert grey_share(0.0) == 0.0
    assert 0.2 < grey_share(0.3) < 0.4


def test_target_backgrounds_can_be_plain(tmp_path: Path) -> None:
    textured = generate_synthetic(tmp_path / "textured", **TINY)
    target = TINY["target"]
    plain_target = dataclasses.replace(target, camera=dataclasses.replace(target.camera, textured=False))
    plain = generate_synthetic(tmp_path / "plain", source=TINY["source"], target=plain_target)
    kinds = {
        name: {c["background"]["kind"] for c in meta["domains"]["target"]["cameras"]}
        for name, meta in (("textured", textured), ("plain", plain))
    }
    assert kinds["plain"] <= set(SOURCE_BACKGROUNDS) and not kinds["textured"] & set(SOURCE_BACKGROUNDS)
    assert plain["params"]["target"]["camera"]["textured"] is False


def test_a_domain_depends_only_on_its_own_spec(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "mixed", **TINY)
    source = dataclasses.replace(TINY["source"], person=PersonSpec(achromatic=1.0))
    generate_synthetic(tmp_path / "grey", source=source, target=TINY["target"])
    assert _files(tmp_path / "mixed" / "target") == _files(tmp_path / "grey" / "target")
    assert _files(tmp_path / "mixed" / "source") != _files(tmp_path / "grey" / "source")


def test_target_can_have_more_training_ids_than_the_source(tmp_path: Path) -> None:
    same = generate_synthetic(tmp_path / "same", **TINY)
    more = generate_synthetic(tmp_path / "more", source=TINY["source"], target=_layout(TINY["target"], train_ids=7))
    assert more["domains"]["target"]["pids"] == {"train": [5001, 5007], "test": [5008, 5009]}
    assert more["domains"]["source"] == same["domains"]["source"]
    train_pids = {int(p.name[:4]) for p in (tmp_path / "more" / "target" / "bounding_box_train").glob("*.jpg")}
    assert train_pids == set(range(5001, 5008))
    assert _files(tmp_path / "more" / "source") == _files(tmp_path / "same" / "source")


def test_target_can_have_more_images_per_camera_than_the_source(tmp_path: Path) -> None:
    def per_camera(name: str, split: str) -> Counter[str]:
        """Images per person and camera (file names start ``{pid}_c{camera}``)."""
        return Counter(p.name[:7] for p in (tmp_path / name / "target" / split).glob("*.jpg"))

    generate_synthetic(tmp_path / "same", **TINY)
    target = _layout(TINY["target"], train_images_per_camera=4)
    more = generate_synthetic(tmp_path / "more", source=TINY["source"], target=target)
    assert more["params"]["target"]["layout"]["train_images_per_camera"] == 4
    assert _files(tmp_path / "more" / "source") == _files(tmp_path / "same" / "source")
    assert max(per_camera("same", "bounding_box_train").values()) <= 2
    assert 2 < max(per_camera("more", "bounding_box_train").values()) <= 4
    for split in ("query", "bounding_box_test"):  # the test protocol is unchanged
        assert per_camera("more", split) == per_camera("same", split)
    with pytest.raises(EcnreidError, match="train_images_per_camera 0: must be at least 1"):
        _layout(TINY["target"], train_images_per_camera=0)


def test_frames_of_a_track_share_the_pose() -> None:
    rng = np.random.default_rng
    who = make_identity(rng(0), 0.3)
    camera = make_camera(rng(1), 0, 2, CameraStyleSpec(strength=0.0, cast=0.0), cast_offset=0.0)
    scene = make_scene({**camera["background"], "kind": "gradient"}, rng(2), 128, 64)  # same for any crop

    def frame(image_seed: int, pose_seed: int) -> np.ndarray:
        return np.asarray(render_image(who, camera, scene, rng(image_seed), pose_rng=rng(pose_seed)), np.float32)

    same_track = np.abs(frame(10, 7) - frame(11, 7)).mean()
    other_pose = np.abs(frame(10, 7) - frame(12, 8)).mean()
    assert same_track < other_pose / 3, (same_track, other_pose)


def test_target_tracks_change_only_the_target_training_images(tmp_path: Path) -> None:
    free = _tiny(train_images_per_camera=3)
    generate_synthetic(tmp_path / "free", **free)
    generate_synthetic(tmp_path / "tracks", source=free["source"], target=_layout(free["target"], tracks=True))
    for folder in ("source/bounding_box_train", "source/query", "target/query", "target/bounding_box_test"):
        assert _files(tmp_path / "free" / folder) == _files(tmp_path / "tracks" / folder)
    assert _files(tmp_path / "free" / "target/bounding_box_train") != _files(
        tmp_path / "tracks" / "target/bounding_box_train"
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PersonSpec(achromatic=1.5), r"person\.achromatic 1\.5: must lie in \[0, 1\]"),
        (lambda: CameraStyleSpec(strength=-0.1), r"camera\.strength -0\.1: must lie in \[0, 2\]"),
        (lambda: CameraStyleSpec(cast=1.0), r"camera\.cast 1\.0: must lie in \[0, 1\)"),
        (lambda: LayoutSpec(cameras=1), r"layout\.cameras 1: a domain needs at least 2 cameras"),
        (lambda: LayoutSpec(test_ids=0), r"layout\.test_ids 0: must be at least 1"),
        (lambda: LayoutSpec(gallery_per_camera=0), r"layout\.gallery_per_camera 0: must be at least 1"),
        (lambda: LayoutSpec(train_ids=4000, test_ids=1000), r"5000: at most 4999 ids per domain"),
        (lambda: DomainSpec(layout={"cameras": 3}), r"layout \{'cameras': 3\}: expected a LayoutSpec"),
    ],
)
def test_specs_refuse_impossible_domains(build, message: str) -> None:
    with pytest.raises(EcnreidError, match=message):
        build()


def test_specs_are_frozen_and_the_generator_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_SOURCE.layout.cameras = 3  # type: ignore[misc]
    with pytest.raises(EcnreidError, match="synthetic target: expected a DomainSpec, got dict"):
        generate_synthetic(tmp_path, target={"layout": {"cameras": 3}})  # type: ignore[arg-type]
    with pytest.raises(EcnreidError, match="must be non-negative"):
        generate_synthetic(tmp_path, seed=-1)
    assert not tmp_path.joinpath("source").exists()
