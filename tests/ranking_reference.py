"""The ranking protocol of ``ecnreid.evaluation.metrics`` as a plain per-query NumPy loop with a stable full sort:
the oracle the tests (and ``bench/eval_speed.py``) hold the sort-free evaluator to. Slow; not shipped."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from ecnreid.errors import EcnreidError
from ecnreid.evaluation.metrics import IdArray, RankingResult


def evaluate_ranking_reference(
    distmat: Tensor | np.ndarray,
    query_pids: IdArray,
    gallery_pids: IdArray,
    query_camids: IdArray,
    gallery_camids: IdArray,
    max_rank: int = 50,
) -> RankingResult:
    """The protocol of ``evaluate_ranking`` (see ``ecnreid.evaluation.metrics``), one query at a time."""
    dist = np.asarray(distmat.detach().cpu() if isinstance(distmat, Tensor) else distmat, dtype=np.float32)
    q_pids, q_cams = np.asarray(query_pids), np.asarray(query_camids)
    g_pids, g_cams = np.asarray(gallery_pids), np.asarray(gallery_camids)
    first_positions, average_precisions, inps = [], [], []
    for i in range(dist.shape[0]):
        row = dist[i] + np.float32(0.0)  # -0.0 -> 0.0, so that both zeros tie like in a sort by value
        order = np.argsort(row, kind="stable")
        same_pid = g_pids[order] == q_pids[i]
        kept = ~(same_pid & (g_cams[order] == q_cams[i])) & (g_pids[order] != -1)
        positions = np.flatnonzero(same_pid[kept]) + 1
        if len(positions) == 0:
            continue
        if np.isnan(row[order][kept][positions - 1]).any():
            raise EcnreidError(f"evaluation distance row {i} holds NaN at a true match")
        first_positions.append(positions[0])
        average_precisions.append(np.mean(np.arange(1, len(positions) + 1) / positions))
        inps.append(len(positions) / positions[-1])
    if not first_positions:
        raise EcnreidError("evaluation has no query with a true match in the gallery (other camera)")
    first = np.asarray(first_positions)
    cmc = [float(np.mean(first <= k)) for k in range(1, max_rank + 1)]
    return RankingResult(
        cmc=cmc,
        mAP=float(np.mean(average_precisions)),
        mINP=float(np.mean(inps)),
        num_valid_queries=len(first_positions),
        num_queries=dist.shape[0],
    )
