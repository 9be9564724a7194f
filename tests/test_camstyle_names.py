from pathlib import Path

import pytest

from ecnreid.data.camstyle_names import (
    CamStyleName,
    camstyle_name,
    camstyle_path,
    count_schemes,
    cyclegan_name,
    detect_scheme,
    parse_camstyle_name,
    stargan_name,
)
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError


def test_stargan_name_is_one_based_target_camera():
    assert stargan_name("0002_c1s1_000451_03", 0) == "0002_c1s1_000451_03_fake_1.jpg"
    assert stargan_name("0005_c2_f0046985", 14) == "0005_c2_f0046985_fake_15.jpg"


def test_cyclegan_name_is_one_based_own_to_target():
    assert cyclegan_name("0005_c2_f0046985", 1, 0) == "0005_c2_f0046985_fake_2to1.jpg"
    assert cyclegan_name("0000_000_01_0303morning_0015_0", 14, 9) == "0000_000_01_0303morning_0015_0_fake_15to10.jpg"


def test_negative_cameras_are_rejected():
    with pytest.raises(ValueError):
        stargan_name("x", -1)
    with pytest.raises(ValueError):
        cyclegan_name("x", 0, -1)


@pytest.mark.parametrize("own", range(15))
def test_parse_round_trips_every_pair_of_15_cameras(own):
    stem = "0000_000_01_0303morning_0015_0"
    for target in range(15):
        assert parse_camstyle_name(stargan_name(stem, target)) == CamStyleName(stem, None, target, "stargan")
        assert parse_camstyle_name(cyclegan_name(stem, own, target)) == CamStyleName(stem, own, target, "cyclegan")


def test_parse_rejects_names_outside_the_rule():
    assert parse_camstyle_name("0002_c1s1_000451_03.jpg") is None
    assert parse_camstyle_name("x_fake_.jpg") is None
    assert parse_camstyle_name("x_fake_3.png") is None
    assert parse_camstyle_name("x_fake_0.jpg") is None  # cameras are 1-based in names
    assert parse_camstyle_name("x_fake_0to2.jpg") is None
    assert parse_camstyle_name("x_fake_2to.jpg") is None


def test_parse_splits_at_the_last_marker_and_ignores_folders():
    assert parse_camstyle_name("a_fake_b_fake_3.jpg") == CamStyleName("a_fake_b", None, 2, "stargan")
    assert parse_camstyle_name("/data/set/p_fake_12to3.jpg") == CamStyleName("p", 11, 2, "cyclegan")


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_detect_scheme_reads_the_files(tmp_path):
    _touch(tmp_path / "star", "a_c1_fake_2.jpg", "a_c1_fake_3.jpg", "notes.txt")
    _touch(tmp_path / "cycle", "a_c1_fake_1to2.jpg", "a_c1_fake_1to13.jpg")
    assert detect_scheme(tmp_path / "star") == "stargan"
    assert detect_scheme(tmp_path / "cycle") == "cyclegan"


def test_detect_scheme_refuses_mixed_empty_and_missing_folders(tmp_path):
    _touch(tmp_path / "mixed", "a_fake_2.jpg", "b_fake_1to2.jpg")
    _touch(tmp_path / "empty", "readme.txt")
    with pytest.raises(EcnreidError, match="mixes"):
        detect_scheme(tmp_path / "mixed")
    with pytest.raises(EcnreidError, match="no CamStyle images"):
        detect_scheme(tmp_path / "empty")
    with pytest.raises(EcnreidError, match="does not exist"):
        detect_scheme(tmp_path / "absent")


def test_camstyle_path_own_camera_is_the_original(tmp_path):
    record = ImageRecord(str(tmp_path / "train" / "0005_c2_f0046985.jpg"), 5, 1)
    for scheme in ("stargan", "cyclegan"):
        assert camstyle_path(tmp_path / "cs", record, 1, scheme) == Path(record.path)
    assert camstyle_path(tmp_path / "cs", record, 0, "stargan") == tmp_path / "cs" / "0005_c2_f0046985_fake_1.jpg"
    assert camstyle_path(tmp_path / "cs", record, 7, "cyclegan") == tmp_path / "cs" / "0005_c2_f0046985_fake_2to8.jpg"


def test_rejections_name_the_cameras_and_the_schemes():
    with pytest.raises(ValueError, match="non-negative, got -1$"):
        stargan_name("x", -1)
    with pytest.raises(ValueError, match="non-negative, got 0 and -1$"):
        cyclegan_name("x", 0, -1)
    with pytest.raises(ValueError, match="unknown CamStyle scheme 'pix2pix'; expected one of stargan, cyclegan"):
        camstyle_name("x", 0, 1, "pix2pix")


def test_count_schemes_counts_each_file_once(tmp_path):
    _touch(tmp_path, "a_fake_2.jpg", "b_fake_3.jpg", "c_fake_1.jpg", "d_fake_1to2.jpg", "e.jpg")
    assert count_schemes(tmp_path) == {"stargan": 3, "cyclegan": 1}
    with pytest.raises(EcnreidError, match=r"StarGAN \(3 files, .*CycleGAN \(1 files"):
        detect_scheme(tmp_path)
