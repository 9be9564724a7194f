"""The ranking protocol: hand-worked CMC / AP / INP, every filtering rule, ties, and fast == reference."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ranking_reference import evaluate_ranking_reference

from ecnreid.errors import EcnreidError
from ecnreid.evaluation import metrics
from ecnreid.evaluation.distances import iter_distance_blocks, pairwise_distance
from ecnreid.evaluation.metrics import RankingResult, evaluate_blocks, evaluate_ranking

BOTH = [evaluate_ranking, evaluate_ranking_reference]

# Gallery used by the hand-worked protocol case:   index: pid, camera
#   0: 1, 0   1: 2, 1   2: 1, 1   3: 0 (distractor), 0   4: -1 (junk), 1   5: 1, 2   6: 3, 2   7: 4, 0
GALLERY_PIDS = [1, 2, 1, 0, -1, 1, 3, 4]
GALLERY_CAMS = [0, 1, 1, 0, 1, 2, 2, 0]
QUERY_PIDS = [1, 4, 3, 1]
QUERY_CAMS = [0, 0, 0, 2]
DISTANCES = torch.tensor(
    [
        # q0 (pid 1, cam 0): 0 same pid+cam -> removed; 4 junk -> removed. Kept order 1, 2*, 3, 5*, 6, 7:
        # matches at positions 2 and 4 -> AP (1/2 + 2/4) / 2 = 1/2, INP 2/4, first 2.
        [0.1, 0.2, 0.3, 0.4, 0.05, 0.6, 0.7, 0.8],
        # q1 (pid 4, cam 0): its only gallery image (7) is in camera 0 -> no true match -> left out.
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0],
        # q2 (pid 3, cam 0): match 6 is nearest of the kept ones -> AP 1, INP 1, first 1.
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1, 0.5],
        # q3 (pid 1, cam 2): 5 removed (same camera), 4 junk. Kept order 3, 0*, 6, 7, 2*, 1:
        # matches at positions 2 and 5 -> AP (1/2 + 2/5) / 2 = 9/20, INP 2/5, first 2.
        [0.3, 0.9, 0.6, 0.2, 0.0, 0.1, 0.4, 0.5],
    ]
)


def close(value: float, exact: Fraction) -> bool:
    return abs(value - float(exact)) < 1e-12


@pytest.mark.parametrize("evaluate", BOTH)
def test_hand_worked_protocol(evaluate) -> None:
    result = evaluate(DISTANCES, QUERY_PIDS, GALLERY_PIDS, QUERY_CAMS, GALLERY_CAMS, max_rank=3)
    assert result.num_queries == 4 and result.num_valid_queries == 3
    assert close(result.mAP, (Fraction(1, 2) + 1 + Fraction(9, 20)) / 3)  # 13/20
    assert close(result.mINP, (Fraction(1, 2) + 1 + Fraction(2, 5)) / 3)  # 19/30
    assert result.cmc == pytest.approx([1 / 3, 1.0, 1.0], abs=1e-12)


@pytest.mark.parametrize("evaluate", BOTH)
def test_three_matches_ap_and_inp(evaluate) -> None:
    # Matches (pid 7, camera 1) at positions 1, 3 and 6: AP (1/1 + 2/3 + 3/6) / 3 = 13/18, INP 3/6.
    gallery_pids = [7, 9, 7, 9, 9, 7, 9]
    dist = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    result = evaluate(dist, [7], gallery_pids, [0], [1] * 7, max_rank=5)
    assert close(result.mAP, Fraction(13, 18))
    assert close(result.mINP, Fraction(1, 2))
    assert result.cmc == [1.0] * 5


@pytest.mark.parametrize("evaluate", BOTH)
def test_distractors_are_negatives_and_junk_is_removed(evaluate) -> None:
    dist = torch.tensor([[0.1, 0.2, 0.3]])
    distractor_first = evaluate(dist, [5], [0, -1, 5], [0], [1, 1, 1])
    # pid 0 stays (position 1), junk -1 goes: the match is at position 2 -> AP 1/2.
    assert close(distractor_first.mAP, Fraction(1, 2))
    assert distractor_first.cmc[:2] == [0.0, 1.0]
    junk_first = evaluate(torch.tensor([[0.1, 0.2]]), [5], [-1, 5], [0], [1, 1])
    assert close(junk_first.mAP, Fraction(1)) and junk_first.cmc[0] == 1.0


@pytest.mark.parametrize("evaluate", BOTH)
def test_same_pid_same_camera_is_removed_not_counted(evaluate) -> None:
    # Gallery 0 is the query's pid in the query's camera: neither a hit nor a negative.
    result = evaluate(torch.tensor([[0.0, 0.5, 0.7]]), [3], [3, 8, 3], [2], [2, 1, 0])
    assert close(result.mAP, Fraction(1, 2))  # kept order 1 (neg), 2 (match)
    assert close(result.mINP, Fraction(1, 2))


@pytest.mark.parametrize("evaluate", BOTH)
def test_ties_rank_by_gallery_index(evaluate) -> None:
    # All distances equal: stable order = index order; matches at 1 and 3 are positions 2 and 4.
    dist = torch.full((1, 4), 0.5)
    result = evaluate(dist, [1], [2, 1, 3, 1], [0], [1, 1, 1, 2])
    assert close(result.mAP, Fraction(1, 2)) and close(result.mINP, Fraction(1, 2))
    assert result.cmc[:2] == [0.0, 1.0]
    # Matches ahead in index order win the tie: positions 1 and 2.
    swapped = evaluate(dist, [1], [1, 1, 2, 3], [0], [1, 2, 1, 1])
    assert close(swapped.mAP, Fraction(1)) and close(swapped.mINP, Fraction(1))


@pytest.mark.parametrize("evaluate", BOTH)
def test_negative_zero_ties_with_zero(evaluate) -> None:
    # -0.0 == 0.0, so the negative at index 0 stays ahead of the match at index 1.
    result = evaluate(torch.tensor([[0.0, -0.0, -1.0]]), [1], [2, 1, 3], [0], [1, 1, 1])
    assert close(result.mAP, Fraction(1, 3))


@pytest.mark.parametrize("evaluate", BOTH)
def test_nan_distances_rank_last_but_not_at_a_match(evaluate) -> None:
    nan = float("nan")
    result = evaluate(torch.tensor([[nan, 0.3, nan, 0.4]]), [1], [2, 1, 3, 1], [0], [1, 1, 1, 2])
    assert close(result.mAP, Fraction(1))
    with pytest.raises(EcnreidError, match="NaN"):
        evaluate(torch.tensor([[0.1, nan]]), [1], [2, 1], [0], [1, 1])


@pytest.mark.parametrize("evaluate", BOTH)
def test_no_valid_query_raises(evaluate) -> None:
    with pytest.raises(EcnreidError, match="no query with a true match"):
        evaluate(torch.tensor([[0.1, 0.2]]), [1], [1, 2], [0], [0, 1])


def random_problem(seed: int, num_query: int, num_gallery: int, num_pids: int, rounding: float):
    gen = torch.Generator().manual_seed(seed)
    query_pids = torch.randint(0, num_pids, (num_query,), generator=gen)
    gallery_pids = torch.randint(-1, num_pids, (num_gallery,), generator=gen)
    query_cams = torch.randint(0, 3, (num_query,), generator=gen)
    gallery_cams = torch.randint(0, 3, (num_gallery,), generator=gen)
    dist = torch.randn(num_query, num_gallery, generator=gen)
    if rounding:
        dist = (dist / rounding).round() * rounding  # many exact ties, and -0.0 next to 0.0
    return dist, query_pids, gallery_pids, query_cams, gallery_cams


@pytest.mark.parametrize(
    ("seed", "num_query", "num_gallery", "num_pids", "rounding"),
    [(0, 30, 80, 6, 0.0), (1, 50, 200, 10, 0.25), (2, 7, 500, 4, 0.5), (3, 64, 40, 3, 1.0), (4, 1, 30, 2, 0.1)],
)
def test_fast_matches_reference_on_random_problems(seed, num_query, num_gallery, num_pids, rounding) -> None:
    problem = random_problem(seed, num_query, num_gallery, num_pids, rounding)
    fast = evaluate_ranking(*problem, max_rank=20)
    reference = evaluate_ranking_reference(*problem, max_rank=20)
    assert fast.num_valid_queries == reference.num_valid_queries > 0
    assert fast.num_queries == reference.num_queries == num_query
    assert fast.mAP == pytest.approx(reference.mAP, abs=1e-6)
    assert fast.mINP == pytest.approx(reference.mINP, abs=1e-6)
    assert fast.cmc == pytest.approx(reference.cmc, abs=1e-6)


def test_small_internal_blocks_match_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # Forces many row sub-blocks (3 rows of 40) inside one add() call.
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 120)
    problem = random_problem(5, 23, 40, 4, 0.5)
    fast = evaluate_ranking(*problem)
    reference = evaluate_ranking_reference(*problem)
    assert fast.mAP == pytest.approx(reference.mAP, abs=1e-12)
    assert fast.mINP == pytest.approx(reference.mINP, abs=1e-12)
    assert fast.cmc == pytest.approx(reference.cmc, abs=1e-12)


def test_blocked_evaluation_equals_unblocked() -> None:
    dist, *ids = random_problem(6, 37, 60, 5, 0.25)
    whole = evaluate_ranking(dist, *ids)
    order = [(30, dist[30:]), (0, dist[:7]), (7, dist[7:30])]  # any order, uneven sizes
    blocked = evaluate_blocks(order, *ids)
    # Positions, hence CMC and counts, are integers; AP sums are float64 over rows padded to each block's width.
    assert (blocked.cmc, blocked.num_valid_queries, blocked.num_queries) == (
        whole.cmc,
        whole.num_valid_queries,
        whole.num_queries,
    )
    assert blocked.mAP == pytest.approx(whole.mAP, abs=1e-12)
    assert blocked.mINP == pytest.approx(whole.mINP, abs=1e-12)


def test_blocks_from_features_equal_full_matrix() -> None:
    gen = torch.Generator().manual_seed(7)
    query, gallery = torch.randn(20, 8, generator=gen), torch.randn(50, 8, generator=gen)
    ids = (
        torch.arange(20) % 5,
        torch.arange(50) % 5,
        torch.zeros(20, dtype=torch.long),
        torch.ones(50, dtype=torch.long),
    )
    # In every row a match and a non-match lie at least 1e-4 apart, far above a matmul's float32 rounding, so
    # blocked and whole distance matrices put the matches at the same positions: the CMC is compared exactly.
    exact = 1.0 - F.normalize(query.double(), dim=1) @ F.normalize(gallery.double(), dim=1).t()
    is_match = ids[0][:, None] == ids[1][None, :]
    gaps = (exact[:, :, None] - exact[:, None, :]).abs()  # [Q, G, G]: every pair of gallery distances of a row
    assert float(gaps[is_match[:, :, None] & ~is_match[:, None, :]].min()) >= 1e-4
    full = evaluate_ranking(pairwise_distance(query, gallery), *ids)
    blocked = evaluate_blocks(iter_distance_blocks(query, gallery, "cosine", block_size=6), *ids)
    assert blocked.mAP == pytest.approx(full.mAP, abs=1e-12) and blocked.cmc == full.cmc


def test_missing_or_repeated_rows_raise() -> None:
    dist, *ids = random_problem(8, 10, 20, 3, 0.0)
    with pytest.raises(ValueError, match="missing distance rows for 3 queries"):
        evaluate_blocks([(0, dist[:7])], *ids)
    with pytest.raises(ValueError, match="given twice"):
        evaluate_blocks([(0, dist), (5, dist[5:6])], *ids)
    with pytest.raises(ValueError, match="outside"):
        evaluate_blocks([(8, dist[:5])], *ids)


def test_shape_and_id_errors() -> None:
    dist = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shape"):
        evaluate_ranking(dist, [1, 2], [1, 2], [0, 0], [0, 0])
    with pytest.raises(ValueError, match="2 query pids but 1 query camids"):
        evaluate_ranking(dist, [1, 2], [1, 2, 3], [0], [0, 0, 0])
    with pytest.raises(ValueError, match="integers"):
        evaluate_ranking(dist, np.array([1.0, 2.0]), [1, 2, 3], [0, 0], [0, 0, 0])
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_ranking(dist, [1, 2], [1, 2, 3], [0, 0], [0, 0, 0], max_rank=0)


def test_as_dict_reports_fractions_counts_and_cmc() -> None:
    result = RankingResult(
        cmc=[0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 1.0], mAP=0.4, mINP=0.2, num_valid_queries=9, num_queries=10
    )
    out = result.as_dict()
    assert (out["rank1"], out["rank5"], out["rank10"]) == (0.5, 0.9, 1.0)
    assert (out["mAP"], out["mINP"], out["num_valid_queries"], out["num_queries"]) == (0.4, 0.2, 9, 10)
    assert out["cmc"] == result.cmc
    assert "rank10" not in RankingResult([1.0] * 5, 1.0, 1.0, 1, 1).as_dict()


@pytest.mark.parametrize("cells_per_row", [1, 3, 1 << 16, None])
@pytest.mark.parametrize(("seed", "rounding"), [(20, 0.0), (21, 0.25), (22, 1.0)])
def test_histogram_cells_do_not_change_the_result(
    monkeypatch: pytest.MonkeyPatch, seed: int, rounding: float, cells_per_row: int | None
) -> None:
    # Few cells send most entries to the exact step, many cells almost none: the positions must not move.
    if cells_per_row is not None:
        monkeypatch.setattr(metrics, "_cells_per_row", lambda num_gallery: cells_per_row)
    problem = random_problem(seed, 40, 150, 4, rounding)
    fast = evaluate_ranking(*problem, max_rank=20)
    reference = evaluate_ranking_reference(*problem, max_rank=20)
    assert fast.num_valid_queries == reference.num_valid_queries > 0
    assert fast.cmc == pytest.approx(reference.cmc, abs=1e-12)
    assert fast.mAP == pytest.approx(reference.mAP, abs=1e-12)
    assert fast.mINP == pytest.approx(reference.mINP, abs=1e-12)


@pytest.mark.parametrize("evaluate", BOTH)
def test_infinite_extreme_and_equal_match_distances(evaluate) -> None:
    inf, nan, tiny = float("inf"), float("nan"), 2.0**-149  # tiny: the smallest float32 subnormal
    # The query is pid 1, camera 0; its matches are gallery indices 1, 3 and 5 (pid 1, camera 1).
    g_pids, g_cams = [2, 1, 3, 1, 2, 1, 3], [1] * 7
    cases = [
        # Last match infinite: 4(-inf) 3* 5* 0 1*(inf) 2(inf) 6(NaN) -> positions 2, 3, 5.
        ([0.5, inf, inf, 0.2, -inf, 0.3, nan], [2, 3, 5]),
        # First match -inf, tied by a negative after it in index order: 1* 2 6 3* 5* -> 1, 4, 5.
        ([0.5, -inf, -inf, 0.2, inf, 0.3, 0.1], [1, 4, 5]),
        # The matches' span overflows float32: 1*(-3e38) 4 5*(0) 2 0(3e38) 3*(3e38) -> 1, 3, 6.
        ([3e38, -3e38, 1e38, 3e38, -3e38, 0.0, nan], [1, 3, 6]),
        # Subnormal distances: 2(0) 4(-0) 3*(1t) 6(1t) 1*(2t) 5*(3t) 0(7t) -> 3, 5, 6.
        ([7 * tiny, 2 * tiny, 0.0, tiny, -0.0, 3 * tiny, tiny], [3, 5, 6]),
        # All matches tie with each other and with negatives: 6 1* 2 3* 4 5* 0 -> 2, 4, 6.
        ([0.7, 0.4, 0.4, 0.4, 0.4, 0.4, 0.1], [2, 4, 6]),
    ]
    for row, positions in cases:
        result = evaluate(torch.tensor([row]), [1], g_pids, [0], g_cams)
        ap = sum(Fraction(m + 1, p) for m, p in enumerate(positions)) / len(positions)
        assert close(result.mAP, ap), row
        assert close(result.mINP, Fraction(len(positions), positions[-1])), row
        assert result.cmc[0] == float(positions[0] == 1), row


@pytest.mark.parametrize("threads", [1, 3])
def test_compiled_pass_gives_the_same_positions_on_any_number_of_threads(threads: int) -> None:
    # Row ranges go to threads (one thread: a direct call); every split must give the reference's numbers.
    problem = random_problem(30, 37, 120, 4, 0.25)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = evaluate_ranking(*problem, max_rank=20)
    finally:
        torch.set_num_threads(before)
    reference = evaluate_ranking_reference(*problem, max_rank=20)
    assert fast.cmc == pytest.approx(reference.cmc, abs=1e-12)
    assert fast.mAP == pytest.approx(reference.mAP, abs=1e-12)
    assert fast.mINP == pytest.approx(reference.mINP, abs=1e-12)


def test_compiled_loop_works_without_a_writable_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    # numba refuses cache=True where it finds nowhere to write; the loop must then compile uncached.
    import numba

    from ecnreid.evaluation import positions

    real_njit = numba.njit
    asked = []

    def njit(*args, **kwargs):
        asked.append(bool(kwargs.get("cache")))
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return real_njit(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", njit)

    def add(a, b):
        return a + b

    assert positions.compiled(add)(2, 3) == 5
    assert asked == [True, False]


def test_errors_name_the_offending_ids_and_sizes() -> None:
    dist = torch.zeros(2, 3)
    ids = {"query_pids": [1, 2], "gallery_pids": [1, 2, 3], "query_camids": [0, 0], "gallery_camids": [0, 0, 0]}
    for name in ids:
        with pytest.raises(ValueError, match=rf"^evaluation {name} must be 1-D, got shape \(1, 2\)$"):
            metrics.RankingAccumulator(**{**ids, name: [[0, 0]]})
        with pytest.raises(ValueError, match=rf"^evaluation {name} must hold integers, got torch.float64$"):
            metrics.RankingAccumulator(**{**ids, name: np.zeros(len(ids[name]))})
    with pytest.raises(ValueError, match=r"^evaluation has 3 gallery pids but 2 gallery camids$"):
        metrics.RankingAccumulator(**{**ids, "gallery_camids": [0, 0]})
    with pytest.raises(ValueError, match=r"^evaluation gallery is empty$"):
        none = np.zeros(0, dtype=np.int64)
        evaluate_ranking(torch.zeros(2, 0), [1, 2], none, [0, 0], none)
    with pytest.raises(ValueError, match=r"^evaluation distance matrix has shape \(3, 3\); expected \[2, gallery\]$"):
        evaluate_ranking(torch.zeros(3, 3), **ids)
    with pytest.raises(EcnreidError, match=r"^evaluation has no query with a true match"):
        evaluate_ranking(dist, [5, 6], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(EcnreidError, match=r"^evaluation has no query with a true match"):
        evaluate_ranking_reference(dist, [5, 6], [1, 2, 3], [0, 0], [1, 1, 1])


def test_row_errors_name_the_rows() -> None:
    dist, *ids = random_problem(0, 8, 20, 3, 0.0)
    with pytest.raises(ValueError, match=r"missing distance rows for 2 queries \(first: 5\)"):
        evaluate_blocks([(0, dist[:5]), (7, dist[7:])], *ids)
    with pytest.raises(ValueError, match=r"block rows 6\.\.9 fall outside the 8 queries"):
        evaluate_blocks([(6, dist[:3])], *ids)


def test_one_gallery_image_and_rank_one_only() -> None:
    result = evaluate_ranking(torch.zeros(1, 1), [1], [1], [0], [1], max_rank=1)
    assert result.cmc == [1.0] and result.mAP == 1.0 and result.mINP == 1.0
    assert len(evaluate_ranking(DISTANCES, QUERY_PIDS, GALLERY_PIDS, QUERY_CAMS, GALLERY_CAMS).cmc) == 50
    accumulator = metrics.RankingAccumulator(QUERY_PIDS, GALLERY_PIDS, QUERY_CAMS, GALLERY_CAMS)
    accumulator.add(0, DISTANCES)
    assert len(accumulator.result().cmc) == 50


@pytest.mark.parametrize("evaluate", BOTH)
def test_junk_query_has_no_true_match(evaluate) -> None:
    # A query with the junk id -1 is counted but has no true match, even with junk gallery images in other cameras.
    result = evaluate(torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.1, 0.2]]), [-1, 1], [-1, 1, 2], [0, 0], [1, 1, 1])
    assert (result.num_valid_queries, result.num_queries) == (1, 2)
    assert result.cmc[0] == 1.0 and result.mAP == 1.0  # query 1: its match (image 1) before image 2


@pytest.mark.parametrize("evaluate", BOTH)
def test_float64_distances_are_ranked_in_float32(evaluate) -> None:
    # 1 + 1e-12 and 1 tie in float32, so the smaller index (the match) ranks first.
    dist = torch.tensor([[1.0 + 1e-12, 1.0]], dtype=torch.float64)
    for given in (dist, dist.numpy(), dist.clone().requires_grad_(True)):
        result = evaluate(given, [1], [1, 2], [0], [1, 1])
        assert result.cmc[0] == 1.0 and result.mAP == 1.0


def test_ids_of_mixed_integer_types() -> None:
    result = evaluate_ranking(
        DISTANCES, np.array(QUERY_PIDS, dtype=np.int32), torch.tensor(GALLERY_PIDS, dtype=torch.int16),
        np.array(QUERY_CAMS, dtype=np.uint8), GALLERY_CAMS,
    )
    expected = evaluate_ranking(DISTANCES, QUERY_PIDS, GALLERY_PIDS, QUERY_CAMS, GALLERY_CAMS)
    assert result == expected
