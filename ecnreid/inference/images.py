"""Which images a command reads: a folder of any depth, one image, or a split of a known dataset, each image
with the person id and camera its file name gives when it follows a re-ID naming scheme."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from ecnreid.data.datasets import DUKE_NAME, GENERIC_NAME, MARKET_NAME, MSMT_NAME, is_image_name, read_dataset
from ecnreid.data.image_dataset import verify_images
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError

SPLITS = ("train", "query", "gallery")
# Tried in order: Market's pattern is the most specific, MSMT17's puts the camera third.
_NAME_PATTERNS = ((MARKET_NAME, 2), (DUKE_NAME, 2), (GENERIC_NAME, 2), (MSMT_NAME, 3))


class ImageEntry(NamedTuple):
    """An image and, when known, its person id and 0-based camera (None when the name does not parse)."""

    path: str
    pid: int | None
    camid: int | None

    def record(self) -> ImageRecord:
        """The record the image loaders take (unknown ids as -1; loaders only read the path)."""
        return ImageRecord(self.path, -1 if self.pid is None else self.pid, -1 if self.camid is None else self.camid)


def parse_ids(name: str) -> tuple[int | None, int | None]:
    """(person id, 0-based camera) from a file name in a re-ID naming scheme, else (None, None)."""
    for pattern, camera_group in _NAME_PATTERNS:
        match = pattern.match(name)
        if match is not None and int(match.group(camera_group)) >= 1:
            return int(match.group(1)), int(match.group(camera_group)) - 1
    return None, None


def list_images(path: Path, option: str) -> list[ImageEntry]:
    """The images under ``path`` (a folder, searched at any depth, in sorted path order; or one image file);
    no image at all is a one-line error naming ``option``."""
    path = Path(path)
    if path.is_file():
        if not is_image_name(path.name):
            raise EcnreidError(f"{option} {path}: not an image (expected one of .jpg, .jpeg, .png, .bmp)")
        return [ImageEntry(str(path.resolve()), *parse_ids(path.name))]
    if not path.is_dir():
        raise EcnreidError(f"{option} {path}: no such file or folder")
    found: list[str] = []
    seen: set[str] = set()
    for folder, subfolders, names in os.walk(path, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree would otherwise be walked forever
            subfolders.clear()
            continue
        seen.add(real)
        found += [os.path.join(folder, name) for name in names if is_image_name(name)]
    if not found:
        raise EcnreidError(f"{option} {path}: no images in the folder or below it (.jpg, .jpeg, .png, .bmp)")
    return [ImageEntry(str(Path(p).resolve()), *parse_ids(os.path.basename(p))) for p in sorted(found)]


def dataset_images(name: str, root: Path, split: str) -> list[ImageEntry]:
    """The ``split`` (train, query or gallery) of dataset ``name`` at ``root``, ids as its reader gives them."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    dataset = read_dataset(name, root, require_test=split != "train")
    records = getattr(dataset, split)
    return [ImageEntry(str(Path(r.path).resolve()), r.pid, r.camid) for r in records]


def decodable(entries: list[ImageEntry], workers: int) -> tuple[list[ImageEntry], list[str]]:
    """The entries whose images decode, in order, and the paths of those that do not."""
    good, bad = verify_images([entry.record() for entry in entries], workers=max(1, workers))
    kept = {record.path for record in good}
    return [entry for entry in entries if entry.path in kept], bad
