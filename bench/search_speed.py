"""Gallery search for `ecnreid search`: faiss flat (exact) vs IVF vs a torch matmul + top-k baseline, 1,000
queries in galleries of 100k and 1M 2048-d unit features; prints one JSON line.

    PYTHONPATH=. .venv/bin/python bench/search_speed.py [--scale 0.01] [--threads N] [--dir TMP]

The features are synthetic and clustered. Random isotropic unit vectors are the worst case for IVF: they have
no structure for the cells to follow, and every feature is about as far from a query as its nearest
neighbours. Re-ID features cluster by identity, so each gallery feature here is one of ``centres`` Gaussian
centres (4,000 "identities", random unit directions) plus isotropic noise, normalised; two features of one
identity have cosine about 0.64, of two identities about 0. Queries are new draws around the gallery's
centres (other images of the gallery's people), so their top 10 lie among about 250 (1M) or 25 (100k)
same-identity features that differ only by noise: the ranking within the cluster is still a hard one.

The galleries are written in chunks to memory-mapped ``.npy`` files in a temp folder (100k float32, 0.8 GB;
1M float16, 4 GB), so the generator's memory stays at one chunk. Each method reads the gallery as
``ecnreid search`` does (``ecnreid.inference.index``):

- ``flat``: exact faiss inner product over blocks of the memory map (``flat_search``);
- ``torch``: the same blocks as float32 tensors, ``queries @ block.T`` and ``topk``, merged across blocks;
- ``ivf``: ``build_ivf`` (about 4·√N cells; float16 rows for a float16 gallery), ``calibrate_nprobe`` (the
  nprobe `search` uses by default), then searches at half, once and twice the calibrated nprobe. Its build
  (train, add, calibrate) is timed apart from the search: `search` saves the index and builds it once.

Keys per gallery: ``*_s`` wall seconds of the 1,000-query search, ``ivf[].recall_at_10`` (mean overlap of
IVF's top 10 with the exact top 10), ``ivf[].speedup`` (flat time / IVF time), and ``goal_met``: recall@10
at least 0.95 at 10x or more of the exact speed, with the calibrated nprobe. ``--scale 0.01`` shrinks
galleries, queries and centres a hundredfold for a smoke test (its timings mean nothing). At full scale
expect about half an hour on 2 CPU cores, most of it building the 1M IVF index (k-means over 160,000 rows
into 4,000 cells, then assigning a million 2048-d rows).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import faiss
import numpy as np
import torch
from numpy.lib.format import open_memmap

from ecnreid.inference.index import block_rows, build_ivf, calibrate_nprobe, flat_search, float32_rows

DIM, K = 2048, 10
GALLERIES = {"100k": (100_000, np.float32), "1M": (1_000_000, np.float16)}
QUERIES, CENTRES, NOISE = 1_000, 4_000, 0.75
CHUNK = 65_536  # rows generated at once
T = TypeVar("T")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def centres_of(count: int, dim: int, seed: int) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32))


def draw(centres: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` features around randomly chosen centres: centre + NOISE · (unit-norm Gaussian noise), unit."""
    dim = centres.shape[1]
    noise = rng.standard_normal((count, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    return unit(centres[rng.integers(0, len(centres), count)] + NOISE * noise)


def write_gallery(path: Path, size: int, dtype: type, centres: np.ndarray, seed: int) -> np.ndarray:
    """The gallery as a memory-mapped ``.npy``, generated chunk by chunk."""
    gallery = open_memmap(path, mode="w+", dtype=dtype, shape=(size, centres.shape[1]))
    rng = np.random.default_rng(seed)
    for start in range(0, size, CHUNK):
        stop = min(start + CHUNK, size)
        gallery[start:stop] = draw(centres, stop - start, rng).astype(dtype)
    gallery.flush()
    del gallery
    return np.load(path, mmap_mode="r")


def torch_search(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by block matmul and ``topk``, merged across blocks (the baseline without faiss)."""
    q = torch.from_numpy(queries)
    best_sims = torch.full((len(q), k), -torch.inf)
    best_rows = torch.zeros((len(q), k), dtype=torch.long)
    step = block_rows(gallery.shape[1])
    for start in range(0, len(gallery), step):
        block = torch.from_numpy(np.require(float32_rows(gallery, start, start + step), requirements="W"))
        top = torch.topk(q @ block.T, min(k, len(block)), dim=1)
        sims = torch.cat([best_sims, top.values], dim=1)
        rows = torch.cat([best_rows, top.indices + start], dim=1)
        keep = torch.topk(sims, k, dim=1)
        best_sims, best_rows = keep.values, rows.gather(1, keep.indices)
    return best_sims.numpy(), best_rows.numpy()


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(e)) / k for f, e in zip(found, exact, strict=True)]))


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall seconds."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def seconds(value: float) -> float:
    return float(f"{value:.4g}")


def run_gallery(name: str, size: int, dtype: type, centres: np.ndarray, queries: np.ndarray, folder: Path) -> dict:
    gallery, generate_s = timed(lambda: write_gallery(folder / f"{name}.npy", size, dtype, centres, seed=1))
    (_, exact), flat_s = timed(lambda: flat_search(queries, gallery, K))
    (_, torch_rows), torch_s = timed(lambda: torch_search(queries, gallery, K))
    index, train_add_s = timed(lambda: build_ivf(gallery, show_progress=False))
    (nprobe, calibrated_recall), calibrate_s = timed(lambda: calibrate_nprobe(index, gallery))
    ivf = []
    for probe in sorted({max(1, nprobe // 2), nprobe, min(index.nlist, 2 * nprobe)}):
        params = faiss.SearchParametersIVF(nprobe=probe)
        (_, rows), search_s = timed(lambda p=params: index.search(queries, K, params=p))
        ivf.append({"nprobe": probe, "search_s": seconds(search_s), "recall_at_10": round(recall_at_k(rows, exact), 4),
                    "speedup": round(flat_s / max(search_s, 1e-9), 1), "calibrated": probe == nprobe})
    chosen = next(row for row in ivf if row["calibrated"])
    result = {
        "gallery": size,
        "dtype": np.dtype(dtype).name,
        "generate_s": seconds(generate_s),
        "flat_s": seconds(flat_s),
        "torch_s": seconds(torch_s),
        "torch_agrees_with_flat": round(recall_at_k(torch_rows, exact), 4),
        "ivf_nlist": int(index.nlist),
        "ivf_kind": type(index).__name__,
        "ivf_train_add_s": seconds(train_add_s),
        "ivf_calibrate_s": seconds(calibrate_s),
        "ivf_calibrated_nprobe": nprobe,
        "ivf_calibration_recall": round(calibrated_recall, 4),
        "ivf": ivf,
        "goal_met": chosen["recall_at_10"] >= 0.95 and chosen["speedup"] >= 10,
    }
    (folder / f"{name}.npy").unlink()  # its pages go once the memory map is dropped with this frame
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="shrink galleries, queries and centres (0.01: smoke)")
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--threads", type=int, default=0, help="faiss and torch threads; 0 keeps their defaults")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the temporary gallery files")
    args = parser.parse_args()
    if not 0 < args.scale <= 1:
        parser.error("--scale must lie in (0, 1]")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    centres = centres_of(max(10, round(CENTRES * args.scale)), args.dim, seed=0)
    queries = draw(centres, max(10, round(QUERIES * args.scale)), np.random.default_rng(2))
    report: dict = {
        "bench": "search_speed",
        "scale": args.scale,
        "dim": args.dim,
        "queries": len(queries),
        "centres": len(centres),
        "noise": NOISE,
        "k": K,
        "faiss_threads": faiss.omp_get_max_threads(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
        "faiss": faiss.__version__,
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for name, (size, dtype) in GALLERIES.items():
            report[name] = run_gallery(name, max(100, round(size * args.scale)), dtype, centres, queries, Path(folder))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
