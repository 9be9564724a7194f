"""Tests for ecnreid/clustering.py: DBSCAN on the Jaccard graph and SpCL's self-paced selection, on hand-made
cases and against a plain-loop reference of the authors' procedure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecnreid.clustering import (
    PseudoLabels,
    cluster_purity,
    dbscan,
    disagreement,
    reliable_labels,
    self_paced_labels,
    singletons_apart,
)
from ecnreid.evaluation.reranking import JaccardGraph, jaccard_graph


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label arrays group the images alike, whatever the numbering."""
    return bool((np.equal.outer(a, a) == np.equal.outer(b, b)).all())


def two_clusters_and_outliers() -> tuple[torch.Tensor, np.ndarray]:
    """Six images around each of two directions, and four lone images in other directions; dim 8."""
    gen = torch.Generator().manual_seed(0)
    basis = torch.eye(8)
    a = basis[0] + 0.05 * torch.randn(6, 8, generator=gen)
    b = basis[1] + 0.05 * torch.randn(6, 8, generator=gen)
    lone = basis[2:6] + 0.05 * torch.randn(4, 8, generator=gen)
    expected = np.array([0] * 6 + [1] * 6 + [-1] * 4)
    return torch.cat([a, b, lone]), expected


def test_hand_made_case_two_clusters_and_outliers() -> None:
    features, expected = two_clusters_and_outliers()
    graph = jaccard_graph(features, k1=6, k2=2)
    ids = dbscan(graph, eps=0.6, min_samples=4)
    assert same_partition(ids, expected) and (ids[12:] == -1).all()
    result = self_paced_labels(graph, eps=0.6, eps_gap=0.02, min_samples=4, independence_threshold=None)
    assert (result.num_clusters, result.num_clustered, result.num_unclustered) == (2, 12, 4)
    assert result.dbscan_clusters == 2
    assert same_partition(result.labels, np.array([0] * 6 + [1] * 6 + [2, 3, 4, 5]))
    assert set(result.labels[:12]) == {0, 1}  # clusters are numbered first
    assert result.independence_threshold == pytest.approx(0.0)
    stats = result.statistics(np.array([7] * 6 + [8] * 5 + [9] * 5))
    assert stats["purity"] == pytest.approx(11 / 12)
    assert 0.0 < stats["nmi"] < 1.0
    assert result.statistics()["clusters"] == 2 and "purity" not in result.statistics()


def test_duplicate_images_are_neighbours_at_distance_zero() -> None:
    graph = JaccardGraph(torch.tensor([0, 0, 1, 1, 2, 3]), torch.tensor([0, 1, 0, 1, 2, 3]),
                         torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0]), 4)
    assert dbscan(graph, eps=0.5, min_samples=2).tolist() == [0, 0, -1, -1]


def test_eps_outside_the_jaccard_range_is_refused() -> None:
    graph = JaccardGraph(torch.tensor([0]), torch.tensor([0]), torch.tensor([0.0]), 1)
    with pytest.raises(ValueError, match="eps"):
        dbscan(graph, eps=1.0, min_samples=1)


def test_disagreement_is_one_minus_iou() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    other = np.array([0, 0, 2, 2, 1])
    # image 0: {0,1,2} vs {0,1} -> 1 - 2/3; image 2: {0,1,2} vs {2,3} -> 1 - 1/4; image 3: {3,4} vs {2,3} -> 1 - 1/3;
    # image 4: {3,4} vs {4} -> 1/2
    np.testing.assert_allclose(disagreement(labels, other), [1 / 3, 1 / 3, 3 / 4, 2 / 3, 1 / 2])


def reference_selection(ids: np.ndarray, tight: np.ndarray, loose: np.ndarray, threshold: float | None):
    """The authors' loop, written out: outliers numbered after the clusters, per-image IoUs from the N x N
    same-label matrices, per-cluster minima, the 90 % threshold, then per-image keep or un-cluster."""
    n = len(ids)

    def numbered(c: np.ndarray) -> list[int]:
        out, outliers, num = [], 0, len(set(c) - {-1})
        for x in c:
            if x != -1:
                out.append(int(x))
            else:
                out.append(num + outliers)
                outliers += 1
        return out

    lab, lt, ll = numbered(ids), numbered(tight), numbered(loose)

    def one_minus_iou(a: list[int], b: list[int], i: int) -> float:
        inter = sum(1 for j in range(n) if a[j] == a[i] and b[j] == b[i])
        union = sum(1 for j in range(n) if a[j] == a[i] or b[j] == b[i])
        return 1 - inter / union

    comp = [one_minus_iou(lab, lt, i) for i in range(n)]
    indep = [one_minus_iou(lab, ll, i) for i in range(n)]
    classes = sorted(set(lab))
    cluster_comp = {c: min(comp[i] for i in range(n) if lab[i] == c) for c in classes}
    cluster_indep = {c: min(indep[i] for i in range(n) if lab[i] == c) for c in classes}
    if threshold is None:
        multi = sorted(cluster_indep[c] for c in classes if lab.count(c) > 1)
        threshold = multi[min(len(multi) - 1, int(np.round(len(multi) * 0.9)))]
    final, extra = [], 0
    for i in range(n):
        if cluster_indep[lab[i]] <= threshold and comp[i] <= cluster_comp[lab[i]]:
            final.append(lab[i])
        else:
            final.append(len(classes) + extra)
            extra += 1
    return np.array(final), threshold


CASES = [
    # ids at eps, tight (eps - gap), loose (eps + gap)
    ([0, 0, 0, 0, 1, 1, 1, 1, -1, -1], [0, 0, 0, -1, 1, 1, 1, 1, -1, -1], [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]),
    ([0, 0, 0, 1, 1, 1, 2, 2, 2, -1], [0, 0, -1, 1, 1, 1, 2, 3, 3, -1], [0, 0, 0, 1, 1, 1, 1, 1, 1, 0]),
    ([0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3], [0, 0, 1, 1, -1, 2, 3, 3, 3, 3, 4, -1],
     [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]),
    ([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8, 9, 9, 9, 10, 10],
     [0, 0, 0, 1, 1, -1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, -1, 7, 7, 7, 8, 8, 8, 9, 9, 9, 10, 10],
     [0, 0, 0, 0, 0, 0, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8, 9, 9, 9, 9, 9]),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("given_threshold", [None, 0.0, 0.5])
def test_selection_matches_the_authors_loop(case, given_threshold: float | None) -> None:
    ids, tight, loose = (np.array(c) for c in case)
    expected, threshold = reference_selection(ids, tight, loose, given_threshold)
    result = reliable_labels(ids, tight, loose, given_threshold)
    assert same_partition(result.labels, expected)
    assert result.independence_threshold == pytest.approx(threshold)
    sizes = np.bincount(result.labels)
    assert result.num_clusters == (sizes > 1).sum() and result.num_unclustered == (sizes == 1).sum()
    assert result.num_classes == len(sizes) and result.num_clustered == sizes[sizes > 1].sum()
    assert (np.diff((sizes > 1).astype(int)) <= 0).all()  # clusters first


def test_a_cluster_that_merges_when_loosened_is_dissolved() -> None:
    ids = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    loose = np.array([0, 0, 0, 0, 0, 0, 2, 2, 2])  # clusters 0 and 1 merge at eps + gap: R_indep = 1/2
    result = reliable_labels(ids, ids, loose, independence_threshold=0.4)
    assert result.num_clusters == 1 and result.num_unclustered == 6
    assert result.independence_threshold == 0.4  # a threshold once fixed stays


def test_purity_none_when_nothing_is_clustered() -> None:
    assert cluster_purity(np.arange(4), np.array([0, 0, 1, 1])) is None


def pairs_graph(pairs: list[tuple[int, int, float]], num_images: int) -> JaccardGraph:
    """A symmetric Jaccard graph with the given pair distances and every image at 0 from itself."""
    rows = [i for i, j, _ in pairs] + [j for i, j, _ in pairs] + list(range(num_images))
    cols = [j for i, j, _ in pairs] + [i for i, j, _ in pairs] + list(range(num_images))
    dists = [d for *_, d in pairs] * 2 + [0.0] * num_images
    return JaccardGraph(torch.tensor(rows), torch.tensor(cols), torch.tensor(dists), num_images)


# Exact binary fractions: eps 0.5, gap 0.25, so tight 0.25 and loose 0.75. At eps: {0,1,2}, {4,5}, 3 alone;
# tight: only {0,1}; loose: {0,1,2,3}, {4,5}.
THREE_LEVELS = pairs_graph([(0, 1, 0.125), (1, 2, 0.375), (2, 3, 0.75), (4, 5, 0.375)], 6)


def test_tight_and_loose_runs_use_eps_minus_and_plus_gap() -> None:
    result = self_paced_labels(THREE_LEVELS, eps=0.5, eps_gap=0.25, min_samples=2, independence_threshold=None)
    # {0,1,2} falls apart when tightened (2 is the least compact), merges with 3 when loosened: R_indep 1/4.
    assert same_partition(result.labels, np.array([0, 0, 1, 2, 3, 3]))
    assert result.independence_threshold == pytest.approx(0.25)
    assert (result.dbscan_clusters, result.num_clusters, result.num_clustered) == (2, 2, 4)


def test_self_paced_labels_keeps_a_given_threshold() -> None:
    result = self_paced_labels(THREE_LEVELS, eps=0.5, eps_gap=0.25, min_samples=2, independence_threshold=0.125)
    assert result.independence_threshold == 0.125
    assert same_partition(result.labels, np.array([0, 1, 2, 3, 4, 4]))  # {0,1,2} not independent enough


def test_dbscan_uses_the_given_eps_and_the_graph_size() -> None:
    # image 2, last in the index, has no entry at all
    graph = JaccardGraph(torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 0, 1]),
                         torch.tensor([0.375, 0.375, 0.0, 0.0]), 3)
    assert dbscan(graph, eps=0.25, min_samples=2).tolist() == [-1, -1, -1]
    ids = dbscan(graph, eps=0.5, min_samples=2)
    assert ids.dtype == np.int64 and ids.tolist() == [0, 0, -1]


def test_eps_zero_is_refused() -> None:
    graph = JaccardGraph(torch.tensor([0]), torch.tensor([0]), torch.tensor([0.0]), 1)
    with pytest.raises(ValueError, match=r"DBSCAN eps must lie in \(0, 1\) on Jaccard distances, got 0.0"):
        dbscan(graph, eps=0.0, min_samples=1)


def test_statistics_whole() -> None:
    labels = PseudoLabels(np.array([0, 0, 1]), 1, 2, 1, 0.25, 3)
    assert labels.statistics() == {
        "clusters": 1, "clustered": 2, "unclustered": 1, "dbscan_clusters": 3, "independence_threshold": 0.25,
    }


def test_purity_and_counts_with_clusters_of_two() -> None:
    assert cluster_purity(np.array([0, 0, 1, 1, 2]), np.array([5, 5, 5, 6, 7])) == pytest.approx(3 / 4)
    result = reliable_labels(np.array([0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 1]), None)
    assert (result.dbscan_clusters, result.num_clusters, result.num_clustered) == (2, 2, 5)


def test_singletons_apart_numbers_outliers_after_the_largest_label() -> None:
    assert singletons_apart(np.array([2, -1, 0, -1])).tolist() == [2, 3, 0, 4]
    assert singletons_apart(np.array([-1, -1])).tolist() == [0, 1]
    assert singletons_apart(np.array([], dtype=np.int64)).tolist() == []


def test_all_outliers_leave_the_threshold_unset() -> None:
    result = reliable_labels(np.full(3, -1), np.full(3, -1), np.full(3, -1), None)
    assert result.independence_threshold is None and result.num_unclustered == 3 and result.num_clusters == 0


def test_independence_threshold_is_the_ninety_percent_quantile() -> None:
    # 16 clusters of two; loosened, cluster c takes in c outliers: R_indep = 1 - 2 / (2 + c).
    ids, loose = [], []
    for c in range(16):
        ids += [c, c]
        loose += [c, c]
    for c in range(16):
        ids += [-1] * c
        loose += [c] * c
    ids_arr, loose_arr = np.array(ids), np.array(loose)
    result = reliable_labels(ids_arr, ids_arr, loose_arr, None)
    assert result.independence_threshold == pytest.approx(1 - 2 / 16)  # sorted scores[round(16 * 0.9)]


def test_classes_are_renumbered_in_stable_order() -> None:
    # 30 classes alternating one and two images: clusters keep their order, then the single images theirs.
    ids = np.repeat(np.arange(30), [1, 2] * 15)
    result = reliable_labels(ids, ids, ids, None)
    expected = np.where(np.arange(30) % 2 == 1, np.arange(30) // 2, 15 + np.arange(30) // 2)[ids]
    assert result.labels.tolist() == expected.tolist()
