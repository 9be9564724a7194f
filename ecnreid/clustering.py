"""Pseudo-labels for unlabelled images, as SpCL makes them (Ge et al., NeurIPS 2020): DBSCAN on the
k-reciprocal Jaccard distance, kept only where the self-paced reliability criteria hold.

Three clusterings of the same distances, at ``eps - gap`` (tight), ``eps`` and ``eps + gap`` (loose). For an
image ``i`` with cluster ``A`` at ``eps``, tight cluster ``T`` and loose cluster ``L`` (an image DBSCAN leaves
out is its own cluster of one):

- compactness ``R_comp(i) = 1 - |A ∩ T| / |A ∪ T|``: a cluster that falls apart at ``eps - gap`` is not compact;
- independence ``R_indep(i) = 1 - |A ∩ L| / |A ∪ L|``: a cluster that merges with others at ``eps + gap``
  is not independent.

A cluster's score is the minimum over its members. A cluster whose independence score is above the threshold
leaves all its members un-clustered; in a kept cluster only the members with the cluster's best compactness
stay. The independence threshold is fixed once, from the first clustering that has clusters: the value below
which 90 % of its clusters (of two or more images) lie. Every un-clustered image is a class of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.cluster import DBSCAN
from sklearn.metrics import normalized_mutual_info_score

from ecnreid.evaluation.reranking import JaccardGraph

# The share of the first clustering's clusters whose independence score sets the threshold.
_INDEPENDENCE_QUANTILE = 0.9


def dbscan(graph: JaccardGraph, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN cluster ids ``[N]`` (``-1``: left out) on the sparse Jaccard graph; pairs absent from the graph
    are at distance 1, so ``eps`` must be below 1. An image counts towards its own ``min_samples``."""
    if not 0.0 < eps < 1.0:
        raise ValueError(f"DBSCAN eps must lie in (0, 1) on Jaccard distances, got {eps}")
    matrix = sparse.csr_matrix(
        (graph.distances.cpu().double().numpy(), (graph.rows.cpu().numpy(), graph.cols.cpu().numpy())),
        shape=(graph.num_images, graph.num_images),
    )
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(matrix).astype(np.int64)


def singletons_apart(cluster_ids: np.ndarray) -> np.ndarray:
    """Cluster ids with every left-out image (``-1``) given a class of its own, numbered after the clusters."""
    labels = cluster_ids.astype(np.int64).copy()
    outliers = labels < 0
    labels[outliers] = labels.max(initial=-1) + 1 + np.arange(int(outliers.sum()))
    return labels


def _set_sizes(labels: np.ndarray) -> np.ndarray:
    """Per image, the size of its class."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse]


def disagreement(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per image ``i``, ``1 - IoU`` of its class under ``labels`` and its class under ``other``."""
    _, pair_inverse, pair_counts = np.unique(
        np.stack([labels, other], axis=1), axis=0, return_inverse=True, return_counts=True
    )
    shared = pair_counts[pair_inverse.reshape(-1)]
    union = _set_sizes(labels) + _set_sizes(other) - shared
    return 1.0 - shared / union


def _per_class_min(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.full(int(labels.max()) + 1, np.inf)
    np.minimum.at(out, labels, values)
    return out


@dataclass
class PseudoLabels:
    """One epoch's pseudo-labels: ``labels[i]`` in ``0 .. num_classes - 1``, clusters first, then one class per
    un-clustered image; ``independence_threshold`` is the (fixed) threshold on ``R_indep``, None until set."""

    labels: np.ndarray
    num_clusters: int
    num_clustered: int
    num_unclustered: int
    independence_threshold: float | None
    dbscan_clusters: int

    @property
    def num_classes(self) -> int:
        return self.num_clusters + self.num_unclustered

    def statistics(self, true_ids: np.ndarray | None = None) -> dict[str, Any]:
        """What the epoch's log records. ``true_ids`` (the target's training identities, when known) give
        purity and NMI, for diagnosis only: no label chooses anything."""
        stats: dict[str, Any] = {
            "clusters": self.num_clusters,
            "clustered": self.num_clustered,
            "unclustered": self.num_unclustered,
            "dbscan_clusters": self.dbscan_clusters,
            "independence_threshold": self.independence_threshold,
        }
        if true_ids is not None:
            stats["purity"] = cluster_purity(self.labels, true_ids)
            stats["nmi"] = float(normalized_mutual_info_score(true_ids, self.labels))
        return stats


def cluster_purity(labels: np.ndarray, true_ids: np.ndarray) -> float | None:
    """The share of clustered images (classes of two or more) whose true identity is their cluster's most
    frequent one; None when nothing is clustered."""
    clustered = _set_sizes(labels) > 1
    if not clustered.any():
        return None
    pairs, pair_counts = np.unique(
        np.stack([labels[clustered], true_ids[clustered]], axis=1), axis=0, return_counts=True
    )
    majority = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    np.maximum.at(majority, pairs[:, 0], pair_counts)
    return float(majority.sum() / clustered.sum())


def self_paced_labels(
    graph: JaccardGraph,
    *,
    eps: float,
    eps_gap: float,
    min_samples: int,
    independence_threshold: float | None,
) -> PseudoLabels:
    """Cluster at ``eps - gap``, ``eps`` and ``eps + gap`` and keep the reliable part (:func:`reliable_labels`)."""
    near = graph.distances <= eps + eps_gap  # no farther pair is a neighbour in any of the three
    graph = JaccardGraph(graph.rows[near], graph.cols[near], graph.distances[near], graph.num_images)
    return reliable_labels(
        dbscan(graph, eps, min_samples),
        dbscan(graph, eps - eps_gap, min_samples),
        dbscan(graph, eps + eps_gap, min_samples),
        independence_threshold,
    )


def reliable_labels(
    cluster_ids: np.ndarray, tight_ids: np.ndarray, loose_ids: np.ndarray, independence_threshold: float | None
) -> PseudoLabels:
    """The self-paced selection (module docstring) from DBSCAN ids (``-1``: left out) at ``eps``, ``eps - gap``
    and ``eps + gap``. ``independence_threshold`` None: this clustering sets it (when it has a cluster of two
    or more images)."""
    labels = singletons_apart(cluster_ids)
    compactness = disagreement(labels, singletons_apart(tight_ids))
    independence = disagreement(labels, singletons_apart(loose_ids))
    cluster_compactness = _per_class_min(labels, compactness)
    cluster_independence = _per_class_min(labels, independence)
    sizes = np.bincount(labels)
    if independence_threshold is None:
        scores = np.sort(cluster_independence[sizes > 1])
        if len(scores):
            at = min(len(scores) - 1, int(np.round(len(scores) * _INDEPENDENCE_QUANTILE)))
            independence_threshold = float(scores[at])
    threshold = np.inf if independence_threshold is None else independence_threshold
    kept = (cluster_independence[labels] <= threshold) & (compactness <= cluster_compactness[labels])
    # Kept images keep their cluster, every other one gets its own class; classes of two or more come first.
    key = np.where(kept, labels, len(sizes) + np.arange(len(labels)))
    _, classes, counts = np.unique(key, return_inverse=True, return_counts=True)
    multi = counts > 1
    order = np.argsort(~multi, kind="stable")
    renumber = np.empty_like(order)
    renumber[order] = np.arange(len(order))
    return PseudoLabels(
        labels=renumber[classes.reshape(-1)].astype(np.int64),
        num_clusters=int(multi.sum()),
        num_clustered=int(counts[multi].sum()),
        num_unclustered=int((~multi).sum()),
        independence_threshold=independence_threshold,
        dbscan_clusters=int((sizes > 1).sum()),
    )
