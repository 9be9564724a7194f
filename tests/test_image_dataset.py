"""ImageDataset, the bad-image pre-scan, and the deterministic / endless loaders of ``samplers``."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ecnreid.data.image_dataset import ImageDataset, load_image, verify_images
from ecnreid.data.records import ImageRecord
from ecnreid.data.samplers import InfiniteLoader, build_loader, cycle, seed_worker
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


def _order(loader: DataLoader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def test_build_loader_is_deterministic_in_its_seed() -> None:
    data = TensorDataset(torch.arange(20))
    first = _order(build_loader(data, 4, shuffle=True, drop_last=True, workers=0, seed=7))
    again = _order(build_loader(data, 4, shuffle=True, drop_last=True, workers=0, seed=7))
    other = _order(build_loader(data, 4, shuffle=True, drop_last=True, workers=0, seed=8))
    assert first == again and first != other
    assert sorted(first) == list(range(20))
    plain = _order(build_loader(data, 6, shuffle=False, drop_last=True, workers=0, seed=0))
    assert plain == list(range(18))  # drop_last: 3 full batches of 6


def test_build_loader_rejects_a_batch_larger_than_the_dataset() -> None:
    with pytest.raises(EcnreidError, match="--batch-size"):
        build_loader(TensorDataset(torch.arange(5)), 8, shuffle=True, drop_last=True, workers=0, seed=0)
    loader = build_loader(TensorDataset(torch.arange(5)), 8, shuffle=False, drop_last=False, workers=0, seed=0)
    assert _order(loader) == [0, 1, 2, 3, 4]


def test_infinite_loader_restarts_and_reshuffles() -> None:
    loader = build_loader(TensorDataset(torch.arange(6)), 3, shuffle=True, drop_last=True, workers=0, seed=1)
    endless = InfiniteLoader(loader)
    batches = [next(endless)[0].tolist() for _ in range(7)]  # 2 batches per pass: passes 1..4
    assert endless.passes == 4
    passes = [batches[i] + batches[i + 1] for i in (0, 2, 4)]
    assert all(sorted(p) == list(range(6)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # each pass is a new permutation
    from_cycle = [
        b[0].tolist()
        for b, _ in zip(
            cycle(build_loader(TensorDataset(torch.arange(6)), 3, True, True, 0, seed=1)), range(7), strict=False
        )
    ]
    assert from_cycle == batches


def test_infinite_loader_sets_the_sampler_epoch_per_pass() -> None:
    data = TensorDataset(torch.arange(4))
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    endless = InfiniteLoader(DataLoader(data, batch_size=4, sampler=sampler))
    seen = []
    for _ in range(3):
        next(endless)
        seen.append(sampler.epoch)
    assert seen == [0, 1, 2]


def test_infinite_loader_on_an_empty_loader_is_an_error() -> None:
    with pytest.raises(EcnreidError, match="no batches"):
        next(InfiniteLoader(DataLoader(TensorDataset(torch.arange(2)), batch_size=4, drop_last=True)))


def test_seed_worker_seeds_numpy_and_random_from_torch() -> None:
    torch.manual_seed(1234)
    seed_worker(0)
    values = (np.random.rand(), random.random())
    np.random.seed(1234)
    random.seed(1234)
    assert values == (np.random.rand(), random.random())
