"""ImageDataset, the bad-image pre-scan (``decodes_fully``) and the DataLoader worker seeding of ``samplers``
(the epoch loaders themselves: tests/test_samplers.py)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ecnreid.data.image_dataset import ImageDataset, decodes_fully, load_image, verify_images
from ecnreid.data.records import ImageRecord
from ecnreid.data.samplers import seed_worker
from ecnreid.errors import EcnreidError


def _write(path: Path, colour: tuple[int, int, int], mode: str = "RGB") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 16), colour if mode == "RGB" else colour[0]).save(path, quality=95)
    return str(path)


@pytest.fixture
def records(tmp_path: Path) -> list[ImageRecord]:
    return [
        ImageRecord(_write(tmp_path / "a.jpg", (255, 0, 0)), 3, 0),
        ImageRecord(_write(tmp_path / "b.png", (90, 90, 90), mode="L"), 4, 1),
        ImageRecord(_write(tmp_path / "c.jpg", (0, 0, 255)), 3, 2),
    ]


def _truncate(path: str, keep: float = 0.6) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


def test_items_are_image_pid_camid_index(records: list[ImageRecord]) -> None:
    to_tensor = lambda image: torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)  # noqa: E731
    dataset = ImageDataset(records, to_tensor)
    assert len(dataset) == 3
    image, pid, camid, index = dataset[2]
    assert (pid, camid, index) == (3, 2, 2)
    assert image.shape == (3, 16, 8)
    assert abs(image[2].mean().item() - 255) < 3 and image[0].mean().item() < 3  # blue (JPEG rounding)
    grey, *_ = ImageDataset(records, None)[1]
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (90, 90, 90)  # L converted to RGB


def test_undecodable_images_raise_one_line_errors(tmp_path: Path, records: list[ImageRecord]) -> None:
    _truncate(records[0].path)
    (tmp_path / "junk.jpg").write_bytes(b"this is not a jpeg")
    dataset = ImageDataset(
        [records[0], ImageRecord(str(tmp_path / "junk.jpg"), 1, 0), ImageRecord(str(tmp_path / "gone.jpg"), 1, 0)], None
    )
    for index in range(3):
        with pytest.raises(EcnreidError) as info:
            dataset[index]
        message = str(info.value)
        assert message.startswith(dataset.records[index].path + ": ") and "\n" not in message
    with pytest.raises(EcnreidError, match="cannot decode image"):
        load_image(records[0].path)
    with pytest.raises(EcnreidError, match="not found"):
        load_image(str(tmp_path / "gone.jpg"))


def test_verify_images_finds_truncated_corrupt_and_missing(tmp_path: Path, records: list[ImageRecord]) -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(128, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(records[2].path, quality=95)
    _truncate(records[2].path, keep=0.9)
    with Image.open(records[2].path) as image:
        image.verify()  # only the tail of the scan is missing: Pillow's verify() does not notice
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff garbage")
    everything = [*records, ImageRecord(str(tmp_path / "junk.jpg"), 5, 0), ImageRecord(str(tmp_path / "x.jpg"), 6, 0)]
    good, bad = verify_images(everything, progress=False, workers=2)
    assert good == records[:2]
    assert bad == [records[2].path, str(tmp_path / "junk.jpg"), str(tmp_path / "x.jpg")]
    good, bad = verify_images(records[:2], progress=True)
    assert (good, bad) == (records[:2], [])


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9, 0.99])
def test_decodes_fully_catches_any_truncation(tmp_path: Path, suffix: str, keep: float) -> None:
    """JPEGs are checked by a reduced-scale draft decode, which still reads the whole scan: a file cut
    anywhere fails, as with a full decode (what ``prepare --check`` relies on for downloaded sets)."""
    path = tmp_path / f"noise{suffix}"
    noise = np.random.default_rng(1).integers(0, 256, size=(256, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    assert decodes_fully(path) and decodes_fully(str(path))
    _truncate(str(path), keep=keep)
    assert not decodes_fully(path)
    with pytest.raises(EcnreidError, match="cannot decode"):  # a full decode agrees
        load_image(str(path))
    path.write_bytes(b"")
    assert not decodes_fully(path) and not decodes_fully(tmp_path / "absent.jpg")


def test_seed_worker_seeds_numpy_and_random_from_torch() -> None:
    torch.manual_seed(1234)
    seed_worker(0)
    values = (np.random.rand(), random.random())
    np.random.seed(1234)
    random.seed(1234)
    assert values == (np.random.rand(), random.random())
