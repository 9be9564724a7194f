import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ecnreid.data.camstyle_dataset import (
    CamStyleTargetDataset,
    apply_pseudo_cameras,
    camstyle_coverage,
    find_camstyle_dir,
    load_pseudo_cameras,
    pseudo_camera_keys,
)
from ecnreid.data.camstyle_names import cyclegan_name, stargan_name
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError

CAMERAS = [0, 0, 1, 2]  # own camera of each training image; the target has 3 cameras


def _solid(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), colour).save(path, quality=95)


def _original_colour(i: int) -> tuple[int, int, int]:
    return (30 + 50 * i, 0, 0)


def _styled_colour(i: int, camera: int) -> tuple[int, int, int]:
    return (30 + 50 * i, 60 + 60 * camera, 0)


def _decode(pixel: np.ndarray) -> tuple[int, int | None]:
    """(image index, style camera or None for the original) from a pixel written by the helpers above."""
    index = round((int(pixel[0]) - 30) / 50)
    camera = None if pixel[1] < 30 else round((int(pixel[1]) - 60) / 60)
    return index, camera


def _make_set(root: Path, scheme: str) -> list[ImageRecord]:
    records = []
    for i, own in enumerate(CAMERAS):
        stem = f"{i + 1:04d}_c{own + 1}_f{i:07d}"
        path = root / "bounding_box_train" / f"{stem}.jpg"
        _solid(path, _original_colour(i))
        records.append(ImageRecord(str(path), i + 1, own))
        for camera in range(3):
            if camera != own:
                name = stargan_name(stem, camera) if scheme == "stargan" else cyclegan_name(stem, own, camera)
                _solid(root / "bounding_box_train_camstyle" / name, _styled_colour(i, camera))
    return records


def _first_pixel(image: Image.Image) -> np.ndarray:
    return np.asarray(image)[0, 0]


@pytest.mark.parametrize("scheme", ["stargan", "cyclegan"])
def test_every_camera_maps_to_the_right_file(tmp_path, scheme):
    records = _make_set(tmp_path, scheme)
    dataset = CamStyleTargetDataset(records, tmp_path / "bounding_box_train_camstyle", 3, _first_pixel)
    assert dataset.scheme == scheme  # detected from the files
    for i, own in enumerate(CAMERAS):
        for camera in range(3):
            with Image.open(dataset.style_path(i, camera)) as image:
                found = _decode(_first_pixel(image.convert("RGB")))
            assert found == (i, None if camera == own else camera)


@pytest.mark.parametrize("scheme", ["stargan", "cyclegan"])
def test_getitem_draws_cameras_uniformly_and_reproducibly(tmp_path, scheme):
    records = _make_set(tmp_path, scheme)
    dataset = CamStyleTargetDataset(records, tmp_path / "bounding_box_train_camstyle", 3, _first_pixel)

    def draws(seed: int) -> list[tuple[int, int | None]]:
        torch.manual_seed(seed)
        out = []
        for _ in range(75):
            for i in range(len(dataset)):
                pixel, camid, index = dataset[i]
                assert (camid, index) == (CAMERAS[i], i)
                out.append(_decode(pixel))
        return out

    first = draws(0)
    assert first == draws(0)
    assert first != draws(1)
    # Image 0 lives in camera 0: its original stands for camera 0, CamStyle files for cameras 1 and 2.
    counts = Counter(camera for index, camera in first if index == 0)
    assert set(counts) == {None, 1, 2}
    assert all(10 <= n <= 45 for n in counts.values())  # 75 draws, 25 expected each
    assert all(index == i % 4 for i, (index, _) in enumerate(first))


def test_without_camstyle_dir_every_item_is_the_original(tmp_path):
    records = _make_set(tmp_path, "stargan")
    dataset = CamStyleTargetDataset(records, None, 3, _first_pixel)
    torch.manual_seed(0)
    assert all(_decode(dataset[i % 4][0]) == (i % 4, None) for i in range(40))


def test_missing_file_is_a_one_line_error_not_the_original(tmp_path):
    records = _make_set(tmp_path, "stargan")
    folder = tmp_path / "bounding_box_train_camstyle"
    stem = Path(records[2].path).stem
    (folder / stargan_name(stem, 0)).unlink()
    coverage = camstyle_coverage(records, folder, 3)
    assert (coverage.expected, coverage.present, coverage.first_missing) == (8, 7, folder / stargan_name(stem, 0))
    dataset = CamStyleTargetDataset(records, folder, 3, _first_pixel)
    assert dataset.style_path(2, 0) == folder / stargan_name(stem, 0)
    assert dataset.style_path(2, 2).name == stargan_name(stem, 2)
    torch.manual_seed(0)
    with pytest.raises(EcnreidError, match="CamStyle image missing") as error:
        for _ in range(100):  # camera 0 is drawn with probability 1/3 each time
            dataset[2]
    assert "\n" not in str(error.value)


def test_undecodable_file_is_a_one_line_error_not_the_original(tmp_path):
    records = _make_set(tmp_path, "stargan")
    folder = tmp_path / "bounding_box_train_camstyle"
    for path in folder.iterdir():
        path.write_bytes(path.read_bytes()[:20])  # truncated headers: nothing decodes
    dataset = CamStyleTargetDataset(records, folder, 3, _first_pixel)
    torch.manual_seed(0)
    with pytest.raises(EcnreidError, match="cannot decode") as error:
        for i in range(40):  # about 2/3 of the draws hit another camera's file
            dataset[i % 4]
    assert "\n" not in str(error.value)


def test_camera_outside_the_target_is_a_programming_error(tmp_path):
    records = _make_set(tmp_path, "stargan")
    with pytest.raises(ValueError, match="outside"):  # callers count the cameras of the same records
        CamStyleTargetDataset(records, None, 2, None)


def test_find_camstyle_dir(tmp_path):
    assert find_camstyle_dir(tmp_path) is None
    (tmp_path / "bounding_box_train_camstyle").mkdir()
    (tmp_path / "bounding_box_train_camstyle" / "prepare.json").write_text("{}")
    assert find_camstyle_dir(tmp_path) is None  # a folder without images is no set
    _solid(tmp_path / "bounding_box_train_camstyle" / "a_fake_1.jpg", (1, 2, 3))
    assert find_camstyle_dir(tmp_path) == tmp_path / "bounding_box_train_camstyle"


def test_pseudo_camera_mapping_round_trip(tmp_path):
    records = [
        ImageRecord(str(tmp_path / "train" / "a" / "1.jpg"), 1, 0),
        ImageRecord(str(tmp_path / "train" / "b" / "2.jpg"), 2, 0),
        ImageRecord(str(tmp_path / "train" / "b" / "3.jpg"), 3, 0),
    ]
    assert pseudo_camera_keys(records) == ["a/1.jpg", "b/2.jpg", "b/3.jpg"]
    folder = tmp_path / "camstyle"
    folder.mkdir()
    assert load_pseudo_cameras(folder) is None
    assert load_pseudo_cameras(None) is None
    (folder / "pseudo_cameras.json").write_text(json.dumps({"a/1.jpg": 1, "b/2.jpg": 0, "b/3.jpg": 2}))
    mapping = load_pseudo_cameras(folder)
    assert [r.camid for r in apply_pseudo_cameras(records, mapping)] == [1, 0, 2]
    assert [r.pid for r in apply_pseudo_cameras(records, mapping)] == [1, 2, 3]
    with pytest.raises(EcnreidError, match="1 of 3"):
        apply_pseudo_cameras(records, {"a/1.jpg": 1, "b/2.jpg": 0})


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"a.jpg": -1}', '{"a.jpg": "1"}'])
def test_bad_pseudo_camera_file_is_a_one_line_error(tmp_path, text):
    (tmp_path / "pseudo_cameras.json").write_text(text)
    with pytest.raises(EcnreidError) as error:
        load_pseudo_cameras(tmp_path)
    assert "\n" not in str(error.value)


def test_pseudo_cameras_keep_each_records_path(tmp_path):
    records = [ImageRecord(str(tmp_path / "a" / "1.jpg"), 1, 0), ImageRecord(str(tmp_path / "b" / "2.jpg"), 2, 0)]
    moved = apply_pseudo_cameras(records, {"a/1.jpg": 3, "b/2.jpg": 4})
    assert moved == [ImageRecord(records[0].path, 1, 3), ImageRecord(records[1].path, 2, 4)]


@pytest.mark.parametrize(
    ("text", "message"),
    [("not json", r"pseudo_cameras.json: unreadable pseudo-camera mapping \("),
     ("[1, 2]", r"pseudo_cameras.json: expected a JSON object of image path -> camera")],
)
def test_bad_pseudo_camera_file_names_the_file_and_the_fault(tmp_path, text, message):
    (tmp_path / "pseudo_cameras.json").write_text(text)
    with pytest.raises(EcnreidError, match=message):
        load_pseudo_cameras(tmp_path)


@pytest.mark.parametrize("scheme", ["stargan", "cyclegan"])
def test_coverage_counts_the_set_and_reports_it(tmp_path, scheme):
    records = _make_set(tmp_path, scheme)
    folder = tmp_path / "bounding_box_train_camstyle"
    missing = folder / (stargan_name("0004_c3_f0000003", 0) if scheme == "stargan"
                        else cyclegan_name("0004_c3_f0000003", 2, 0))
    missing.unlink()
    coverage = camstyle_coverage(records, folder, 3)
    # 4 images x 2 other cameras expected, one file removed.
    assert (coverage.camstyle_dir, coverage.scheme, coverage.expected, coverage.present) == (folder, scheme, 8, 7)
    assert coverage.first_missing == missing and coverage.missing == 1 and not coverage.complete
    assert coverage.to_dict() == {"dir": str(folder), "scheme": scheme, "expected": 8, "present": 7, "coverage": 0.875}


def test_coverage_of_nothing_expected_is_whole(tmp_path):
    records = _make_set(tmp_path, "stargan")[:1]
    coverage = camstyle_coverage(records, tmp_path / "bounding_box_train_camstyle", 1)
    assert coverage.expected == 0 and coverage.complete and coverage.to_dict()["coverage"] == 1.0


def test_one_camera_is_enough_and_none_is_an_error(tmp_path):
    _solid(tmp_path / "0001_c1_f0000000.jpg", (90, 0, 0))
    records = [ImageRecord(str(tmp_path / "0001_c1_f0000000.jpg"), 1, 0)]
    dataset = CamStyleTargetDataset(records, None, 1, None)
    assert _first_pixel(dataset[0][0])[0] == pytest.approx(90, abs=3) and dataset[0][1:] == (0, 0)
    with pytest.raises(ValueError, match="num_cameras must be at least 1, got 0"):
        CamStyleTargetDataset(records, None, 0, None)


def test_hidden_files_do_not_make_a_camstyle_set(tmp_path):
    _solid(tmp_path / "bounding_box_train_camstyle" / ".a_fake_1.jpg", (1, 2, 3))
    assert find_camstyle_dir(tmp_path) is None
