"""`ecnreid search`: rank a gallery for each query image with the adapted model, and show the rankings
(a rank-list PNG per query, one HTML page, ``results.json``).

The gallery is a feature folder of `ecnreid extract`, or a folder of images whose features are extracted into
``--out/gallery`` first (resumable, and reused by the next search of the same images). Queries are embedded as
the gallery was (same checkpoint, same ``--flip``). Ranking is exact (faiss flat) up to a million gallery
images and IVF beyond (``ecnreid.inference.index``), or k-reciprocal re-ranking of the whole gallery where it
fits in memory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from ecnreid.config import SearchConfig
from ecnreid.errors import EcnreidError
from ecnreid.inference.adapted import AdaptedModel, iter_features, load_adapted_model
from ecnreid.inference.extract import extract_to_folder
from ecnreid.inference.images import ImageEntry, decodable, list_images
from ecnreid.inference.index import flat_search, index_kind, load_or_build_ivf
from ecnreid.inference.messages import say
from ecnreid.inference.report import rank_list_png, results_html
from ecnreid.inference.results import Match, QueryResult
from ecnreid.inference.store import FeatureFolder, is_feature_folder, open_feature_folder
from ecnreid.io import ensure_output_dir, write_json
from ecnreid.progress import console, make_progress
from ecnreid.runtime import resolve_device

GIB = 1 << 30
TABLE_ROWS = 20  # queries shown in the console table; all of them are in results.json and the HTML page


def rerank_peak_bytes(num_query: int, num_gallery: int, dim: int) -> int:
    """An upper estimate of k-reciprocal re-ranking's peak memory (``ecnreid.evaluation.reranking``): two float32
    copies of all features, about 16 KiB of neighbour lists and sparse encoding per image, three query blocks of
    distances, and 1 GiB of chunked temporaries. Measured peaks (README, Speed) lie below it: Market 2.2 GB
    (estimate 2.0 GB + the interpreter), MSMT17 3.8 GB (estimate 4.8 GB)."""
    n = num_query + num_gallery
    rows = max(1, min(2048, (1 << 26) // max(1, num_gallery)))
    return GIB + 2 * n * dim * 4 + n * 16 * 1024 + 3 * rows * num_gallery * 4


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (None when the system does not say)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_rerank_fits(num_query: int, num_gallery: int, dim: int, device: torch.device) -> None:
    """Refuse re-ranking, in one line, when its estimated peak exceeds the memory the device has free."""
    need, free = rerank_peak_bytes(num_query, num_gallery, dim), available_memory(device)
    if free is not None and need > free:
        raise EcnreidError(
            f"--rerank: re-ranking {num_query:,} queries against {num_gallery:,} gallery images needs about "
            f"{need / GIB:.1f} GiB and {device} has {free / GIB:.1f} GiB free; search without --rerank"
        )


def gallery_features(config: SearchConfig, adapted: AdaptedModel, device: torch.device) -> FeatureFolder:
    """The gallery's feature folder: the one given, or the extraction of the given image folder into
    ``--out/gallery`` (which a later search of the same images reuses)."""
    gallery = Path(config.gallery)
    if is_feature_folder(gallery):
        return open_feature_folder(gallery, "--gallery")
    if not gallery.is_dir():
        what = "is a file" if gallery.exists() else "not found"
        raise EcnreidError(f"--gallery {gallery}: {what}; expected a folder of images or a feature folder of "
                           "`ecnreid extract`")
    run = config.features
    cache = Path(config.out) / "gallery"
    extract_to_folder(
        adapted,
        list_images(gallery, "--gallery"),
        cache,
        source={"images": str(gallery.resolve())},
        dtype=run.dtype,
        flip=run.flip,
        device=device,
        batch_size=run.batch_size,
        workers=run.workers,
        skip_bad_images=run.skip_bad_images,
        restart_stale=True,
        option="--gallery",
    )
    say(f"gallery features in {cache}: pass --gallery {cache} to search them again without images")
    return open_feature_folder(cache, "--gallery", remedy=f"delete {cache} and search again")


def check_gallery(gallery: FeatureFolder, adapted: AdaptedModel, option: str = "--gallery") -> None:
    """The gallery's features must come from this model: same dimension, and the same checkpoint when the
    folder records one."""
    card = adapted.card
    if gallery.dim != card.feature_dim:
        raise EcnreidError(
            f"{option} {gallery.folder}: features have dimension {gallery.dim}, but the model of "
            f"{adapted.checkpoint} gives {card.feature_dim}; extract the gallery with this checkpoint"
        )
    recorded = gallery.meta.get("checkpoint_sha256")
    if recorded is not None and recorded != adapted.checkpoint_sha256:
        raise EcnreidError(
            f"{option} {gallery.folder}: features of another checkpoint ({gallery.meta.get('checkpoint')}); "
            f"extract the gallery with {adapted.checkpoint}"
        )


def query_features(
    adapted: AdaptedModel, queries: list[ImageEntry], config: SearchConfig, device: torch.device, flip: bool
) -> np.ndarray:
    """Unit float32 features ``[Q, D]`` of the queries."""
    run = config.features
    records = [entry.record() for entry in queries]
    chunks = []
    adapted.to(device)
    with make_progress(transient=True) as progress:
        task = progress.add_task("query features", total=len(records), unit="img", info="")
        for batch in iter_features(adapted, records, device=device, batch_size=run.batch_size,
                                   workers=run.workers, flip=flip):
            chunks.append(batch.numpy())
            progress.update(task, advance=len(batch))
    return np.concatenate(chunks).astype(np.float32, copy=False)


def rerank_search(
    queries: np.ndarray, gallery: np.ndarray, k: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(similarities, gallery rows, re-ranked distances) ``[Q, k]``, nearest first by re-ranked distance."""
    from ecnreid.evaluation.reranking import iter_rerank_blocks

    q = torch.from_numpy(queries).to(device)
    g = torch.from_numpy(np.array(gallery, dtype=np.float32)).to(device)  # a writable copy in memory
    k = min(k, len(g))
    rows, distances = torch.empty(len(q), k, dtype=torch.long), torch.empty(len(q), k)
    for start, block in iter_rerank_blocks(q, g):
        top = torch.topk(block, k, dim=1, largest=False, sorted=True)
        rows[start : start + len(block)] = top.indices.cpu()
        distances[start : start + len(block)] = top.values.cpu()
    picked = g[rows.to(device)]  # [Q, k, D]
    similarities = (picked * q[:, None, :]).sum(dim=2).cpu()
    return similarities.numpy(), rows.numpy(), distances.numpy()


def rank(
    config: SearchConfig, queries: np.ndarray, gallery: FeatureFolder, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(similarities, rows, re-ranked distances or None) ``[Q, k]`` and a record of how they were found."""
    features, k = gallery.features, min(config.top_k, len(gallery))
    if config.rerank:
        check_rerank_fits(len(queries), len(gallery), gallery.dim, device)
        sims, rows, distances = rerank_search(queries, features, k, device)
        return sims, rows, distances, {"kind": "rerank", "k1": 20, "k2": 6, "lambda": 0.3}
    kind = index_kind(config.index, len(gallery))
    if kind == "flat":
        with make_progress(transient=True) as progress:
            task = progress.add_task("search (exact)", total=len(gallery), unit="vec", info="")
            sims, rows = flat_search(queries, features, k, lambda n: progress.update(task, advance=n))
        return sims, rows, None, {"kind": "flat"}
    ivf = load_or_build_ivf(gallery.folder, features)
    nprobe = config.nprobe or ivf.nprobe
    sims, rows = ivf.search(queries, k, nprobe)
    record = {"kind": "ivf", "nlist": ivf.nlist, "nprobe": min(nprobe, ivf.nlist), "calibrated_nprobe": ivf.nprobe,
              "calibrated_recall": ivf.recall, "built_now": ivf.built}
    return sims, rows, None, record


def collect(
    queries: list[ImageEntry], gallery: FeatureFolder, sims: np.ndarray, rows: np.ndarray,
    distances: np.ndarray | None,
) -> list[QueryResult]:
    results = []
    for qi, query in enumerate(queries):
        matches, kept = [], [j for j in range(rows.shape[1]) if rows[qi, j] >= 0]  # IVF pads with -1
        for rank_, j in enumerate(kept, start=1):
            row = int(rows[qi, j])
            distance = None if distances is None else float(distances[qi, j])
            matches.append(Match(rank_, row, gallery.entries[row], float(sims[qi, j]), distance))
        results.append(QueryResult(query, matches))
    return results


def render_search_table(results: list[QueryResult], title: str) -> Table:
    table = Table(title=title)
    for column in ("query", "top-1", "similarity", "same id"):
        table.add_column(column, justify="right" if column in ("similarity", "same id") else "left")
    for result in results[:TABLE_ROWS]:
        best = result.matches[0] if result.matches else None
        same = None if best is None else result.same_person(best)
        table.add_row(
            Path(result.query.path).name,
            Path(best.image.path).name if best else "-",
            f"{best.similarity:.3f}" if best else "-",
            "-" if same is None else "yes" if same else "no",
        )
    if len(results) > TABLE_ROWS:
        table.caption = f"{len(results) - TABLE_ROWS} more queries in results.json and index.html"
    return table


def _clear_old_rank_lists(folder: Path, keep: set[Path]) -> None:
    for path in folder.glob("rank_*.png"):
        if path not in keep:
            path.unlink(missing_ok=True)


def run_search(config: SearchConfig) -> dict[str, Any]:
    """Library call behind ``ecnreid search``: writes ``results.json``, ``index.html`` and ``ranks/`` in
    ``config.out`` and returns the summary."""
    run = config.features
    device = resolve_device(run.device)
    out = ensure_output_dir(config.out, "--out")
    adapted = load_adapted_model(config.checkpoint)
    queries = list_images(config.query, "--query")
    if run.skip_bad_images:
        queries, bad = decodable(queries, run.workers)
        if bad:
            say(f"skipped {len(bad)} undecodable query images", warn=True)
        if not queries:
            raise EcnreidError(f"--query {config.query}: no query image decodes")
    gallery = gallery_features(config, adapted, device)
    check_gallery(gallery, adapted)
    flip = bool(gallery.meta.get("flip", run.flip))
    if flip != run.flip:
        say(f"queries embedded with flip={flip}, as the gallery features were", warn=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    qf = query_features(adapted, queries, config, device, flip)
    timings["query_features_s"] = time.perf_counter() - start
    start = time.perf_counter()
    sims, rows, distances, how = rank(config, qf, gallery, device)
    timings["search_s"] = time.perf_counter() - start
    results = collect(queries, gallery, sims, rows, distances)

    top_k = min(config.top_k, len(gallery))
    ranks = out / "ranks"
    written: set[Path] = set()
    with make_progress(transient=True) as progress:
        task = progress.add_task("rank lists", total=len(results), unit="img", info="")
        for number, result in enumerate(results):
            written.add(rank_list_png(result, number, top_k, ranks / f"rank_{number:05d}.png"))
            progress.update(task, advance=1)
    _clear_old_rank_lists(ranks, written)
    title = f"{len(queries)} queries in {len(gallery):,} gallery images ({how['kind']})"
    page = results_html(results, f"ecnreid search: {title}", out / "index.html")
    summary = {
        "checkpoint": str(adapted.checkpoint),
        "checkpoint_sha256": adapted.checkpoint_sha256,
        "card": adapted.card.to_dict(),
        "query": str(config.query),
        "gallery": {"given": str(config.gallery), "features": str(gallery.folder), "count": len(gallery),
                    "dtype": str(gallery.features.dtype)},
        "flip": flip,
        "top_k": top_k,
        "search": how,
        "timings": timings,
        "html": str(page),
        "rank_lists": str(ranks),
        "results": [result.to_dict() for result in results],
    }
    write_json(summary, out / "results.json")
    console.print(render_search_table(results, title))
    say(f"results: {out / 'results.json'}, {page}, {ranks}/")
    return summary
