import io
import json
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from camstyle.check import render_check_table, run_check
from camstyle.prepare import run_prepare
from ecnreid.config import PrepareConfig, RuntimeConfig
from ecnreid.data.camstyle_names import cyclegan_name, stargan_name
from ecnreid.errors import EcnreidError

OWN = [0, 0, 1, 2]  # cameras of the four training images (Market names, 3 cameras)


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((16, 32), 40).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _dataset(root: Path, scheme: str) -> tuple[Path, list[str]]:
    """A Market-style train split and a complete CamStyle set; returns the set's folder and its file names."""
    train = root / "bounding_box_train"
    camstyle = root / "bounding_box_train_camstyle"
    train.mkdir(parents=True)
    camstyle.mkdir()
    names = []
    for i, own in enumerate(OWN):
        stem = f"{i + 1:04d}_c{own + 1}s1_{i:06d}_00"
        (train / f"{stem}.jpg").write_bytes(_jpeg_bytes())
        for target in range(3):
            if target != own:
                name = stargan_name(stem, target) if scheme == "stargan" else cyclegan_name(stem, own, target)
                (camstyle / name).write_bytes(_jpeg_bytes())
                names.append(name)
    return camstyle, names


@pytest.mark.parametrize("scheme", ["stargan", "cyclegan"])
def test_complete_set(tmp_path, scheme):
    camstyle, names = _dataset(tmp_path, scheme)
    for where in (tmp_path, camstyle):  # the dataset folder or the CamStyle folder itself
        report = run_check(where, progress=False)
        assert report.complete and report.scheme == scheme and report.dataset == "market1501"
        assert (report.num_images, report.num_cameras, report.present, report.expected) == (4, 3, 8, 8)
        assert report.pairs == {
            (0, 1): (2, 2),
            (0, 2): (2, 2),
            (1, 0): (1, 1),
            (1, 2): (1, 1),
            (2, 0): (1, 1),
            (2, 1): (1, 1),
        }
        assert report.missing == report.corrupt == report.unexpected == []


@pytest.mark.parametrize("scheme", ["stargan", "cyclegan"])
def test_missing_corrupt_and_unexpected_files(tmp_path, scheme):
    camstyle, _ = _dataset(tmp_path, scheme)
    first, second, fourth = "0001_c1s1_000000_00", "0002_c1s1_000001_00", "0004_c3s1_000003_00"

    def styled(stem: str, own: int, target: int) -> str:
        return stargan_name(stem, target) if scheme == "stargan" else cyclegan_name(stem, own, target)

    missing = styled(first, 0, 2)
    (camstyle / missing).unlink()
    truncated = styled(second, 0, 1)
    data = (camstyle / truncated).read_bytes()
    (camstyle / truncated).write_bytes(data[: len(data) // 2])
    empty = styled(fourth, 2, 0)
    (camstyle / empty).write_bytes(b"")
    (camstyle / "notes.jpg").write_bytes(_jpeg_bytes())
    (camstyle / "prepare.json").write_text(json.dumps({"dataset": "market1501", "root": str(tmp_path)}))

    report = run_check(camstyle, progress=False)
    assert not report.complete
    assert report.missing == [missing]
    assert report.corrupt == sorted([truncated, empty])
    assert report.unexpected == ["notes.jpg"]  # prepare.json is metadata, not an unexpected name
    assert report.pairs[(0, 2)] == (1, 2)  # one missing
    assert report.pairs[(0, 1)] == (1, 2)  # one truncated
    assert report.pairs[(2, 0)] == (0, 1)  # one empty
    assert report.pairs[(1, 0)] == (1, 1)
    assert (report.present, report.expected) == (5, 8)


def test_own_camera_in_cyclegan_names_must_match(tmp_path):
    camstyle, _ = _dataset(tmp_path, "cyclegan")
    wrong = cyclegan_name("0001_c1s1_000000_00", 1, 2)  # image 1 is in camera 1, not 2
    (camstyle / wrong).write_bytes(_jpeg_bytes())
    report = run_check(tmp_path, progress=False)
    assert report.complete and report.unexpected == [wrong]


def test_table_shows_the_coverage_matrix(tmp_path):
    camstyle, _ = _dataset(tmp_path, "stargan")
    (camstyle / stargan_name("0001_c1s1_000000_00", 2)).unlink()
    report = run_check(tmp_path, progress=False)
    console = Console(record=True, width=160)
    console.print(render_check_table(report))
    text = console.export_text()
    rows = [line.split() for line in text.splitlines() if line.strip("│ ").startswith("c")]
    assert [row[1:-1:2] for row in rows] == [
        ["c1", "-", "2/2", "1/2"],
        ["c2", "1/1", "-", "1/1"],
        ["c3", "1/1", "1/1", "-"],
    ]
    assert "incomplete" in text and "7/8 present" in text
    assert "1 missing: 0001_c1s1_000000_00_fake_3.jpg" in text


def test_check_errors(tmp_path):
    with pytest.raises(EcnreidError, match="does not exist"):
        run_check(tmp_path / "absent")
    (tmp_path / "lonely").mkdir()
    with pytest.raises(EcnreidError, match="bounding_box_train"):
        run_check(tmp_path / "lonely")
    camstyle, _ = _dataset(tmp_path / "mixed", "stargan")
    (camstyle / cyclegan_name("0001_c1s1_000000_00", 0, 1)).write_bytes(_jpeg_bytes())
    with pytest.raises(EcnreidError, match="mixes"):
        run_check(camstyle)


def test_empty_folder_is_an_incomplete_stargan_set(tmp_path):
    camstyle, names = _dataset(tmp_path, "stargan")
    for name in names:
        (camstyle / name).unlink()
    report = run_check(tmp_path, progress=False)
    assert not report.complete and report.scheme == "stargan" and len(report.missing) == 8


def test_prepare_then_check(tmp_path):
    _dataset(tmp_path, "stargan")
    for path in (tmp_path / "bounding_box_train_camstyle").iterdir():
        path.unlink()
    out = tmp_path / "elsewhere"  # a custom --out: check finds the dataset through prepare.json
    config = PrepareConfig(
        dataset="market1501", root=tmp_path, method="colour", out=out, workers=0, runtime=RuntimeConfig(device="cpu")
    )
    run_prepare(config, progress=False)
    report = run_check(out, progress=False)
    assert report.complete and report.present == 8 and report.unexpected == []
