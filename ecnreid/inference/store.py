"""The feature folder `ecnreid extract` writes and `ecnreid search` reads:

- ``features.npy``: ``[N, D]`` float16 or float32, unit rows (``numpy.load``, ``mmap_mode="r"`` for large ones);
- ``index.csv``: ``path,pid,camid`` for row ``i`` of the features (pid and 0-based camid empty when the file
  name does not give them);
- ``card.json``: the model card of the checkpoint that made the features;
- ``extract.json``: what was extracted and how far (``done`` of ``count`` rows; ``complete``), so that an
  interrupted extraction resumes.

A folder with only ``features.npy`` and ``index.csv`` (made by other tools) is read too.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecnreid.errors import EcnreidError
from ecnreid.inference.card import ModelCard, read_card_json
from ecnreid.inference.images import ImageEntry
from ecnreid.io import atomic_write_bytes

FEATURES, INDEX, CARD, META = "features.npy", "index.csv", "card.json", "extract.json"
DTYPES = {"float16": np.float16, "float32": np.float32}
INDEX_HEADER = ("path", "pid", "camid")


def write_index(entries: list[ImageEntry], path: Path) -> None:
    """``index.csv`` (atomically), one row per feature row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # The minimal quoting covers only the characters of the "\n" terminator: a path holding a bare "\r" is
    # quoted by hand, or a reader would end the row there.
    quoted = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(INDEX_HEADER)
    for image, pid, camid in entries:
        row = [image, "" if pid is None else pid, "" if camid is None else camid]
        (quoted if "\r" in image else writer).writerow(row)
    atomic_write_bytes(buffer.getvalue().encode(), path)


def read_index(path: Path) -> list[ImageEntry]:
    """The rows of an ``index.csv``; a malformed one is a one-line error naming the line."""
    if not path.is_file():
        raise EcnreidError(f"{path}: index of the features not found")
    entries = []
    with open(path, newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if line == 1 and tuple(row) == INDEX_HEADER:
                continue
            if len(row) != 3:
                raise EcnreidError(f"{path}:{line}: expected 'path,pid,camid', got {len(row)} fields")
            try:
                pid, camid = (int(value) if value.strip() else None for value in row[1:])
            except ValueError:
                raise EcnreidError(f"{path}:{line}: pid and camid must be integers or empty") from None
            entries.append(ImageEntry(row[0], pid, camid))
    return entries


def list_sha256(entries: list[ImageEntry]) -> str:
    """A fingerprint of an image list (paths in order)."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(entry.path.encode() + b"\n")
    return digest.hexdigest()


def read_meta(folder: Path) -> dict[str, Any] | None:
    """``extract.json`` of ``folder``, or None when there is none."""
    path = folder / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EcnreidError(
            f"{path}: not the extraction record `ecnreid extract` writes (unreadable or not JSON: "
            f"{getattr(exc, 'strerror', None) or exc}); delete the folder and extract again"
        ) from None
    if not isinstance(meta, dict):
        raise EcnreidError(f"{path}: not an extraction record")
    return meta


def is_feature_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / FEATURES).is_file()


@dataclass
class FeatureFolder:
    """A finished feature folder, its features memory-mapped read-only."""

    folder: Path
    features: np.ndarray
    entries: list[ImageEntry]
    card: ModelCard | None
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.features.shape[0])


def open_feature_folder(path: Path, option: str, remedy: str = "extract the features again") -> FeatureFolder:
    """Read a feature folder for ``option``: an unfinished extraction, a damaged file or an index that does
    not match the features is a one-line error (a damaged file's ends with ``remedy``)."""
    folder = Path(path)
    label = f"{option} {folder}"
    if not is_feature_folder(folder):
        raise EcnreidError(f"{label}: no {FEATURES} here; expected a folder written by `ecnreid extract`")
    meta = read_meta(folder) or {}
    if meta and not meta.get("complete"):
        raise EcnreidError(
            f"{label}: unfinished extraction ({meta.get('done', 0)} of {meta.get('count', '?')} images); rerun "
            "`ecnreid extract` with the same options to finish it"
        )
    try:
        features = np.load(folder / FEATURES, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        # numpy's own text for a non-array file is a paragraph about pickles: the reason is one phrase.
        reason = getattr(exc, "strerror", None) or "not a .npy array"
        raise EcnreidError(f"{label}: cannot read {FEATURES} ({reason}); {remedy}") from None
    if features.ndim != 2 or features.dtype not in (np.float16, np.float32):
        raise EcnreidError(
            f"{label}: {FEATURES} holds {features.dtype} {tuple(features.shape)}; expected [N, D] float16 or float32"
        )
    try:
        entries = read_index(folder / INDEX)
    except EcnreidError as exc:
        raise EcnreidError(f"{option} {exc}; {remedy}") from None
    if len(entries) != len(features):
        raise EcnreidError(f"{label}: {INDEX} has {len(entries)} rows but {FEATURES} {len(features)}")
    card = read_card_json(folder / CARD) if (folder / CARD).is_file() else None
    return FeatureFolder(folder, features, entries, card, meta)


def features_stamp(folder: Path) -> dict[str, Any]:
    """What identifies the contents of ``features.npy`` cheaply (an index built on it is stale when this
    changes): size, modification time, and a hash of 64 rows spread over the file."""
    path = folder / FEATURES
    stat = path.stat()
    features = np.load(path, mmap_mode="r", allow_pickle=False)
    rows = np.unique(np.linspace(0, len(features) - 1, num=min(64, len(features))).astype(np.int64))
    sample = np.ascontiguousarray(features[rows]).tobytes() if len(features) else b""
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "shape": list(features.shape),
        "dtype": str(features.dtype),
        "sample_sha256": hashlib.sha256(sample).hexdigest(),
    }
