"""k-reciprocal re-ranking against a plain-loop reference of the CVPR 2017 algorithm, and its properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecnreid.data.records import ImageRecord
from ecnreid.evaluation import reranking
from ecnreid.evaluation.evaluator import score_features
from ecnreid.evaluation.metrics import evaluate_blocks, evaluate_ranking
from ecnreid.evaluation.reranking import iter_rerank_blocks, jaccard_graph, k_reciprocal_rerank


def reciprocal_weights(rank: np.ndarray, distance: np.ndarray, k1: int) -> np.ndarray:
    """Row i: exp(-distance) over i's k1-reciprocal neighbours, grown by each neighbour's k1/2-reciprocal set
    that shares more than 2/3 of it, normalised to sum to 1 (both oracles below build their vectors this way)."""
    n = len(rank)

    def reciprocal(i: int, k: int) -> list[int]:
        return [int(j) for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for c in r:
            rc = reciprocal(c, int(np.around(k1 / 2)))
            if len(set(rc) & set(r)) > 2 / 3 * len(rc):
                expanded |= set(rc)
        cols = sorted(expanded)
        weights = np.exp(-distance[i, cols])
        v[i, cols] = weights / weights.sum()
    return v


def reference_rerank(query: np.ndarray, gallery: np.ndarray, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    """The algorithm as written in the paper's pseudo-code: dense float64 matrices, loops, full sorts."""
    x = np.concatenate([query, gallery]).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n, num_query = len(x), len(query)
    squared = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    original = np.array([squared[i] / squared[i].max() for i in range(n)])
    rank = np.argsort(original, axis=1, kind="stable")
    v = reciprocal_weights(rank, original, k1)
    if k2 > 1:
        v = np.array([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((num_query, n - num_query))
    for i in range(num_query):
        for j in range(num_query, n):
            jaccard[i, j - num_query] = 1 - np.minimum(v[i], v[j]).sum() / np.maximum(v[i], v[j]).sum()
    return (1 - lambda_value) * jaccard + lambda_value * original[:num_query, num_query:]


def clustered(seed: int, num_ids: int, per_id: int, dim: int, noise: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, dim, generator=gen)
    return centres.repeat_interleave(per_id, 0) + noise * torch.randn(num_ids * per_id, dim, generator=gen)


@pytest.mark.parametrize(
    ("seed", "num_query", "k1", "k2", "lambda_value"),
    [(0, 6, 20, 6, 0.3), (1, 9, 5, 3, 0.3), (2, 4, 8, 1, 0.5), (3, 10, 3, 2, 0.0), (4, 1, 40, 6, 0.3),
     (5, 6, 1, 1, 0.3), (6, 8, 27, 2, 0.3), (7, 29, 20, 6, 0.3)],
)
def test_matches_loop_reference(seed: int, num_query: int, k1: int, k2: int, lambda_value: float) -> None:
    features = clustered(seed, num_ids=6, per_id=5, dim=8, noise=0.7)  # N = 30
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(seed + 100))
    features = features[perm]
    query, gallery = features[:num_query], features[num_query:]
    expected = reference_rerank(query.double().numpy(), gallery.double().numpy(), k1, k2, lambda_value)
    got = k_reciprocal_rerank(query, gallery, k1=k1, k2=k2, lambda_value=lambda_value, block_size=7)
    assert got.dtype == torch.float32 and got.shape == (num_query, 30 - num_query)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=0)


def test_block_size_does_not_change_the_result() -> None:
    features = clustered(7, num_ids=5, per_id=5, dim=8, noise=0.6)
    query, gallery = features[:9], features[9:]
    whole = k_reciprocal_rerank(query, gallery, k1=6, k2=3, block_size=4096)
    for block_size in (1, 4, 9, 10):
        blocked = k_reciprocal_rerank(query, gallery, k1=6, k2=3, block_size=block_size)
        torch.testing.assert_close(blocked, whole, atol=1e-6, rtol=0)


def test_lambda_one_is_row_normalised_squared_distance() -> None:
    features = clustered(5, num_ids=4, per_id=4, dim=6, noise=0.5)
    query, gallery = features[:5], features[5:]
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    squared = torch.cdist(unit, unit) ** 2
    expected = squared[:5, 5:] / squared[:5].amax(dim=1, keepdim=True)
    got = k_reciprocal_rerank(query, gallery, k1=4, k2=2, lambda_value=1.0)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)


def test_jaccard_part_is_symmetric_in_query_and_gallery() -> None:
    features = clustered(6, num_ids=5, per_id=5, dim=8, noise=0.6)
    a, b = features[:8], features[8:]
    ab = k_reciprocal_rerank(a, b, k1=6, k2=3, lambda_value=0.0)
    ba = k_reciprocal_rerank(b, a, k1=6, k2=3, lambda_value=0.0)
    torch.testing.assert_close(ab, ba.T, atol=1e-6, rtol=0)
    # The code caps the shared mass, so the bounds hold exactly, not just up to rounding.
    assert float(ab.min()) >= 0.0 and float(ab.max()) <= 1.0


def test_duplicate_images_keep_distances_in_the_unit_interval() -> None:
    # Exact duplicates have equal rows of V, whose shared mass can round to just above 1 (Jaccard -2e-7).
    for seed in range(6):
        features = clustered(seed, num_ids=5, per_id=4, dim=8, noise=0.5)
        query = features[::4]
        gallery = torch.cat([query, features])  # each query appears twice more in the gallery
        for lambda_value in (0.0, 0.3):
            got = k_reciprocal_rerank(query, gallery, k1=8, k2=6, lambda_value=lambda_value)
            assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0, (seed, lambda_value)
        jaccard = k_reciprocal_rerank(query, gallery, k1=8, k2=6, lambda_value=0.0)
        assert float(jaccard[range(5), range(5)].max()) < 1e-6  # a duplicate shares all its neighbours


def test_unrelated_images_get_jaccard_one() -> None:
    # Two far-apart groups: a query shares no k-reciprocal neighbour with the other group's images.
    near = torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.98, -0.1, 0.05]])
    far = torch.tensor([[0.0, 0.0, 1.0], [0.1, 0.0, 0.99], [-0.1, 0.05, 0.98]])
    got = k_reciprocal_rerank(near[:1], torch.cat([near[1:], far]), k1=2, k2=1, lambda_value=0.0)
    assert got[0, 2:].tolist() == [1.0, 1.0, 1.0]
    assert float(got[0, :2].max()) < 1.0


def test_rerank_pulls_true_matches_ahead_of_a_close_impostor() -> None:
    # Points (x, y) lifted to (x, y, 1), so after L2 normalisation distances follow the plane.
    # Query q and its identity A on the x axis; impostor b0 just above q, next to identity B's tight cluster.
    # Raw distance: b0 (0.25 away) beats a3 (0.31 away). With k1 = 3, b0's 4 nearest are b0, b1, b2, b3, so
    # q is not k-reciprocal to it and their encodings share no image: Jaccard exactly 1. A's encodings share
    # q's neighbours, so their Jaccard is below 1 and re-ranking moves a3 ahead of b0.
    points = torch.tensor(
        [[0.0, 0.0], [0.10, 0.0], [0.22, 0.0], [0.31, 0.0], [0.0, 0.25], [0.0, 0.33], [0.03, 0.36], [-0.03, 0.36]]
    )
    features = torch.cat([points, torch.ones(8, 1)], dim=1)
    query, gallery = features[:1], features[1:]  # gallery: a1, a2, a3, b0, b1, b2, b3
    original = k_reciprocal_rerank(query, gallery, k1=3, k2=1, lambda_value=1.0)[0]
    jaccard = k_reciprocal_rerank(query, gallery, k1=3, k2=1, lambda_value=0.0)[0]
    reranked = k_reciprocal_rerank(query, gallery, k1=3, k2=1, lambda_value=0.3)[0]
    # b2 and b3 are mirror images about q, so their distances tie exactly: a stable sort keeps index order.
    assert torch.argsort(original, stable=True).tolist() == [0, 1, 3, 2, 4, 5, 6]
    assert jaccard[3:].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert float(jaccard[:3].max()) < 1.0
    assert torch.argsort(reranked, stable=True).tolist() == [0, 1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(reranked, 0.7 * jaccard + 0.3 * original)


def test_bad_inputs_raise_one_line_errors() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="dimension"):
        k_reciprocal_rerank(x, torch.randn(4, 5))
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank(x, x, lambda_value=1.5)
    with pytest.raises(ValueError, match="k1, k2"):
        k_reciprocal_rerank(x, x, k1=0)
    with pytest.raises(ValueError, match="^re-ranking needs at least one query and one gallery feature$"):
        k_reciprocal_rerank(x[:0], x)
    two_d = r"^re-ranking features must be 2-D \[N, D\]; got query \(4, 3\), gallery \(4,\)$"
    with pytest.raises(ValueError, match=two_d):
        k_reciprocal_rerank(x, torch.randn(4))


def _blocks(query: torch.Tensor, gallery: torch.Tensor, **kwargs) -> list[tuple[int, torch.Tensor]]:
    return list(iter_rerank_blocks(query, gallery, **kwargs))


@pytest.mark.parametrize(("seed", "num_query", "k1", "k2"), [(10, 9, 20, 6), (11, 13, 6, 3), (12, 5, 8, 1)])
def test_query_blocks_equal_the_whole_problem_and_the_reference(seed: int, num_query: int, k1: int, k2: int) -> None:
    features = clustered(seed, num_ids=6, per_id=6, dim=8, noise=0.7)  # N = 36
    query, gallery = features[:num_query], features[num_query:]
    # block_size >= N: one neighbour block and one query block, i.e. the computation done whole.
    whole = k_reciprocal_rerank(query, gallery, k1=k1, k2=k2, block_size=64)
    expected = reference_rerank(query.double().numpy(), gallery.double().numpy(), k1, k2, 0.3)
    np.testing.assert_allclose(whole.numpy(), expected, atol=1e-5, rtol=0)
    for block_size in (1, 3, 7, num_query, num_query + 5):
        blocks = _blocks(query, gallery, k1=k1, k2=k2, block_size=block_size)
        starts = list(range(0, num_query, block_size))
        assert [start for start, _ in blocks] == starts
        assert [tuple(block.shape) for _, block in blocks] == [
            (min(block_size, num_query - start), 36 - num_query) for start in starts
        ]
        assert all(block.dtype == torch.float32 for _, block in blocks)
        torch.testing.assert_close(torch.cat([block for _, block in blocks]), whole, atol=1e-6, rtol=0)


def test_internal_chunks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    features = clustered(13, num_ids=5, per_id=6, dim=8, noise=0.6)
    query, gallery = features[:8], features[8:]
    expected = k_reciprocal_rerank(query, gallery, k1=6, k2=3)
    # Tiny chunks: many Jaccard, expansion, pair-distance and combination chunks, and 2-row query blocks.
    for name, value in [
        ("_JACCARD_CHUNK", 5),
        ("_EXPANSION_CHUNK", 7),
        ("_PAIR_CHUNK", 3),
        ("_COMBINE_CHUNK", 1),
        ("_QUERY_BLOCK_ELEMENTS", 2 * 22 + 1),
    ]:
        monkeypatch.setattr(reranking, name, value)
    blocks = _blocks(query, gallery, k1=6, k2=3)
    assert [tuple(block.shape) for _, block in blocks] == [(2, 22)] * 4
    torch.testing.assert_close(torch.cat([block for _, block in blocks]), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("seed", "num_query", "k1", "k2", "chunk"),
    [(20, 7, 4, 3, 1), (21, 12, 9, 4, 2), (22, 3, 6, 2, 3), (23, 10, 2, 5, 5), (24, 16, 12, 6, 17), (25, 29, 5, 3, 1)],
)
def test_small_chunks_give_the_reference_result(monkeypatch, seed: int, num_query: int, k1: int, k2: int, chunk: int):
    """Every internal chunk as small as ``chunk`` entries (one to a few rows or pairs per chunk), on noisy problems
    whose expanded sets reach beyond each image's own neighbour pool, and query blocks (8 rows) taller than the
    gallery is wide (6 images): the reference, not the code itself, decides."""
    for name in ("_JACCARD_CHUNK", "_EXPANSION_CHUNK", "_PAIR_CHUNK", "_COMBINE_CHUNK"):
        monkeypatch.setattr(reranking, name, chunk)
    features = clustered(seed, num_ids=5, per_id=7, dim=6, noise=1.2)  # N = 35
    query, gallery = features[:num_query], features[num_query:]
    expected = reference_rerank(query.double().numpy(), gallery.double().numpy(), k1, k2, 0.3)
    got = k_reciprocal_rerank(query, gallery, k1=k1, k2=k2, block_size=8)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=0)


def _ids(seed: int, num_query: int, num_gallery: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randint(1, 6, (num_query,), generator=gen),
        torch.randint(1, 6, (num_gallery,), generator=gen),
        torch.randint(0, 3, (num_query,), generator=gen),
        torch.randint(0, 3, (num_gallery,), generator=gen),
    )


@pytest.mark.parametrize("block_size", [1, 3, 7, 11, 64])
def test_metrics_of_query_blocks_equal_metrics_of_the_full_matrix(block_size: int) -> None:
    features = clustered(14, num_ids=6, per_id=8, dim=8, noise=0.8)
    query, gallery = features[:11], features[11:]
    ids = _ids(14, 11, 37)
    # The same block_size on both sides: the full matrix is exactly the blocks stacked, so the metrics agree
    # exactly; across block sizes the distances agree to 1e-6 (test above), and a near tie could move a rank.
    full = evaluate_ranking(k_reciprocal_rerank(query, gallery, block_size=block_size), *ids)
    blocked = evaluate_blocks(iter_rerank_blocks(query, gallery, block_size=block_size), *ids)
    assert full.num_valid_queries == blocked.num_valid_queries > 5
    assert blocked.cmc == full.cmc
    assert blocked.mAP == pytest.approx(full.mAP, abs=1e-12)
    assert blocked.mINP == pytest.approx(full.mINP, abs=1e-12)


def test_score_features_reranks_block_by_block() -> None:
    features = clustered(15, num_ids=6, per_id=8, dim=8, noise=0.8)
    query, gallery = features[:11], features[11:]
    q_pids, g_pids, q_cams, g_cams = _ids(15, 11, 37)

    def records(pids: torch.Tensor, cams: torch.Tensor) -> list[ImageRecord]:
        return [ImageRecord(f"{i}.jpg", int(p), int(c)) for i, (p, c) in enumerate(zip(pids, cams, strict=True))]

    got = score_features(query, gallery, records(q_pids, q_cams), records(g_pids, g_cams), rerank=True)
    expected = evaluate_ranking(k_reciprocal_rerank(query, gallery), q_pids, g_pids, q_cams, g_cams)
    assert got.cmc == expected.cmc
    assert got.mAP == pytest.approx(expected.mAP, abs=1e-12)


def test_blocks_are_validated_and_leave_the_inputs_alone() -> None:
    x = torch.randn(4, 3)
    kept = x.clone()
    with pytest.raises(ValueError, match="dimension"):
        next(iter_rerank_blocks(x, torch.randn(4, 5)))
    with pytest.raises(ValueError, match="block_size"):
        next(iter_rerank_blocks(x, x, block_size=0))
    list(iter_rerank_blocks(x, x))  # normalises a copy, never the caller's tensors
    assert torch.equal(x, kept)


def reference_spcl_jaccard(features: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """SpCL's clustering distance as its authors write it, dense and in loops: lists of k1 images (itself
    included), weights softmax(-||x_i - x_j||^2) on unit features, query expansion over k2, then Jaccard."""
    x = features.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    squared = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    rank = np.argsort(squared, axis=1, kind="stable")[:, :k1]
    v = reciprocal_weights(rank, squared, k1)
    if k2 > 1:
        v = np.array([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    shared = np.array([[np.minimum(v[i], v[j]).sum() for j in range(n)] for i in range(n)])
    return 1 - shared / (2 - shared)


def dense(graph) -> np.ndarray:
    out = np.ones((graph.num_images, graph.num_images))
    out[graph.rows.numpy(), graph.cols.numpy()] = graph.distances.numpy()
    return out


@pytest.mark.parametrize(
    ("seed", "k1", "k2", "block_size"), [(0, 30, 6, 2048), (1, 8, 3, 7), (2, 5, 1, 4), (3, 12, 6, 1)]
)
def test_jaccard_graph_matches_the_authors_loops(seed: int, k1: int, k2: int, block_size: int) -> None:
    features = clustered(seed, num_ids=6, per_id=5, dim=8, noise=0.7)
    graph = jaccard_graph(features, k1=k1, k2=k2, block_size=block_size)
    expected = reference_spcl_jaccard(features.double().numpy(), k1, k2)
    np.testing.assert_allclose(dense(graph), expected, atol=1e-5, rtol=0)
    assert (graph.distances < 1).all() and graph.distances.min() >= 0
    keys = graph.rows * graph.num_images + graph.cols
    assert torch.equal(keys, torch.sort(keys).values) and len(torch.unique(keys)) == len(keys)
    assert torch.allclose(graph.distances[graph.rows == graph.cols], torch.zeros(graph.num_images), atol=1e-6)


def test_jaccard_graph_leaves_out_pairs_without_shared_neighbours() -> None:
    far_apart = torch.cat([clustered(5, num_ids=1, per_id=6, dim=4, noise=0.1) + 50, clustered(6, 1, 6, 4, 0.1) - 50])
    graph = jaccard_graph(far_apart, k1=5, k2=2)
    assert ((graph.rows < 6) == (graph.cols < 6)).all()
