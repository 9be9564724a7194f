"""The target training set with camera-invariance inputs (ECN, Zhong et al. CVPR 2019, section 3.3).

Each item is a target training image in a random camera's style: a camera ``c`` is drawn uniformly from the
target's cameras; for the image's own camera (or without a CamStyle set) it is the original image, otherwise
its CamStyle image transferred to ``c``. The class stays the image's index.

Also here: finding the CamStyle folder of a dataset, and the pseudo-camera mapping that ``prepare
--pseudo-cameras`` writes for datasets without camera ids, so that ``train`` groups the images the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from ecnreid.data.camstyle_names import Scheme, camstyle_name, camstyle_path, detect_scheme
from ecnreid.data.datasets import is_image_name
from ecnreid.data.image_dataset import load_image
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError

CAMSTYLE_FOLDER = "bounding_box_train_camstyle"
PSEUDO_CAMERAS_FILE = "pseudo_cameras.json"


def find_camstyle_dir(dataset_root: str | os.PathLike) -> Path | None:
    """``<root>/bounding_box_train_camstyle`` when it exists and holds at least one image, else None."""
    folder = Path(dataset_root) / CAMSTYLE_FOLDER
    if not folder.is_dir():
        return None
    with os.scandir(folder) as entries:
        for entry in entries:
            if is_image_name(entry.name) and not entry.name.startswith("."):
                return folder
    return None


@dataclass(frozen=True)
class CamStyleCoverage:
    """How much of the expected set (every image x every other camera) a CamStyle folder holds."""

    camstyle_dir: Path
    scheme: Scheme
    expected: int
    present: int
    first_missing: Path | None

    @property
    def missing(self) -> int:
        return self.expected - self.present

    @property
    def complete(self) -> bool:
        return self.present == self.expected

    def to_dict(self) -> dict[str, object]:
        return {
            "dir": str(self.camstyle_dir),
            "scheme": self.scheme,
            "expected": self.expected,
            "present": self.present,
            "coverage": self.present / self.expected if self.expected else 1.0,
        }


def camstyle_coverage(
    records: Sequence[ImageRecord], camstyle_dir: str | os.PathLike, num_cameras: int
) -> CamStyleCoverage:
    """Count the files of ``camstyle_dir`` that camera invariance will draw for ``records`` (one listing of the
    folder, no per-file stat); the scheme is read from the folder's names."""
    folder = Path(camstyle_dir)
    scheme = detect_scheme(folder)
    with os.scandir(folder) as entries:
        names = {entry.name for entry in entries}
    expected = present = 0
    first_missing = None
    for record in records:
        stem = Path(record.path).stem
        for camera in range(num_cameras):
            if camera == record.camid:
                continue
            expected += 1
            name = camstyle_name(stem, record.camid, camera, scheme)
            if name in names:
                present += 1
            elif first_missing is None:
                first_missing = folder / name
    return CamStyleCoverage(folder, scheme, expected, present, first_missing)


class CamStyleTargetDataset(Dataset):
    """Target training images for the camera-invariance loss: item ``i`` is ``(image, camid, i)``.

    ``camid`` is the image's own (0-based) camera; the style camera is drawn with torch's global RNG, so
    ``torch.manual_seed`` makes the draws reproducible (DataLoader workers derive their seeds from it too).
    A CamStyle file that is missing or does not decode is a one-line error, never a quiet fall-back to the
    original image (which would train another setting than the one asked for); ``camstyle_coverage``
    checks the whole set before training starts.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        camstyle_dir: str | os.PathLike | None,
        num_cameras: int,
        transform: Callable[[Image.Image], Any] | None,
        scheme: Scheme | None = None,
    ) -> None:
        if num_cameras < 1:
            raise ValueError(f"num_cameras must be at least 1, got {num_cameras}")
        beyond = [r for r in records if not 0 <= r.camid < num_cameras]
        if beyond:  # callers count the cameras of these very records
            raise ValueError(f"{beyond[0].path}: camera {beyond[0].camid} outside the target's {num_cameras} cameras")
        self.records = list(records)
        self.camstyle_dir = Path(camstyle_dir) if camstyle_dir is not None else None
        self.num_cameras = num_cameras
        self.transform = transform
        if self.camstyle_dir is not None and scheme is None:
            scheme = detect_scheme(self.camstyle_dir)
        self.scheme: Scheme | None = scheme

    def __len__(self) -> int:
        return len(self.records)

    def style_path(self, index: int, camera: int) -> Path:
        """The file used for image ``index`` in camera ``camera``'s style (the original for its own camera,
        or for every camera without a CamStyle set)."""
        record = self.records[index]
        if self.camstyle_dir is None or camera == record.camid:
            return Path(record.path)
        return camstyle_path(self.camstyle_dir, record, camera, self.scheme)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        camera = int(torch.randint(self.num_cameras, ()).item())
        path = self.style_path(index, camera)
        if not path.is_file():
            raise EcnreidError(
                f"{path}: CamStyle image missing (the set changed after training started); "
                f"`ecnreid prepare --check {self.camstyle_dir}` lists what is missing"
            )
        image = load_image(str(path))
        if self.transform is not None:
            image = self.transform(image)
        return image, self.records[index].camid, index


def pseudo_camera_keys(records: Sequence[ImageRecord]) -> list[str]:
    """The key of each record in ``pseudo_cameras.json``: its path relative to the records' common folder.

    Relative keys keep the mapping valid when the dataset folder moves.
    """
    if not records:
        return []
    parents = {os.path.dirname(os.path.abspath(r.path)) for r in records}
    base = os.path.commonpath(list(parents))
    return [Path(os.path.relpath(os.path.abspath(r.path), base)).as_posix() for r in records]


def load_pseudo_cameras(camstyle_dir: str | os.PathLike | None) -> dict[str, int] | None:
    """The pseudo-camera mapping ``{relative image path: camera}`` of a CamStyle folder; None if it has none."""
    if camstyle_dir is None:
        return None
    path = Path(camstyle_dir) / PSEUDO_CAMERAS_FILE
    if not path.is_file():
        return None
    try:
        mapping = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise EcnreidError(f"{path}: unreadable pseudo-camera mapping ({error})") from None
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in mapping.items()
    ):
        raise EcnreidError(f"{path}: expected a JSON object of image path -> camera (non-negative integer)")
    return mapping


def apply_pseudo_cameras(records: Sequence[ImageRecord], mapping: dict[str, int]) -> list[ImageRecord]:
    """The records with their camera ids replaced by the pseudo cameras of ``mapping``."""
    keys = pseudo_camera_keys(records)
    absent = [key for key in keys if key not in mapping]
    if absent:
        raise EcnreidError(
            f"{PSEUDO_CAMERAS_FILE}: {len(absent)} of {len(keys)} training images have no pseudo camera "
            f"(first: {absent[0]}); the mapping was made for another image set, rerun prepare"
        )
    return [ImageRecord(r.path, r.pid, mapping[key]) for r, key in zip(records, keys, strict=True)]
