"""``ecnreid prepare --check DIR``: validate an existing CamStyle set (ours or a downloaded CycleGAN set).

Expected: every target training image x every other camera, named by the folder's scheme. The report
gives the coverage of each (own camera → target camera) pair, the missing files, the files that do not
fully decode (truncated downloads, killed copies) and names that follow no rule.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from ecnreid.data.camstyle_dataset import (
    CAMSTYLE_FOLDER,
    PSEUDO_CAMERAS_FILE,
    apply_pseudo_cameras,
    load_pseudo_cameras,
)
from ecnreid.data.camstyle_names import Scheme, camstyle_name, count_schemes
from ecnreid.data.datasets import TRAIN_DIR, read_dataset
from ecnreid.data.image_dataset import decodes_fully
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError
from ecnreid.progress import make_progress

PREPARE_FILE = "prepare.json"
METADATA_FILES = frozenset({PREPARE_FILE, PSEUDO_CAMERAS_FILE})
# Tried in this order when the folder does not say which dataset it belongs to (no prepare.json):
# MSMT17 needs its list files, the others differ in their file-name patterns.
_READER_ORDER = ("msmt17", "market1501", "dukemtmc", "custom")


@dataclass(frozen=True)
class CheckReport:
    """What ``run_check`` found. Camera ids in ``pairs`` are 0-based: (own, target) → (present, expected)."""

    camstyle_dir: Path
    dataset: str
    scheme: Scheme
    num_images: int
    num_cameras: int
    pairs: dict[tuple[int, int], tuple[int, int]]
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    complete: bool = False

    @property
    def expected(self) -> int:
        return sum(expected for _, expected in self.pairs.values())

    @property
    def present(self) -> int:
        return sum(present for present, _ in self.pairs.values())


def _locate(path: Path) -> tuple[Path, Path]:
    """(CamStyle folder, dataset folder) from either of them."""
    if path.exists() and not path.is_dir():
        raise EcnreidError(f"--check {path}: is a file; expected the CamStyle folder or the dataset folder")
    if not path.is_dir():
        raise EcnreidError(f"--check {path}: folder does not exist")
    if (path / CAMSTYLE_FOLDER).is_dir():
        return path / CAMSTYLE_FOLDER, path
    if _holds_train_split(path):
        raise EcnreidError(
            f"--check {path}: a dataset folder without a CamStyle set ({path / CAMSTYLE_FOLDER} does not exist); "
            f"make one with `ecnreid prepare --dataset NAME --root {path}`, or give --check the CamStyle folder itself"
        )
    return path, path.parent


def _holds_train_split(folder: Path) -> bool:
    """Whether ``folder`` is a dataset folder: a Market-style train folder, or MSMT17's train list."""
    return (folder / TRAIN_DIR).is_dir() or (folder / "list_train.txt").is_file()


def _train_records(camstyle_dir: Path, dataset_root: Path) -> tuple[str, list[ImageRecord]]:
    """The target training images the set was made from: per prepare.json, else the sibling train split."""
    manifest = camstyle_dir / PREPARE_FILE
    if manifest.is_file():
        try:
            info = json.loads(manifest.read_text())
            name, root = info["dataset"], Path(info["root"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EcnreidError(
                f"{manifest}: not the record `ecnreid prepare` writes (no dataset and root in readable JSON); "
                "delete it to check the set against the folder beside it"
            ) from exc
        return name, list(read_dataset(name, root, require_test=False).train)
    if not _holds_train_split(dataset_root):
        raise EcnreidError(
            f"--check {camstyle_dir}: no {TRAIN_DIR}/ beside it to check against; give --check the dataset folder "
            f"(holding {TRAIN_DIR}/ and {CAMSTYLE_FOLDER}/) or the {CAMSTYLE_FOLDER}/ inside it"
        )
    errors = []
    for name in _READER_ORDER:
        try:
            return name, list(read_dataset(name, dataset_root, require_test=False).train)
        except EcnreidError as exc:
            errors.append(f"{name}: {exc}")
    raise EcnreidError(f"{dataset_root}: training images not readable as any dataset ({errors[0]})")


@dataclass(frozen=True)
class CamStyleSet:
    """A CamStyle folder and the target training images it was made from (pseudo cameras applied)."""

    camstyle_dir: Path
    dataset: str
    records: list[ImageRecord]
    scheme: Scheme

    @property
    def num_cameras(self) -> int:
        return max(r.camid for r in self.records) + 1


def open_camstyle_set(path: str | os.PathLike) -> CamStyleSet:
    """The CamStyle set in ``path`` (the dataset folder or its ``bounding_box_train_camstyle``); its naming
    scheme read from its files (StarGAN when it holds none yet)."""
    camstyle_dir, dataset_root = _locate(Path(path))
    dataset, records = _train_records(camstyle_dir, dataset_root)
    if (mapping := load_pseudo_cameras(camstyle_dir)) is not None:
        records = apply_pseudo_cameras(records, mapping)
    counts = count_schemes(camstyle_dir)
    if counts["stargan"] and counts["cyclegan"]:
        raise EcnreidError(
            f"{camstyle_dir}: mixes StarGAN ({counts['stargan']}) and CycleGAN ({counts['cyclegan']}) names"
        )
    scheme: Scheme = "cyclegan" if counts["cyclegan"] else "stargan"
    return CamStyleSet(camstyle_dir, dataset, records, scheme)


def run_check(path: str | os.PathLike, workers: int = 8, progress: bool = True) -> CheckReport:
    """Check the CamStyle set in ``path`` (the dataset folder or its ``bounding_box_train_camstyle``)."""
    found = open_camstyle_set(path)
    camstyle_dir, dataset, records, scheme = found.camstyle_dir, found.dataset, found.records, found.scheme
    num_cameras = max(r.camid for r in records) + 1
    present_files = {entry.name for entry in os.scandir(camstyle_dir) if entry.is_file()}

    expected_pair: dict[str, tuple[int, int]] = {}
    for record in records:
        stem = Path(record.path).stem
        for target in range(num_cameras):
            if target != record.camid:
                expected_pair[camstyle_name(stem, record.camid, target, scheme)] = (record.camid, target)
    to_decode = sorted(name for name in expected_pair if name in present_files)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, make_progress(transient=True) as bar:
        task = bar.add_task("decode CamStyle", total=len(to_decode), unit="img", info="", visible=progress)
        good = []
        for ok in pool.map(decodes_fully, (camstyle_dir / name for name in to_decode), chunksize=64):
            good.append(ok)
            bar.update(task, advance=1)
    corrupt = [name for name, ok in zip(to_decode, good, strict=True) if not ok]

    pairs: dict[tuple[int, int], list[int]] = {}
    for name, pair in expected_pair.items():
        entry = pairs.setdefault(pair, [0, 0])
        entry[1] += 1
        entry[0] += name in present_files
    for name in corrupt:
        pairs[expected_pair[name]][0] -= 1
    missing = sorted(name for name in expected_pair if name not in present_files)
    unexpected = sorted(name for name in present_files - expected_pair.keys() if name not in METADATA_FILES)
    return CheckReport(
        camstyle_dir=camstyle_dir,
        dataset=dataset,
        scheme=scheme,
        num_images=len(records),
        num_cameras=num_cameras,
        pairs={pair: (present, expected) for pair, (present, expected) in sorted(pairs.items())},
        missing=missing,
        corrupt=corrupt,
        unexpected=unexpected,
        complete=not missing and not corrupt,
    )


def render_check_table(report: CheckReport, listed: int = 5) -> Table:
    """Coverage matrix (rows own cameras, columns target cameras, 1-based; cells ``present/expected``)
    above the totals and the first ``listed`` missing, corrupt and unexpected names."""
    status = "[green]complete" if report.complete else "[red]incomplete"
    matrix = Table()
    matrix.add_column("own \\ target", justify="right")
    for target in range(report.num_cameras):
        matrix.add_column(f"c{target + 1}", justify="right")
    for own in range(report.num_cameras):
        cells = []
        for target in range(report.num_cameras):
            if own == target:
                cells.append("[dim]-")
                continue
            present, expected = report.pairs.get((own, target), (0, 0))
            colour = "green" if present == expected else "red"
            cells.append(f"[{colour}]{present}/{expected}")
        matrix.add_row(f"c{own + 1}", *cells)
    # An outer grid keeps the notes below at their own width instead of wrapping them to the matrix's.
    layout = Table.grid()
    layout.add_row(f"[bold]CamStyle check ({report.scheme} names, {report.dataset}):[/] {status}")
    layout.add_row(matrix)
    layout.add_row(str(report.camstyle_dir))
    layout.add_row(
        f"{report.num_images} training images x {report.num_cameras - 1} other cameras: "
        f"{report.present}/{report.expected} present and decodable"
    )
    for label, names in (("missing", report.missing), ("corrupt", report.corrupt), ("unexpected", report.unexpected)):
        if names:
            shown = ", ".join(names[:listed]) + (", …" if len(names) > listed else "")
            layout.add_row(f"[red]{len(names)} {label}:[/] {shown}")
    return layout
