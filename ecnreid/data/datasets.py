"""Readers for Market-1501, DukeMTMC-reID, MSMT17, custom folders/CSVs and the synthetic dataset.

Every reader returns a ``ReidDataset`` whose records are sorted by path, with 0-based camera ids.
Person id -1 (Market "junk") is dropped when read; id 0 (Market distractors) stays.
Bad input raises ``EcnreidError`` with one line naming the path and the problem.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from ecnreid.data.records import ImageRecord, ReidDataset
from ecnreid.dataset_names import DATASET_HELP
from ecnreid.errors import EcnreidError

# File suffixes read as images (lower case), by the dataset readers and wherever a folder is scanned for images.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

# 1-based camera numbers of any width (MSMT17 has 15 cameras, custom sets may have more than 9).
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)s\d+_")  # 0002_c1s1_000451_03.jpg, -1_c1s1_000401_03.jpg
DUKE_NAME = re.compile(r"^(\d+)_c(\d+)_")  # 0005_c2_f0046985.jpg
GENERIC_NAME = re.compile(r"^(-?\d+)_c(\d+)(?:_|\.)")  # {pid}_c{cam}_anything.jpg (synthetic, custom)
MSMT_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_")  # 0000_000_01_0303morning_0015_0.jpg: pid_index_cam_...

TRAIN_DIR, QUERY_DIR, GALLERY_DIR = "bounding_box_train", "query", "bounding_box_test"

# Folder names a dataset may have inside the root the user gives (original release names first).
MARKET_FOLDERS = ("market1501", "Market-1501-v15.09.15", "Market-1501", "market-1501")
DUKE_FOLDERS = ("dukemtmc", "DukeMTMC-reID", "dukemtmc-reid", "DukeMTMC")
MSMT_FOLDERS = ("msmt17", "MSMT17_V2", "MSMT17_V1", "MSMT17")
SYNTHETIC_FOLDERS = ("synthetic",)
CUSTOM_FOLDERS = ("custom",)


def is_image_name(name: str) -> bool:
    """Whether a file name has one of the ``IMAGE_SUFFIXES`` (any case)."""
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _find_root(root: Path, folders: Iterable[str], is_dataset: Callable[[Path], bool], expected: str) -> Path:
    """The dataset folder: ``root`` itself, ``root/<name>`` or ``root/<name>/<name>`` (torchreid nests)."""
    if not root.exists():
        raise EcnreidError(f"{root}: dataset root does not exist (expected {expected})")
    if not root.is_dir():
        raise EcnreidError(f"{root}: dataset root is not a folder (expected {expected})")
    folders = tuple(folders)
    candidates = [root]
    candidates += [root / name for name in folders]
    candidates += [root / outer / inner for outer in folders for inner in folders]
    for candidate in candidates:
        if candidate.is_dir() and is_dataset(candidate):
            return candidate
    where = f"{root} or {root}/{{{','.join(folders)}}}" if folders else str(root)
    raise EcnreidError(f"{root}: no dataset found: expected {expected} in {where}")


def _parse_name(name: str, pattern: re.Pattern[str], folder: Path) -> ImageRecord | None:
    """An ``ImageRecord`` from a file name (1-based camera in the name), or None for junk (pid -1)."""
    match = pattern.match(name)
    if match is None:
        raise EcnreidError(f"{folder / name}: file name does not parse (expected a name like {_example(pattern)})")
    pid, cam = int(match.group(1)), int(match.group(2))
    if cam < 1:
        raise EcnreidError(f"{folder / name}: camera {cam} in the file name, but cameras are numbered from 1")
    if pid < -1:
        raise EcnreidError(f"{folder / name}: person id {pid} in the file name (only -1 marks junk)")
    if pid == -1:
        return None
    return ImageRecord(str(folder / name), pid, cam - 1)


def _example(pattern: re.Pattern[str]) -> str:
    return {
        MARKET_NAME.pattern: "0002_c1s1_000451_03.jpg",
        DUKE_NAME.pattern: "0005_c2_f0046985.jpg",
        GENERIC_NAME.pattern: "0001_c1_00001.jpg ({pid}_c{cam}_*.jpg, camera from 1)",
    }[pattern.pattern]


def _read_folder(folder: Path, pattern: re.Pattern[str]) -> list[ImageRecord]:
    """All images in ``folder`` parsed with ``pattern``; non-image files (Thumbs.db) are ignored."""
    if not folder.is_dir():
        raise EcnreidError(f"{folder}: split folder is missing")
    records = []
    for name in sorted(os.listdir(folder)):
        if not is_image_name(name):
            continue
        record = _parse_name(name, pattern, folder)
        if record is not None:
            records.append(record)
    if not records:
        raise EcnreidError(f"{folder}: split has no images")
    return records


def _read_splits(
    name: str,
    root: Path,
    pattern: re.Pattern[str],
    train_dirs: tuple[str, ...],
    query_dirs: tuple[str, ...],
    gallery_dirs: tuple[str, ...],
    require_test: bool,
) -> ReidDataset:
    """A dataset in the folder-per-split layout; the first existing folder name of each split is used."""

    def pick(options: tuple[str, ...]) -> Path:
        for option in options:
            if (root / option).is_dir():
                return root / option
        return root / options[0]

    train = _read_folder(pick(train_dirs), pattern)
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    for dirs, split in ((query_dirs, query), (gallery_dirs, gallery)):
        folder = pick(dirs)
        if folder.is_dir() or require_test:
            if not folder.is_dir():
                raise EcnreidError(
                    f"{folder}: split folder is missing (needed to evaluate on {name}; a dataset used only "
                    "as a training source needs only its training split)"
                )
            split.extend(_read_folder(folder, pattern))
    return ReidDataset(name=name, root=root, train=train, query=query, gallery=gallery)


def _has_train_folder(path: Path) -> bool:
    return (path / TRAIN_DIR).is_dir()


def read_market1501(root: str | Path, *, require_test: bool = True) -> ReidDataset:
    """Market-1501: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` of ``0002_c1s1_000451_03.jpg``."""
    root = _find_root(Path(root), MARKET_FOLDERS, _has_train_folder, f"{TRAIN_DIR}/")
    return _read_splits("market1501", root, MARKET_NAME, (TRAIN_DIR,), (QUERY_DIR,), (GALLERY_DIR,), require_test)


def read_dukemtmc(root: str | Path, *, require_test: bool = True) -> ReidDataset:
    """DukeMTMC-reID: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` of ``0005_c2_f0046985.jpg``."""
    root = _find_root(Path(root), DUKE_FOLDERS, _has_train_folder, f"{TRAIN_DIR}/")
    return _read_splits("dukemtmc", root, DUKE_NAME, (TRAIN_DIR,), (QUERY_DIR,), (GALLERY_DIR,), require_test)


def read_synthetic(root: str | Path, *, require_test: bool = True) -> ReidDataset:
    """One domain of the synthetic dataset (``<out>/source`` or ``<out>/target``), standard layout."""
    path = Path(root)
    if path.is_dir() and not _has_train_folder(path) and (path / "target").is_dir() and (path / "source").is_dir():
        raise EcnreidError(f"{path}: holds two synthetic domains; pass {path / 'source'} or {path / 'target'}")
    path = _find_root(path, SYNTHETIC_FOLDERS, _has_train_folder, f"{TRAIN_DIR}/")
    return _read_splits("synthetic", path, GENERIC_NAME, (TRAIN_DIR,), (QUERY_DIR,), (GALLERY_DIR,), require_test)


# --- MSMT17 -------------------------------------------------------------------------------------------

MSMT_LAYOUTS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))  # v1, v2


def _msmt_layout(path: Path) -> tuple[str, str] | None:
    if not (path / "list_train.txt").is_file():
        return None
    for train_dir, test_dir in MSMT_LAYOUTS:
        if (path / train_dir).is_dir():
            return train_dir, test_dir
    return None


def _read_msmt_list(list_file: Path, image_dir: Path) -> list[ImageRecord]:
    """Lines ``relative/path label``; the person id is the label, the 1-based camera is in the file name."""
    if not list_file.is_file():
        raise EcnreidError(f"{list_file}: list file is missing")
    if not image_dir.is_dir():
        raise EcnreidError(f"{image_dir}: image folder is missing (needed by {list_file.name})")
    records = []
    with open(list_file) as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{list_file}:{line_no}"
            if len(fields) != 2 or not _is_int(fields[1]):
                raise EcnreidError(f"{where}: line does not parse (expected 'relative/path label')")
            match = MSMT_NAME.match(os.path.basename(fields[0]))
            if match is None:
                raise EcnreidError(
                    f"{where}: file name {fields[0]!r} does not parse "
                    "(expected pid_index_camera_..., e.g. 0000_000_01_0303morning_0015_0.jpg)"
                )
            cam = int(match.group(3))
            if cam < 1:
                raise EcnreidError(f"{where}: camera {cam} in {fields[0]!r}, but cameras are numbered from 1")
            path = image_dir / fields[0]
            if not path.is_file():
                raise EcnreidError(f"{where}: image not found: {path}")
            records.append(ImageRecord(str(path), int(fields[1]), cam - 1))
    if not records:
        raise EcnreidError(f"{list_file}: list has no images")
    return records


def read_msmt17(root: str | Path, *, require_test: bool = True) -> ReidDataset:
    """MSMT17 v1 (``train/``, ``test/``) or v2 (``mask_train_v2/``, ``mask_test_v2/``) with list files.

    Train is ``list_train.txt`` plus ``list_val.txt`` (when present), as torchreid does.
    """
    path = _find_root(
        Path(root),
        MSMT_FOLDERS,
        lambda p: _msmt_layout(p) is not None,
        "list_train.txt beside train/ (v1) or mask_train_v2/ (v2)",
    )
    train_dir, test_dir = _msmt_layout(path)  # type: ignore[misc]
    train = _read_msmt_list(path / "list_train.txt", path / train_dir)
    if (path / "list_val.txt").is_file():
        train += _read_msmt_list(path / "list_val.txt", path / train_dir)
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    for list_name, split in (("list_query.txt", query), ("list_gallery.txt", gallery)):
        if (path / list_name).is_file() or require_test:
            split.extend(_read_msmt_list(path / list_name, path / test_dir))
    return ReidDataset(name="msmt17", root=path, train=sorted(train), query=sorted(query), gallery=sorted(gallery))


# --- custom -------------------------------------------------------------------------------------------

CUSTOM_TRAIN_DIRS = ("train", TRAIN_DIR)
CUSTOM_QUERY_DIRS = (QUERY_DIR,)
CUSTOM_GALLERY_DIRS = ("gallery", GALLERY_DIR)


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", text.strip()) is not None


def _read_csv(csv_file: Path, root: Path) -> list[ImageRecord]:
    """Lines ``path,pid,camid`` (camid 0-based, path relative to ``root``), with or without a header."""
    if not csv_file.is_file():
        raise EcnreidError(f"{csv_file}: CSV file is missing")
    records = []
    with open(csv_file, newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or all(not field.strip() for field in row):
                continue
            where = f"{csv_file}:{line_no}"
            if len(row) != 3:
                raise EcnreidError(f"{where}: line does not parse (expected 'path,pid,camid', got {len(row)} fields)")
            path_text, pid_text, cam_text = (field.strip() for field in row)
            if not _is_int(pid_text) or not _is_int(cam_text):
                if line_no == 1 and not _is_int(pid_text) and not _is_int(cam_text):
                    continue  # a header such as "path,pid,camid"
                raise EcnreidError(f"{where}: line does not parse (pid and camid must be integers)")
            pid, cam = int(pid_text), int(cam_text)
            if cam < 0:
                raise EcnreidError(f"{where}: camid {cam} is negative (camids in CSV files are 0-based)")
            if pid < -1:
                raise EcnreidError(f"{where}: person id {pid} (only -1 marks junk)")
            path = Path(path_text) if os.path.isabs(path_text) else root / path_text
            if not path.is_file():
                raise EcnreidError(f"{where}: image not found: {path}")
            if pid != -1:
                records.append(ImageRecord(str(path), pid, cam))
    if not records:
        raise EcnreidError(f"{csv_file}: split has no images")
    return sorted(records)


def _is_custom(path: Path) -> bool:
    return (path / "train.csv").is_file() or any((path / name).is_dir() for name in CUSTOM_TRAIN_DIRS)


def read_custom(root: str | Path, *, require_test: bool = True) -> ReidDataset:
    """A user dataset: folders (``train/``, ``query/``, ``gallery/``) of ``{pid}_c{cam}_*.jpg``, or CSV files.

    CSV mode is chosen when ``train.csv`` exists; it then needs ``query.csv`` and ``gallery.csv`` too
    (unless ``require_test`` is False).
    """
    path = _find_root(Path(root), CUSTOM_FOLDERS, _is_custom, "train.csv or a train/ (or bounding_box_train/) folder")
    if not (path / "train.csv").is_file():
        return _read_splits(
            "custom", path, GENERIC_NAME, CUSTOM_TRAIN_DIRS, CUSTOM_QUERY_DIRS, CUSTOM_GALLERY_DIRS, require_test
        )
    train = _read_csv(path / "train.csv", path)
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    for csv_name, split in (("query.csv", query), ("gallery.csv", gallery)):
        if (path / csv_name).is_file() or require_test:
            split.extend(_read_csv(path / csv_name, path))
    return ReidDataset(name="custom", root=path, train=train, query=query, gallery=gallery)


READERS: dict[str, Callable[..., ReidDataset]] = {
    "market1501": read_market1501,
    "dukemtmc": read_dukemtmc,
    "msmt17": read_msmt17,
    "custom": read_custom,
    "synthetic": read_synthetic,
}


# Other tools' names for the same datasets (torchreid's keys), any case.
DATASET_ALIASES = {"dukemtmcreid": "dukemtmc"}


def canonical_dataset_name(name: str) -> str:
    """``name`` as a key of ``READERS`` (``DukeMTMCreID`` → ``dukemtmc``); an unknown name is an error."""
    key = DATASET_ALIASES.get(name.lower(), name.lower())
    if key not in READERS:
        raise EcnreidError(f"unknown dataset {name!r}; valid names: {DATASET_HELP}")
    return key


def read_dataset(name: str, root: str | Path, *, require_test: bool = True) -> ReidDataset:
    """Read dataset ``name`` (or an alias) from ``root`` (the dataset folder or its parent).

    ``require_test=False`` allows a missing query/gallery split, for a dataset used only as a training source.
    """
    return READERS[canonical_dataset_name(name)](root, require_test=require_test)
