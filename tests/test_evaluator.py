"""The evaluator's reported numbers: each percentage is its own CMC entry, and re-ranked scores are those of the
loop reference's re-ranked distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_reranking import clustered, reference_rerank

from ecnreid.data.records import ImageRecord
from ecnreid.evaluation.evaluator import metrics_row, score_features
from ecnreid.evaluation.metrics import RankingResult, evaluate_ranking_reference


def test_metrics_row_reads_each_rank_from_its_own_cmc_entry() -> None:
    cmc = [0.1 * k for k in range(1, 11)] + [1.0] * 5  # rank-k = k/10
    row = metrics_row(RankingResult(cmc=cmc, mAP=0.25, mINP=0.125, num_valid_queries=4, num_queries=5))
    assert row == pytest.approx({"rank1": 10.0, "rank5": 50.0, "rank10": 100.0, "mAP": 25.0, "mINP": 12.5})
    short = metrics_row(RankingResult(cmc=[0.5, 0.75, 1.0], mAP=0.5, mINP=0.5, num_valid_queries=2, num_queries=2))
    assert (short["rank5"], short["rank10"]) == (100.0, 100.0)  # a gallery of 3: rank-5 and rank-10 are rank-3


def test_re_ranked_scores_are_those_of_the_reference_re_ranking() -> None:
    features = clustered(11, num_ids=6, per_id=5, dim=8, noise=0.9)
    pids = np.repeat(np.arange(6), 5)
    cams = np.arange(30) % 3
    records = [ImageRecord(f"{i}.jpg", int(p), int(c)) for i, (p, c) in enumerate(zip(pids, cams, strict=True))]
    query, gallery = slice(0, 30, 3), [i for i in range(30) if i % 3]
    qf, gf = features[query], features[gallery]
    q_records, g_records = records[query], [records[i] for i in gallery]
    args = (pids[query], pids[gallery], cams[query], cams[gallery])
    unit_q, unit_g = (torch.nn.functional.normalize(f.double(), dim=1) for f in (qf, gf))
    plain = evaluate_ranking_reference((1 - unit_q @ unit_g.t()).numpy(), *args)
    reranked = evaluate_ranking_reference(reference_rerank(qf.numpy(), gf.numpy(), 20, 6, 0.3), *args)
    assert plain.mAP != pytest.approx(reranked.mAP, abs=1e-3)  # re-ranking changes this problem's ranking
    for rerank, expected in ((False, plain), (True, reranked)):
        got = score_features(qf, gf, q_records, g_records, rerank=rerank)
        assert got.mAP == pytest.approx(expected.mAP, abs=1e-6) and got.mINP == pytest.approx(expected.mINP, abs=1e-6)
        assert got.cmc[:10] == pytest.approx(expected.cmc[:10], abs=1e-9)
