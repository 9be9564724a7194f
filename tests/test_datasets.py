"""Dataset readers: layouts, file-name parsing, junk/distractors, roots, and one-line errors on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED_DATA
from PIL import Image

from ecnreid.data.camstyle_dataset import find_camstyle_dir
from ecnreid.data.datasets import IMAGE_SUFFIXES, READERS, is_image_name, read_dataset
from ecnreid.data.records import ImageRecord
from ecnreid.dataset_names import DATASET_NAMES
from ecnreid.errors import EcnreidError


def _touch_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 16), (120, 30, 200)).save(folder / name)


def _error(func, *args, **kwargs) -> str:
    with pytest.raises(EcnreidError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def market(tmp_path: Path) -> Path:
    root = tmp_path / "Market-1501-v15.09.15"
    _touch_images(
        root / "bounding_box_train", ["0007_c6s2_000100_01.jpg", "0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg"]
    )
    _touch_images(root / "query", ["0002_c1s1_001000_00.jpg"])
    _touch_images(
        root / "bounding_box_test", ["-1_c1s1_000401_03.jpg", "0000_c3s1_000001_01.jpg", "0002_c2s1_000552_01.jpg"]
    )
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"not an image")
    return root


def test_market_records_junk_distractors_and_cameras(market: Path) -> None:
    data = read_dataset("market1501", market)
    folder = str(market / "bounding_box_train")
    assert data.name == "market1501" and data.root == market
    # Sorted by path; cameras 1-based in names, 0-based in records; Thumbs.db ignored.
    assert data.train == [
        ImageRecord(f"{folder}/0002_c1s1_000451_03.jpg", 2, 0),
        ImageRecord(f"{folder}/0002_c2s1_000551_01.jpg", 2, 1),
        ImageRecord(f"{folder}/0007_c6s2_000100_01.jpg", 7, 5),
    ]
    assert data.query == [ImageRecord(str(market / "query" / "0002_c1s1_001000_00.jpg"), 2, 0)]
    # Junk (-1) is dropped; the distractor (0) stays.
    assert [(r.pid, r.camid) for r in data.gallery] == [(0, 2), (2, 1)]
    assert (data.num_train_pids, data.num_train_cameras, data.num_cameras) == (2, 6, 6)


def test_root_may_be_the_parent_folder(market: Path) -> None:
    assert read_dataset("market1501", market.parent).root == market
    # torchreid nests the release folder inside market1501/
    nested = market.parent / "market1501"
    nested.mkdir()
    market.rename(nested / market.name)
    assert read_dataset("market1501", market.parent).root == nested / market.name


def test_duke_training_source_without_test_splits(tmp_path: Path) -> None:
    root = tmp_path / "dukemtmc"
    _touch_images(root / "bounding_box_train", ["0005_c2_f0046985.jpg", "0005_c8_f0000001.jpg"])
    message = _error(read_dataset, "dukemtmc", tmp_path)
    assert str(root / "query") in message and "missing" in message
    data = read_dataset("dukemtmc", tmp_path, require_test=False)
    assert [(r.pid, r.camid) for r in data.train] == [(5, 1), (5, 7)]
    assert data.query == [] and data.gallery == []
    assert READERS["dukemtmc"](tmp_path, require_test=False).train == data.train
    # torchreid's key and other spellings name the same reader.
    for alias in ("dukemtmcreid", "DukeMTMCreID", "DukeMTMC"):
        aliased = read_dataset(alias, tmp_path, require_test=False)
        assert aliased.name == "dukemtmc" and aliased.train == data.train


def test_custom_folders_with_multi_digit_cameras(tmp_path: Path) -> None:
    _touch_images(tmp_path / "train", ["12_c10_a.jpg", "3_c1_b.png", "3_c12.jpg"])
    _touch_images(tmp_path / "query", ["20_c2_q.jpg"])
    _touch_images(tmp_path / "bounding_box_test", ["20_c11_g.jpg", "-1_c3_junk.jpg"])
    data = read_dataset("custom", tmp_path)
    assert [(Path(r.path).name, r.pid, r.camid) for r in data.train] == [
        ("12_c10_a.jpg", 12, 9),
        ("3_c12.jpg", 3, 11),
        ("3_c1_b.png", 3, 0),
    ]
    assert [(r.pid, r.camid) for r in data.gallery] == [(20, 10)]
    assert data.num_cameras == 12


def test_custom_csv_with_and_without_header(tmp_path: Path) -> None:
    _touch_images(tmp_path / "imgs", ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "train.csv").write_text("path,pid,camid\nimgs/b.jpg,4,0\nimgs/a.jpg, 7 ,3\n\n")
    (tmp_path / "query.csv").write_text("imgs/c.jpg,9,1\n")
    (tmp_path / "gallery.csv").write_text(f"{tmp_path / 'imgs' / 'a.jpg'},9,2\nimgs/b.jpg,-1,0\n")
    data = read_dataset("custom", tmp_path)
    assert data.train == [
        ImageRecord(str(tmp_path / "imgs" / "a.jpg"), 7, 3),  # camid is 0-based in CSV files
        ImageRecord(str(tmp_path / "imgs" / "b.jpg"), 4, 0),
    ]
    assert data.query == [ImageRecord(str(tmp_path / "imgs" / "c.jpg"), 9, 1)]
    assert data.gallery == [ImageRecord(str(tmp_path / "imgs" / "a.jpg"), 9, 2)]  # -1 dropped


def test_custom_csv_errors_name_file_and_line(tmp_path: Path) -> None:
    _touch_images(tmp_path / "imgs", ["a.jpg"])
    csv_file = tmp_path / "train.csv"
    csv_file.write_text("imgs/a.jpg,1,0\nimgs/a.jpg,one,0\n")
    assert f"{csv_file}:2:" in _error(read_dataset, "custom", tmp_path)
    csv_file.write_text("imgs/a.jpg,1,0\nimgs/a.jpg,1\n")
    assert f"{csv_file}:2:" in _error(read_dataset, "custom", tmp_path)
    csv_file.write_text("imgs/a.jpg,1,0\nimgs/missing.jpg,1,0\n")
    message = _error(read_dataset, "custom", tmp_path)
    assert f"{csv_file}:2:" in message and "missing.jpg" in message
    csv_file.write_text("imgs/a.jpg,1,0\n")
    assert str(tmp_path / "query.csv") in _error(read_dataset, "custom", tmp_path)
    assert len(read_dataset("custom", tmp_path, require_test=False).train) == 1


def _msmt_tree(root: Path, train_dir: str, test_dir: str) -> None:
    _touch_images(root / train_dir / "0000", ["0000_000_01_0303morning_0015_0.jpg", "0000_001_15_0303noon_0001_1.jpg"])
    _touch_images(root / train_dir / "0001", ["0001_000_03_0303morning_0100_0.jpg"])
    _touch_images(root / test_dir / "0000", ["0000_000_02_0303morning_0020_0.jpg", "0000_001_07_0303noon_0002_0.jpg"])
    (root / "list_train.txt").write_text(
        "0000/0000_001_15_0303noon_0001_1.jpg 0\n0000/0000_000_01_0303morning_0015_0.jpg 0\n"
    )
    (root / "list_val.txt").write_text("0001/0001_000_03_0303morning_0100_0.jpg 1\n")
    (root / "list_query.txt").write_text("0000/0000_000_02_0303morning_0020_0.jpg 0\n")
    (root / "list_gallery.txt").write_text("0000/0000_001_07_0303noon_0002_0.jpg 0\n")


@pytest.mark.parametrize(
    ("folder", "train_dir", "test_dir"),
    [("MSMT17_V1", "train", "test"), ("MSMT17_V2", "mask_train_v2", "mask_test_v2")],
)
def test_msmt17_v1_and_v2(tmp_path: Path, folder: str, train_dir: str, test_dir: str) -> None:
    root = tmp_path / folder
    _msmt_tree(root, train_dir, test_dir)
    data = read_dataset("msmt17", tmp_path)
    assert data.root == root
    # train = list_train + list_val, sorted by path; pid from the label, camera from the name.
    assert data.train == [
        ImageRecord(str(root / train_dir / "0000" / "0000_000_01_0303morning_0015_0.jpg"), 0, 0),
        ImageRecord(str(root / train_dir / "0000" / "0000_001_15_0303noon_0001_1.jpg"), 0, 14),
        ImageRecord(str(root / train_dir / "0001" / "0001_000_03_0303morning_0100_0.jpg"), 1, 2),
    ]
    assert [(r.pid, r.camid) for r in data.query] == [(0, 1)]
    assert [(r.pid, r.camid) for r in data.gallery] == [(0, 6)]
    assert data.num_cameras == 15


def test_msmt17_list_errors(tmp_path: Path) -> None:
    root = tmp_path / "MSMT17_V1"
    _msmt_tree(root, "train", "test")
    (root / "list_query.txt").write_text("0000/0000_000_02_0303morning_0020_0.jpg\n")
    assert f"{root / 'list_query.txt'}:1:" in _error(read_dataset, "msmt17", root)
    (root / "list_query.txt").write_text("0000/0000_000_02_0303morning_0020_0.jpg 0\n0000/nope_0.jpg 0\n")
    assert f"{root / 'list_query.txt'}:2:" in _error(read_dataset, "msmt17", root)
    (root / "list_gallery.txt").unlink()
    (root / "list_query.txt").write_text("0000/0000_000_02_0303morning_0020_0.jpg 0\n0000/0000_000_02_gone_0.jpg 0\n")
    message = _error(read_dataset, "msmt17", root)
    assert f"{root / 'list_query.txt'}:2:" in message and "not found" in message
    (root / "list_query.txt").unlink()
    assert str(root / "list_query.txt") in _error(read_dataset, "msmt17", root)
    assert len(read_dataset("msmt17", root, require_test=False).train) == 3


def test_synthetic_reader_rejects_the_two_domain_parent(tmp_path: Path) -> None:
    for domain in ("source", "target"):
        _touch_images(tmp_path / domain / "bounding_box_train", ["0001_c1_00000.jpg"])
    message = _error(read_dataset, "synthetic", tmp_path)
    assert str(tmp_path / "target") in message
    data = read_dataset("synthetic", tmp_path / "target", require_test=False)
    assert [(r.pid, r.camid) for r in data.train] == [(1, 0)]


def test_missing_root(tmp_path: Path) -> None:
    message = _error(read_dataset, "market1501", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    message = _error(read_dataset, "market1501", tmp_path)
    assert "bounding_box_train/" in message and "Market-1501-v15.09.15" in message


def test_missing_and_empty_splits(market: Path) -> None:
    for image in (market / "query").iterdir():
        image.unlink()
    message = _error(read_dataset, "market1501", market)
    assert str(market / "query") in message and "no images" in message
    (market / "query").rmdir()
    message = _error(read_dataset, "market1501", market)
    assert str(market / "query") in message and "missing" in message


def test_file_name_that_does_not_parse(market: Path) -> None:
    _touch_images(market / "bounding_box_test", ["holiday.jpg"])
    message = _error(read_dataset, "market1501", market)
    assert str(market / "bounding_box_test" / "holiday.jpg") in message and "does not parse" in message
    # A Duke name is not a Market name (Market needs the s<sequence> part).
    (market / "bounding_box_test" / "holiday.jpg").unlink()
    _touch_images(market / "bounding_box_test", ["0005_c2_f0046985.jpg"])
    assert "0005_c2_f0046985.jpg" in _error(read_dataset, "market1501", market)


def test_camera_zero_in_a_file_name_is_an_error(tmp_path: Path) -> None:
    _touch_images(tmp_path / "train", ["1_c0_x.jpg"])
    assert "1_c0_x.jpg" in _error(read_dataset, "custom", tmp_path, require_test=False)


def test_unknown_dataset_lists_valid_names(tmp_path: Path) -> None:
    message = _error(read_dataset, "cuhk03", tmp_path)
    assert all(name in message for name in ("market1501", "dukemtmc", "msmt17", "custom", "synthetic", "dukemtmcreid"))


@pytest.mark.data
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")
def test_real_market_and_duke_counts() -> None:
    market = read_dataset("market1501", SHARED_DATA)
    assert (len(market.train), market.num_train_pids) == (12_936, 751)
    assert (len(market.query), len(market.gallery), market.num_cameras) == (3_368, 15_913, 6)
    assert sum(r.pid == 0 for r in market.gallery) == 2_798
    duke = read_dataset("dukemtmc", SHARED_DATA, require_test=False)
    assert (len(duke.train), duke.num_train_pids, duke.num_train_cameras) == (16_522, 702, 8)


def test_one_set_of_image_suffixes_for_readers_and_camstyle_folders(tmp_path: Path) -> None:
    assert set(IMAGE_SUFFIXES) == {".jpg", ".jpeg", ".png", ".bmp"}
    assert is_image_name("0001_c1_a.JPG") and is_image_name("x.bmp") and is_image_name("x.jpeg")
    assert not is_image_name("prepare.json") and not is_image_name("jpg") and not is_image_name("x.jpg.tmp")
    _touch_images(tmp_path / "bounding_box_train", ["0001_c1_a.bmp", "0001_c2_b.PNG"])
    assert len(read_dataset("synthetic", tmp_path, require_test=False).train) == 2
    _touch_images(tmp_path / "bounding_box_train_camstyle", ["0001_c1_a_fake_2.bmp"])
    assert find_camstyle_dir(tmp_path) == tmp_path / "bounding_box_train_camstyle"


def test_every_named_dataset_has_a_reader_and_every_reader_a_name() -> None:
    assert tuple(READERS) == DATASET_NAMES
