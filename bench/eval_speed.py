"""Speed and peak memory of evaluation on Market-1501- and MSMT17-sized synthetic problems; one JSON line each.

    python bench/eval_speed.py [--preset market|msmt17] [--problem ecn|hard|all] [--dim 2048 --seed 0]
                               [--queries Q --gallery G] [--skip-rerank] [--skip-reference]
                               [--fastreid-evaluator DIR]

Features have planted identity structure: an identity centre, a camera style shared by every image of a
camera, and per-image noise whose scale is log-normal, so a few images are hard (the long tail that sets
mINP). Two problems per preset:

- ``ecn``: reads roughly like ECN on Duke->Market (rank-1 ~0.72, mAP ~0.46 at 2048-d on Market);
- ``hard``: about five times the noise, rank-1 ~0.3: most true matches sit deep in the ranking, which is
  where a sort-free evaluator has the most to do.

Presets: ``market`` is 3,368 x 15,913 with 6 cameras and 1/6 of the gallery pid-0 distractors (about 18
true matches per query after the same-camera removal); ``msmt17`` is 11,659 x 82,161 with 15 cameras, no
distractors and about 25 true matches per query. Everything runs block by block, as ``ecnreid eval`` does
(``score_features``): the query x gallery matrix is never held whole, not even by the reference pass.

Phases and keys:

- ``first_call_s``: the first (tiny) evaluation of the process, where numba compiles the metrics' loop or
  loads it from its cache;
- metrics: ``iter_distance_blocks`` into ``evaluate_blocks``: ``distance_s``, ``metrics_s`` (the ranking
  protocol alone, best of ``--repeats`` per block), ``metrics_peak_rss_gb``;
- reference (``--skip-reference`` skips it), on the same blocks: ``reference_s`` (the per-query NumPy loop
  ``evaluate_ranking_reference``, whose numbers must equal: ``max_abs_diff``), ``np_argsort_s`` (NumPy's
  row-wise ``argsort`` alone, the first step of any evaluator that sorts every row, fast-reid's compiled one
  included: a floor under their time) and ``argsort_s`` (torch's); ``speedup`` divides them by ``metrics_s``;
- fast-reid's compiled evaluator (``--fastreid-evaluator DIR``, a folder holding the ``rank_cy`` extension
  built from fast-reid's ``fastreid/evaluation/rank_cylib``; nothing of it is in this repository): its
  ``evaluate_cy`` on the same blocks, ``fastreid_s``, its mAP (``fastreid_mAP``, float32 sums) and a
  ``speedup`` entry;
- re-ranking: ``iter_rerank_blocks`` into ``evaluate_blocks`` (k1 20, k2 6, lambda 0.3): ``rerank_s`` (all
  of it), ``rerank_metrics_s`` (its metrics part), ``rerank_peak_rss_gb`` and the re-ranked scores.

Peak RSS is per phase where Linux lets the process reset its high-water mark (``/proc/self/clear_refs``),
else the process's peak so far (``peak_rss_scope`` says which). Wall times; ``*_cpu_s`` are CPU seconds of
all threads, steadier than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference evaluator, a test oracle

from ranking_reference import evaluate_ranking_reference  # noqa: E402

from ecnreid.errors import EcnreidError  # noqa: E402
from ecnreid.evaluation.distances import iter_distance_blocks  # noqa: E402
from ecnreid.evaluation.evaluator import block_rows  # noqa: E402
from ecnreid.evaluation.metrics import RankingAccumulator, RankingResult, evaluate_blocks  # noqa: E402
from ecnreid.evaluation.reranking import iter_rerank_blocks  # noqa: E402

MARKET_DISTRACTOR_FRACTION = 2793 / 15913
PRESETS: dict[str, dict] = {
    "market": {
        "queries": 3368,
        "gallery": 15913,
        "num_cameras": 6,
        "matches_per_query": 18.0,
        "distractor_fraction": MARKET_DISTRACTOR_FRACTION,
    },
    # MSMT17's test split: 3,060 identities over 15 cameras, about 27 gallery images each, no distractors.
    "msmt17": {
        "queries": 11659,
        "gallery": 82161,
        "num_cameras": 15,
        "matches_per_query": 25.0,
        "distractor_fraction": 0.0,
    },
}
# noise_median sets how hard a problem is; 5.5 gives rank-1 ~0.3 at 2048-d on both presets.
PROBLEMS: dict[str, dict[str, float]] = {"ecn": {"noise_median": 1.1}, "hard": {"noise_median": 5.5}}
# Rows of a distance block handed at once to the reference and the argsorts (bounds their int64 indices).
REFERENCE_ROWS = 256
MAX_RANK = 50


def make_problem(
    num_query: int,
    num_gallery: int,
    dim: int,
    seed: int,
    num_cameras: int = 6,
    matches_per_query: float = 18.0,
    style_scale: float = 0.72,
    noise_median: float = 1.1,
    noise_spread: float = 0.9,
    distractor_fraction: float = MARKET_DISTRACTOR_FRACTION,
) -> dict[str, Tensor]:
    """Query/gallery features ``[N, dim]`` with pids (0 = distractor) and 0-based camera ids."""
    gen = torch.Generator().manual_seed(seed)
    num_distractors = round(num_gallery * distractor_fraction)
    num_identity_images = num_gallery - num_distractors
    # A query keeps the (C-1)/C of its identity's gallery images that are in other cameras.
    keep = (num_cameras - 1) / num_cameras
    num_ids = max(1, round(num_identity_images * keep / matches_per_query))

    gallery_pids = torch.cat(
        [1 + torch.randperm(num_identity_images, generator=gen) % num_ids, torch.zeros(num_distractors)]
    ).long()
    query_pids = 1 + torch.randperm(num_query, generator=gen) % num_ids
    gallery_camids = torch.randint(0, num_cameras, (num_gallery,), generator=gen)
    query_camids = torch.randint(0, num_cameras, (num_query,), generator=gen)

    scale = dim**-0.5  # unit-norm directions in expectation
    centres = torch.randn(num_ids + 1, dim, generator=gen) * scale
    styles = torch.randn(num_cameras, dim, generator=gen) * scale * style_scale

    def features(pids: Tensor, camids: Tensor) -> Tensor:
        out = centres[pids]
        distractor = pids == 0
        out[distractor] = torch.randn(int(distractor.sum()), dim, generator=gen) * scale
        # Per-image style strength and noise scale: some images look mostly like their camera, some are blurred.
        style = 2.0 * torch.rand(len(pids), 1, generator=gen)
        noise = noise_median * torch.exp(noise_spread * torch.randn(len(pids), 1, generator=gen))
        return out + style * styles[camids] + noise * torch.randn(len(pids), dim, generator=gen) * scale

    return {
        "query_features": features(query_pids, query_camids),
        "gallery_features": features(gallery_pids, gallery_camids),
        "query_pids": query_pids,
        "gallery_pids": gallery_pids,
        "query_camids": query_camids,
        "gallery_camids": gallery_camids,
    }


class Clock:
    """Wall and CPU seconds summed over the intervals it is running."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def timed_blocks(blocks: Iterable[tuple[int, Tensor]], clock: Clock) -> Iterator[tuple[int, Tensor]]:
    """The blocks, with the time spent producing them (not consuming them) added to ``clock``."""
    iterator = iter(blocks)
    while True:
        with clock:
            item = next(iterator, None)
        if item is None:
            return
        yield item


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0); False where that is not allowed."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_gb() -> float:
    """The RSS high-water mark (since the last reset where there was one), in GiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 2**20, 3)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux


def scores(result: RankingResult) -> dict[str, float]:
    return {k: round(v, 6) for k, v in result.as_dict().items() if k != "cmc"}


def metrics_phase(problem: dict[str, Tensor], ids: tuple[Tensor, ...], rows: int, repeats: int) -> dict:
    """Blocked distances into the metrics; each block is ranked ``repeats`` times and the best time kept."""
    resettable = reset_peak_rss()
    distance, metrics = Clock(), Clock()
    accumulators = [RankingAccumulator(*ids, max_rank=MAX_RANK) for _ in range(repeats)]
    blocks = iter_distance_blocks(problem["query_features"], problem["gallery_features"], block_size=rows)
    best_wall = best_cpu = 0.0
    for start, block in timed_blocks(blocks, distance):
        walls, cpus = [], []
        for accumulator in accumulators:
            clock = Clock()
            with clock:
                accumulator.add(start, block)
            walls.append(clock.wall)
            cpus.append(clock.cpu)
        best_wall += min(walls)
        best_cpu += min(cpus)
        del block
    with metrics:
        result = accumulators[0].result()
    return {
        "result": result,
        "peak_rss_scope": "phase" if resettable else "process",
        "distance_s": round(distance.wall, 3),
        "metrics_s": round(best_wall + metrics.wall, 3),
        "metrics_cpu_s": round(best_cpu + metrics.cpu, 3),
        "metrics_peak_rss_gb": peak_rss_gb(),
    }


def load_fastreid_evaluator(folder: str):
    """fast-reid's compiled ``rank_cy`` module from ``folder``; stops with one line when it is not there."""
    sys.path.insert(0, str(Path(folder).resolve()))
    try:
        import rank_cy
    except ImportError as err:
        raise SystemExit(f"--fastreid-evaluator {folder}: no built rank_cy extension there ({err})") from None
    return rank_cy


def fastreid_phase(problem: dict[str, Tensor], ids: tuple[Tensor, ...], rows: int, rank_cy) -> dict:
    """fast-reid's ``evaluate_cy`` (argsort every row, then a compiled scan) on the same blocks."""
    q_pids, g_pids, q_cams, g_cams = (ids_.numpy() for ids_ in ids)
    clock = Clock()
    ap_sum, num_valid = 0.0, 0
    for start, block in iter_distance_blocks(problem["query_features"], problem["gallery_features"], block_size=rows):
        queries = slice(start, start + len(block))
        if not (q_pids[queries, None] == g_pids[None]).any():
            continue  # fast-reid asserts on a block without a valid query
        with clock:
            _, ap, _ = rank_cy.evaluate_cy(block.numpy(), q_pids[queries], g_pids, q_cams[queries], g_cams, MAX_RANK)
        ap_sum += float(np.sum(ap, dtype=np.float64))
        num_valid += len(ap)
    return {"fastreid_s": round(clock.wall, 3), "fastreid_mAP": round(ap_sum / max(num_valid, 1), 6)}


def reference_phase(problem: dict[str, Tensor], ids: tuple[Tensor, ...], rows: int) -> dict:
    """The NumPy reference and the row-wise argsorts on the same distance blocks, ``REFERENCE_ROWS`` at a time.

    The reference only returns averages, so per-chunk results are combined weighted by their valid queries.
    """
    q_pids, g_pids, q_cams, g_cams = ids
    reference, np_sort, torch_sort = Clock(), Clock(), Clock()
    num_valid = 0
    sums = {"mAP": 0.0, "mINP": 0.0, "cmc": np.zeros(MAX_RANK)}
    for start, block in iter_distance_blocks(problem["query_features"], problem["gallery_features"], block_size=rows):
        for offset in range(0, len(block), REFERENCE_ROWS):
            chunk = block[offset : offset + REFERENCE_ROWS]
            queries = slice(start + offset, start + offset + len(chunk))
            with np_sort:
                np.argsort(chunk.numpy(), axis=1)
            with torch_sort:
                torch.argsort(chunk, dim=1)
            try:
                with reference:
                    part = evaluate_ranking_reference(chunk, q_pids[queries], g_pids, q_cams[queries], g_cams, MAX_RANK)
            except EcnreidError:  # no query of this chunk has a true match
                continue
            num_valid += part.num_valid_queries
            sums["mAP"] += part.mAP * part.num_valid_queries
            sums["mINP"] += part.mINP * part.num_valid_queries
            sums["cmc"] += np.asarray(part.cmc) * part.num_valid_queries
    return {
        "reference": RankingResult(
            cmc=(sums["cmc"] / num_valid).tolist(),
            mAP=sums["mAP"] / num_valid,
            mINP=sums["mINP"] / num_valid,
            num_valid_queries=num_valid,
            num_queries=len(q_pids),
        ),
        "reference_s": round(reference.wall, 3),
        "np_argsort_s": round(np_sort.wall, 3),
        "argsort_s": round(torch_sort.wall, 3),
    }


def rerank_phase(problem: dict[str, Tensor], ids: tuple[Tensor, ...]) -> dict:
    """Blocked k-reciprocal re-ranking into the metrics, as ``score_features(..., rerank=True)`` runs it."""
    resettable = reset_peak_rss()
    producing, total = Clock(), Clock()
    with total:
        blocks = iter_rerank_blocks(problem["query_features"], problem["gallery_features"])
        result = evaluate_blocks(timed_blocks(blocks, producing), *ids, max_rank=MAX_RANK)
    return {
        "rerank_s": round(total.wall, 3),
        "rerank_cpu_s": round(total.cpu, 3),
        "rerank_metrics_s": round(total.wall - producing.wall, 3),
        "rerank_peak_rss_gb": peak_rss_gb(),
        "rerank_peak_rss_scope": "phase" if resettable else "process",
        "reranked": scores(result),
    }


def run(preset: str, problem_name: str, args: argparse.Namespace) -> dict:
    """One JSON-ready report for one preset and problem."""
    shape = PRESETS[preset]
    num_query = args.queries or int(shape["queries"])
    num_gallery = args.gallery or int(shape["gallery"])
    options = {key: value for key, value in shape.items() if key not in ("queries", "gallery")}
    load_at_start = os.getloadavg()[0]
    problem = make_problem(num_query, num_gallery, args.dim, args.seed, **options, **PROBLEMS[problem_name])
    ids = (problem["query_pids"], problem["gallery_pids"], problem["query_camids"], problem["gallery_camids"])
    true_matches = torch.zeros(num_query)
    for start in range(0, num_query, 1024):  # the [Q, G] comparison in slices: MSMT17's would be 1 GB
        q = slice(start, start + 1024)
        same = (ids[0][q, None] == ids[1][None]) & (ids[2][q, None] != ids[3][None])
        true_matches[q] = same.sum(dim=1).float()
    rows = block_rows(num_gallery)

    report: dict = {
        "bench": "eval_speed",
        "preset": preset,
        "problem": problem_name,
        "queries": num_query,
        "gallery": num_gallery,
        "dim": args.dim,
        "torch_threads": torch.get_num_threads(),
        "block_rows": rows,
        "mean_true_matches": round(float(true_matches.mean()), 2),
        "first_call_s": args.first_call_s,
    }
    metrics = metrics_phase(problem, ids, rows, args.repeats)
    fast = metrics.pop("result")
    report.update(metrics)
    report["fast"] = scores(fast)
    if not args.skip_reference:
        references = reference_phase(problem, ids, rows)
        reference = references.pop("reference")
        report.update(references)
        report["reference"] = scores(reference)
        report["max_abs_diff"] = max(
            abs(fast.mAP - reference.mAP),
            abs(fast.mINP - reference.mINP),
            *(abs(a - b) for a, b in zip(fast.cmc, reference.cmc, strict=True)),
        )
    if args.fastreid_evaluator:
        report.update(fastreid_phase(problem, ids, rows, load_fastreid_evaluator(args.fastreid_evaluator)))
    report["speedup"] = {
        key: round(report[f"{key}_s"] / max(report["metrics_s"], 1e-9), 1)
        for key in ("fastreid", "reference", "np_argsort", "argsort")
        if f"{key}_s" in report
    }
    if not args.skip_rerank:
        report.update(rerank_phase(problem, ids))
    # The machine may be shared: a 1-minute load average above the core count means inflated wall times.
    report["load_avg_1min"] = [round(load_at_start, 2), round(os.getloadavg()[0], 2)]  # at start, at end
    report["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # whole process
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="market")
    parser.add_argument("--problem", choices=[*PROBLEMS, "all"], default="all")
    parser.add_argument("--queries", type=int, default=0, help="override the preset's query count")
    parser.add_argument("--gallery", type=int, default=0, help="override the preset's gallery size")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="metrics timings keep the best of this many runs")
    parser.add_argument("--skip-rerank", action="store_true")
    parser.add_argument("--skip-reference", action="store_true", help="skip the NumPy reference and the argsorts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--fastreid-evaluator", default="", help="folder with fast-reid's built rank_cy extension")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # The metrics' compiled loop is compiled (or loaded from numba's cache) on first use: keep that out of the runs.
    clock = Clock()
    with clock:
        evaluate_blocks([(0, torch.rand(2, 4))], [1, 2], [1, 2, 1, 2], [0, 0], [1, 1, 1, 1])
    args.first_call_s = round(clock.wall, 3)
    for problem_name in PROBLEMS if args.problem == "all" else [args.problem]:
        print(json.dumps(run(args.preset, problem_name, args)), flush=True)


if __name__ == "__main__":
    main()
