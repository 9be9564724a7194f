"""Speed of evaluation on a Market-1501-sized synthetic problem; prints one JSON line.

    python bench/eval_speed.py [--queries 3368 --gallery 15913 --dim 2048 --seed 0]

Features have planted identity structure: an identity centre, a camera style shared by every image of a
camera, and per-image noise whose scale is log-normal, so a few images are hard (the long tail that sets
mINP). Defaults are tuned so the fast metrics read roughly like ECN on Duke->Market (rank-1 ~0.75,
mAP ~0.4). About 1/6 of the gallery are pid-0 distractors; the identities are spread over 6 cameras so
that each query keeps about 18 true matches after the same-camera removal.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecnreid.evaluation.distances import pairwise_distance  # noqa: E402
from ecnreid.evaluation.metrics import evaluate_ranking, evaluate_ranking_reference  # noqa: E402
from ecnreid.evaluation.reranking import k_reciprocal_rerank  # noqa: E402

MARKET_DISTRACTOR_FRACTION = 2793 / 15913


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
) -> dict[str, Tensor]:
    """Query/gallery features ``[N, dim]`` with pids (0 = distractor) and 0-based camera ids."""
    gen = torch.Generator().manual_seed(seed)
    num_distractors = round(num_gallery * MARKET_DISTRACTOR_FRACTION)
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


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="metrics timings keep the best of this many runs")
    parser.add_argument("--skip-rerank", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]

    problem = make_problem(args.queries, args.gallery, args.dim, args.seed)
    ids = (problem["query_pids"], problem["gallery_pids"], problem["query_camids"], problem["gallery_camids"])
    distmat, distance_s = timed(pairwise_distance, problem["query_features"], problem["gallery_features"])

    metrics_s = float("inf")
    for _ in range(args.repeats):
        fast, seconds = timed(evaluate_ranking, distmat, *ids)
        metrics_s = min(metrics_s, seconds)
    reference, reference_s = timed(evaluate_ranking_reference, distmat, *ids)
    _, argsort_s = timed(torch.argsort, distmat, dim=1)
    true_matches = (
        (problem["query_pids"][:, None] == problem["gallery_pids"][None])
        & (problem["query_camids"][:, None] != problem["gallery_camids"][None])
    ).sum(dim=1)

    report = {
        "queries": args.queries,
        "gallery": args.gallery,
        "dim": args.dim,
        "torch_threads": torch.get_num_threads(),
        # The machine is shared: a 1-minute load average above the core count means the timings are inflated.
        "load_avg_1min": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],  # at start, after metrics
        "mean_true_matches": round(float(true_matches.float().mean()), 2),
        "distance_s": round(distance_s, 3),
        "metrics_s": round(metrics_s, 3),
        "reference_s": round(reference_s, 3),
        "argsort_s": round(argsort_s, 3),
        "fast": {k: round(v, 6) for k, v in fast.as_dict().items() if k != "cmc"},
        "reference": {k: round(v, 6) for k, v in reference.as_dict().items() if k != "cmc"},
        "max_abs_diff": max(
            abs(fast.mAP - reference.mAP),
            abs(fast.mINP - reference.mINP),
            *(abs(a - b) for a, b in zip(fast.cmc, reference.cmc, strict=True)),
        ),
    }
    del distmat
    if not args.skip_rerank:
        reranked, rerank_s = timed(k_reciprocal_rerank, problem["query_features"], problem["gallery_features"])
        report["rerank_s"] = round(rerank_s, 3)
        reranked_result = evaluate_ranking(reranked, *ids)
        report["reranked"] = {k: round(v, 6) for k, v in reranked_result.as_dict().items() if k != "cmc"}
    # ru_maxrss is in KiB on Linux.
    report["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
