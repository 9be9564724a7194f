"""Nearest gallery features by inner product (the cosine of unit features), with faiss.

- ``flat``: exact. It reads ``features.npy`` in blocks (nothing to build or keep: the features are the index),
  so the memory it needs does not grow with the gallery.
- ``ivf``: an inverted file of ``nlist ≈ 4·√N`` cells (spherical k-means), storing float32 rows (IVFFlat) or,
  for float16 features, float16 rows (no loss, half the memory). ``nprobe``, the cells visited per query, is
  calibrated when the index is built: the smallest power of two whose recall@10 against exact search, on a
  sample of gallery features used as queries (themselves left out), reaches ``TARGET_RECALL``. The index is
  saved beside the features (``ivf.faiss``, ``ivf.json``) and rebuilt when the features change.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ecnreid.inference.messages import say
from ecnreid.inference.store import features_stamp
from ecnreid.io import write_json
from ecnreid.progress import make_progress

FLAT_LIMIT = 1_000_000  # `auto` searches exactly up to this many gallery features, with IVF beyond
BLOCK_BYTES = 1 << 27  # float32 gallery rows converted and searched at once (128 MiB)
TARGET_RECALL = 0.95
CALIBRATION_QUERIES = 256
CALIBRATION_K = 10
POINTS_PER_CELL = 40  # k-means training rows per cell (faiss warns below 39)
KMEANS_ITERATIONS = 10  # coarse centroids need not be exact: nprobe recovers the recall
INDEX_FILE, INDEX_META = "ivf.faiss", "ivf.json"


def index_kind(requested: str, num_gallery: int) -> str:
    """``flat`` or ``ivf`` for ``--index auto|flat|ivf`` and a gallery of ``num_gallery`` features."""
    if requested == "auto":
        return "flat" if num_gallery <= FLAT_LIMIT else "ivf"
    if requested not in ("flat", "ivf"):
        raise ValueError(f"index kind {requested!r} is not auto, flat or ivf")
    return requested


def nlist_for(num_gallery: int) -> int:
    """Cells of an IVF index: about 4·√N, and few enough that each has ``POINTS_PER_CELL`` training rows."""
    return max(1, min(round(4 * math.sqrt(num_gallery)), num_gallery // POINTS_PER_CELL))


def block_rows(dim: int) -> int:
    return max(1, BLOCK_BYTES // (4 * dim))


def float32_rows(features: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as a C-contiguous float32 array (what faiss takes)."""
    return np.ascontiguousarray(features[start:stop], dtype=np.float32)


def flat_search(
    queries: np.ndarray, gallery: np.ndarray, k: int, advance: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (similarities, gallery rows) ``[Q, k]`` of unit ``queries`` in ``gallery`` ``[G, D]``
    (float16 or float32, memory-mapped or not), best first; ``advance`` is told each block's row count."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(gallery))
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    step = block_rows(gallery.shape[1])
    for start in range(0, len(gallery), step):
        block = float32_rows(gallery, start, start + step)
        sims, ids = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(sims, ids + start)
        if advance is not None:
            advance(len(block))
    heap.finalize()
    return heap.D, heap.I


@dataclass
class IVFIndex:
    """A trained and filled IVF index with its calibrated ``nprobe``."""

    index: faiss.IndexIVF
    nprobe: int
    recall: float  # recall@10 of the calibration at ``nprobe``
    built: bool  # False when read from the saved file

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarities, gallery rows) visiting ``nprobe`` cells (default: the calibrated value)."""
        params = faiss.SearchParametersIVF(nprobe=min(nprobe or self.nprobe, self.nlist))
        k = min(k, int(self.index.ntotal))
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)


def build_ivf(gallery: np.ndarray, nlist: int | None = None, *, seed: int = 0, show_progress: bool = True) -> Any:
    """Train an IVF index on a sample of ``gallery`` and add every row, block by block."""
    num, dim = gallery.shape
    nlist = nlist or nlist_for(num)
    quantizer = faiss.IndexFlatIP(dim)
    if gallery.dtype == np.float16:
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.spherical = True  # unit features: centroids on the sphere
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(num, size=min(num, POINTS_PER_CELL * nlist), replace=False))
    say(f"training an IVF index of {nlist} cells on {len(sample)} of {num} gallery features")
    index.train(np.ascontiguousarray(gallery[sample], dtype=np.float32))
    step = block_rows(dim)
    progress = make_progress(transient=True)
    with progress if show_progress else nullcontext():
        task = progress.add_task("IVF index", total=num, unit="vec", info="")
        for start in range(0, num, step):
            index.add(float32_rows(gallery, start, start + step))
            progress.update(task, advance=min(step, num - start))
    return index


def calibrate_nprobe(
    index: Any, gallery: np.ndarray, *, target: float = TARGET_RECALL, queries: int = CALIBRATION_QUERIES, seed: int = 0
) -> tuple[int, float]:
    """The smallest power-of-two ``nprobe`` (or ``nlist``) whose recall@10 against exact search reaches
    ``target``, with sampled gallery rows as queries (their own row left out), and that recall."""
    num = len(gallery)
    k = min(CALIBRATION_K, num - 1)
    if k < 1:
        return int(index.nlist), 1.0
    rows = np.sort(np.random.default_rng(seed).choice(num, size=min(queries, num), replace=False))
    sample = np.ascontiguousarray(gallery[rows], dtype=np.float32)
    _, exact = flat_search(sample, gallery, k + 1)
    truth = [set(_without(exact[i], rows[i], k)) for i in range(len(rows))]
    nprobe, recall = 1, 0.0
    while True:
        probe = IVFIndex(index, nprobe, 0.0, True)
        _, found = probe.search(sample, k + 1)
        recall = float(np.mean([len(truth[i] & set(_without(found[i], rows[i], k))) / k for i in range(len(rows))]))
        if recall >= target or nprobe >= index.nlist:
            return min(nprobe, int(index.nlist)), recall
        nprobe *= 2


def _without(ranked: np.ndarray, own: int, k: int) -> list[int]:
    """The first ``k`` entries of ``ranked`` other than ``own`` (and faiss's -1 padding)."""
    return [int(i) for i in ranked if i != own and i >= 0][:k]


def load_or_build_ivf(folder: Path, gallery: np.ndarray, *, show_progress: bool = True) -> IVFIndex:
    """The IVF index saved in the feature folder ``folder`` when it was built on these very features, else a
    new one (built, calibrated and saved there; a folder that cannot be written only costs the reuse)."""
    folder = Path(folder)
    stamp = features_stamp(folder)
    index_path, meta_path = folder / INDEX_FILE, folder / INDEX_META
    if index_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("features") == stamp and meta.get("index_size") == index_path.stat().st_size:
                return IVFIndex(faiss.read_index(str(index_path)), int(meta["nprobe"]), float(meta["recall"]), False)
            say(f"{folder}: the features changed since the IVF index was built; rebuilding it")
        except (OSError, ValueError, KeyError, RuntimeError):
            say(f"{index_path}: unreadable or damaged; rebuilding it", warn=True)
    index = build_ivf(gallery, show_progress=show_progress)
    nprobe, recall = calibrate_nprobe(index, gallery)
    say(f"IVF: nprobe {nprobe} of {index.nlist} cells gives recall@10 {recall:.3f} on sampled gallery rows")
    try:
        _write_index(index, index_path)
        meta = {"features": stamp, "nlist": int(index.nlist), "nprobe": nprobe, "recall": recall,
                "target_recall": TARGET_RECALL, "kind": type(index).__name__, "index_size": index_path.stat().st_size}
        write_json(meta, meta_path)
    except (OSError, RuntimeError) as exc:  # faiss reports a failed write as a RuntimeError
        reason = getattr(exc, "strerror", None) or "write failed"
        say(f"{folder}: cannot save the IVF index ({reason}); it is rebuilt next time", warn=True)
    return IVFIndex(index, nprobe, recall, True)


def _write_index(index: Any, path: Path) -> None:
    """``faiss.write_index`` to a temp file beside ``path``, then an atomic rename (the ``ecnreid.io`` naming,
    so a killed write's temp file is swept away later)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
