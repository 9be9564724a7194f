"""The evaluator's reported numbers: each percentage is its own CMC entry, and re-ranked scores are those of the
loop reference's re-ranked distances."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from ranking_reference import evaluate_ranking_reference
from test_reranking import clustered, reference_rerank

from ecnreid.data.records import ImageRecord
from ecnreid.evaluation import evaluator
from ecnreid.evaluation.evaluator import Evaluator, block_rows, metrics_row, score_features
from ecnreid.evaluation.metrics import RankingResult


def test_metrics_row_reads_each_rank_from_its_own_cmc_entry() -> None:
    cmc = [0.05 * k for k in range(1, 21)]  # rank-k = k/20
    row = metrics_row(RankingResult(cmc=cmc, mAP=0.25, mINP=0.125, num_valid_queries=4, num_queries=5))
    assert row == pytest.approx({"rank1": 5.0, "rank5": 25.0, "rank10": 50.0, "mAP": 25.0, "mINP": 12.5})
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


def _problem() -> tuple[list[ImageRecord], torch.Tensor]:
    """Records of 6 identities x 5 images over 3 cameras, and their (unnormalised) features by record."""
    features = clustered(31, num_ids=6, per_id=5, dim=8, noise=0.9) * torch.arange(1, 31).unsqueeze(1)
    records = [ImageRecord(f"{i}.jpg", i // 5, i % 3) for i in range(30)]
    return records, features


def test_block_rows_bounds_the_distances_of_one_block() -> None:
    assert block_rows(1000) == 4096  # small galleries: the most rows
    assert block_rows(82161) == 816  # MSMT17: 2**26 // 82,161
    assert block_rows(1 << 26) == 1 and block_rows(1 << 28) == 1  # never fewer than one row
    assert block_rows(0) == 4096 and block_rows(100, most=7) == 7
    assert block_rows(1, most=1 << 30) == 1 << 26 and block_rows(0, most=1 << 30) == 1 << 26


def test_plain_scores_use_the_asked_metric_in_bounded_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    records, features = _problem()
    query, gallery = records[::3], [r for i, r in enumerate(records) if i % 3]
    qf, gf = features[::3], features[[i for i in range(30) if i % 3]]
    calls = []
    real = evaluator.iter_distance_blocks

    def spy(query_features, gallery_features, *, metric, block_size):
        calls.append((metric, block_size))
        return real(query_features, gallery_features, metric=metric, block_size=block_size)

    monkeypatch.setattr(evaluator, "iter_distance_blocks", spy)
    monkeypatch.setattr(evaluator, "_BLOCK_DISTANCES", 3 * len(gallery))  # 3 query rows per block
    pids, cams = np.array([r.pid for r in records]), np.array([r.camid for r in records])
    for metric, distance in (("cosine", None), ("euclidean", torch.cdist(qf.double(), gf.double()))):
        if distance is None:
            unit_q, unit_g = (torch.nn.functional.normalize(f.double(), dim=1) for f in (qf, gf))
            distance = 1 - unit_q @ unit_g.t()
        expected = evaluate_ranking_reference(
            distance.numpy(), pids[::3], pids[[i for i in range(30) if i % 3]], cams[::3],
            cams[[i for i in range(30) if i % 3]],
        )
        got = score_features(qf, gf, query, gallery, metric=metric) if metric != "cosine" else score_features(
            qf, gf, query, gallery
        )
        assert got.mAP == pytest.approx(expected.mAP, abs=1e-6) and got.cmc[:10] == pytest.approx(expected.cmc[:10])
    assert calls == [("cosine", 3), ("euclidean", 3)]
    cosine, euclidean = (score_features(qf, gf, query, gallery, metric=m).mAP for m in ("cosine", "euclidean"))
    assert cosine != pytest.approx(euclidean, abs=1e-4)  # the features' norms make the two metrics disagree


def test_the_evaluator_scores_the_features_its_settings_extract(monkeypatch: pytest.MonkeyPatch) -> None:
    records, features = _problem()
    by_path = {r.path: f for r, f in zip(records, features, strict=True)}
    query, gallery = records[::3], [r for i, r in enumerate(records) if i % 3]
    model = torch.nn.Identity()
    seen = []

    def fake_extract(given_model, given_records, **settings):
        assert given_model is model
        seen.append(settings)
        return torch.stack([by_path[r.path] for r in given_records])

    monkeypatch.setattr(evaluator, "extract_features", fake_extract)
    settings = dict(height=48, width=24, device=torch.device("cpu"), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6),
                    batch_size=7, workers=0, flip=True, show_progress=False)
    start = time.perf_counter()
    evaluation = Evaluator(query, gallery, metric="euclidean", rerank=True, **settings)(model)
    wall = time.perf_counter() - start
    assert seen == [{**settings, "description": "query features"}, {**settings, "description": "gallery features"}]
    qf, gf = features[::3], features[[i for i in range(30) if i % 3]]
    assert torch.equal(evaluation.query_features, qf) and torch.equal(evaluation.gallery_features, gf)
    plain = score_features(qf, gf, query, gallery, metric="euclidean")
    reranked = score_features(qf, gf, query, gallery, rerank=True)
    assert evaluation.results == {"plain": plain, "rerank": reranked}
    assert evaluation.row() == metrics_row(plain) and evaluation.row("rerank") == metrics_row(reranked)
    assert set(evaluation.timings) == {"features_s", "metrics_s", "rerank_s"}
    assert all(0 <= t <= wall for t in evaluation.timings.values())
    plain_only = Evaluator(query, gallery, **settings)(model)
    assert plain_only.results == {"plain": score_features(qf, gf, query, gallery)}
    assert set(plain_only.timings) == {"features_s", "metrics_s"}
