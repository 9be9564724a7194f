"""Neighbour search for ECN's neighbourhood invariance: torch top-k on the logits vs a faiss flat index.

Training already computes the logits ``z = f · Mᵀ / β`` for the exemplar loss, so ``nearest_slots`` adds
only a top-k over them. faiss has to index the current memory (it changes every step) and then search,
which repeats the same matrix product. Memory sizes: Market-1501 (12,936 target images) and MSMT17
(32,621), 4096-d, batch 128, k = 6, on the CPU. Prints one JSON line; times are medians in milliseconds.

    PYTHONPATH=. .venv/bin/python bench/knn_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial

import faiss
import torch
import torch.nn.functional as F

from ecnreid.losses import nearest_slots, nearest_slots_faiss

SIZES = {"market": 12_936, "msmt17": 32_621}
DIM, BATCH, K, BETA = 4096, 128, 6, 0.05


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-call allocations and thread-pool start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def run(repeats: int) -> dict:
    torch.manual_seed(0)
    result: dict = {
        "bench": "knn_speed",
        "device": "cpu",
        "batch": BATCH,
        "dim": DIM,
        "k": K,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
    }
    for name, slots in SIZES.items():
        memory = F.normalize(torch.randn(slots, DIM), dim=1)
        features = F.normalize(torch.randn(BATCH, DIM), dim=1)
        logits = features @ memory.t() / BETA
        same = torch.equal(nearest_slots(logits, K), nearest_slots_faiss(features, memory, K))
        matmul_ms = _median_ms(partial(torch.matmul, features, memory.t()), repeats)
        topk_ms = _median_ms(partial(nearest_slots, logits, K), repeats)
        faiss_ms = _median_ms(partial(nearest_slots_faiss, features, memory, K), repeats)
        result[name] = {
            "slots": slots,
            "logits_matmul_ms": matmul_ms,
            "topk_on_logits_ms": topk_ms,
            "faiss_build_and_search_ms": faiss_ms,
            "faiss_over_topk": round(faiss_ms / topk_ms, 1),
            "same_neighbours": same,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    print(json.dumps(run(parser.parse_args().repeats)))


if __name__ == "__main__":
    main()
