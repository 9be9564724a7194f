"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), vectorised and sparse so it runs on a whole Market-1501 test set.

With the ``N = Q + G`` query and gallery images together:

- original distance ``d(i, j) = ||x_i - x_j||^2 / max_k ||x_i - x_k||^2`` on L2-normalised features (the
  algorithm's column-max normalisation of the symmetric squared-distance matrix, read row-wise);
- ``R(i, k)``: the ``k + 1`` nearest images of ``i`` (itself included) that have ``i`` among their own
  ``k + 1`` nearest; ``R*(i)`` adds ``R(c, round(k1 / 2))`` for each ``c`` in ``R(i, k1)`` that shares more
  than 2/3 of its members with ``R(i, k1)``;
- ``V[i, j] = exp(-d(i, j)) / sum`` over ``j`` in ``R*(i)``, then local query expansion replaces row ``i`` by
  the mean of the rows of its ``k2`` nearest images (itself included);
- Jaccard distance ``1 - sum_k min(V_ik, V_jk) / sum_k max(V_ik, V_jk)``, where ``sum max = 2 - sum min``
  because every row of ``V`` sums to one; final ``(1 - lambda) * Jaccard + lambda * d`` for query x gallery.

``V`` is stored as sorted (row, column, value) triplets in float32 (the authors' code keeps a dense float16
``V``). The full ``N x N`` distance matrix is never held: its upper-triangle blocks are computed once and
only each row's nearest neighbours, their distances and the row maximum are kept (plus query x gallery).
Among exactly equal distances the neighbour order is ``topk``'s, i.e. unspecified.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ecnreid.errors import EcnreidError

# Pairs gathered at once when computing exact distances of expansion pairs (each pair reads 2 x D floats).
_PAIR_CHUNK = 1 << 14
# Query x gallery (min, min) products accumulated at once in the Jaccard step.
_JACCARD_CHUNK = 1 << 23


class _SparseRows(NamedTuple):
    """A sparse ``[N, N]`` matrix as entries sorted by (row, column)."""

    rows: Tensor
    cols: Tensor
    values: Tensor


class _Neighbours(NamedTuple):
    """Per image: its nearest ``pool`` images (ascending), their squared distances, the row maximum."""

    indices: Tensor
    distances: Tensor
    row_max: Tensor


def _merge_nearest(best: _Neighbours, rows: slice, dist: Tensor, col_offset: int) -> None:
    """Fold a distance block ``[rows, cols]`` whose columns start at ``col_offset`` into the running best."""
    pool = best.indices.shape[1]
    top = dist.topk(min(pool, dist.shape[1]), dim=1, largest=False)
    values = torch.cat([best.distances[rows], top.values], dim=1)
    indices = torch.cat([best.indices[rows], top.indices + col_offset], dim=1)
    keep = values.topk(pool, dim=1, largest=False, sorted=True)
    best.distances[rows] = keep.values
    best.indices[rows] = indices.gather(1, keep.indices)
    torch.maximum(best.row_max[rows], dist.amax(dim=1), out=best.row_max[rows])


def _neighbours(features: Tensor, pool: int, num_query: int, block_size: int) -> tuple[_Neighbours, Tensor]:
    """One pass over the squared distances of all ``N`` images, keeping each row's ``pool`` nearest and its
    maximum, plus the query rows' distances to the gallery ``[Q, G]`` normalised by their row maximum.

    The matrix is symmetric, so only blocks on and above the diagonal are computed; each off-diagonal block
    also serves, transposed, the rows of its columns.
    """
    n = features.shape[0]
    squared_norms = features.pow(2).sum(dim=1)
    best = _Neighbours(torch.zeros(n, pool, dtype=torch.int64), torch.full((n, pool), torch.inf), torch.zeros(n))
    query_gallery = torch.empty(num_query, n - num_query)
    starts = range(0, n, block_size)
    for a in starts:
        rows = slice(a, min(a + block_size, n))
        for b in starts[a // block_size :]:
            cols = slice(b, min(b + block_size, n))
            dist = torch.addmm(squared_norms[cols].unsqueeze(0), features[rows], features[cols].T, alpha=-2.0)
            dist.add_(squared_norms[rows].unsqueeze(1)).clamp_min_(0.0)
            _merge_nearest(best, rows, dist, b)
            if b != a:
                _merge_nearest(best, cols, dist.T.contiguous(), a)
            # With b >= a, a block's query x gallery part is always in its rows, never in its transpose.
            if a < num_query and cols.stop > num_query:
                q_stop, g_start = min(rows.stop, num_query), max(b, num_query)
                query_gallery[a:q_stop, g_start - num_query : cols.stop - num_query] = dist[: q_stop - a, g_start - b :]
    # A row of identical features has maximum 0; keep the division finite.
    best.row_max.clamp_min_(torch.finfo(torch.float32).tiny)
    query_gallery.div_(best.row_max[:num_query].unsqueeze(1))
    return best, query_gallery


def _reciprocal_mask(nearest: Tensor, k: int) -> Tensor:
    """``[N, k]`` booleans: is ``nearest[i, p]`` k-reciprocal, i.e. does its own first ``k`` hold ``i``."""
    forward = nearest[:, :k]
    backward = forward[forward]  # [N, k, k]: the first k neighbours of each of i's first k
    own = torch.arange(len(nearest)).view(-1, 1, 1)
    return (backward == own).any(dim=2)


def _expansion_pairs(nearest: Tensor, k1: int) -> tuple[Tensor, Tensor]:
    """Unique ``(i, j)`` pairs, sorted, with ``j`` in the expanded k-reciprocal set ``R*(i)``."""
    n = len(nearest)
    k = min(k1 + 1, n)
    k_half = min(int(round(k1 / 2)) + 1, n)  # round half to even, like numpy.around
    forward = nearest[:, :k]
    reciprocal = _reciprocal_mask(nearest, k)
    forward_half = nearest[:, :k_half]
    reciprocal_half = _reciprocal_mask(nearest, k_half)

    row_ids = torch.arange(n).unsqueeze(1)
    reciprocal_keys = torch.sort((row_ids * n + forward)[reciprocal]).values  # pairs (i, j in R(i)), as i*N + j
    if len(reciprocal_keys) == 0:  # only possible with heavily duplicated features
        return reciprocal_keys, reciprocal_keys
    members = forward_half[forward]  # [N, k, k_half]: R(c, k1/2) before masking, c = the p-th neighbour of i
    member_mask = reciprocal_half[forward]
    member_keys = row_ids.unsqueeze(2) * n + members
    at = torch.searchsorted(reciprocal_keys, member_keys).clamp_max_(len(reciprocal_keys) - 1)
    in_reciprocal_set = (reciprocal_keys[at] == member_keys) & member_mask
    overlap = in_reciprocal_set.sum(dim=2)
    size = member_mask.sum(dim=2)
    # |R(c) & R(i)| > 2/3 |R(c)|, in integers so no float rounding can flip the comparison.
    accepted = reciprocal & (3 * overlap > 2 * size)
    expansion_keys = member_keys[accepted.unsqueeze(2) & member_mask]
    unique = torch.unique(torch.cat([reciprocal_keys, expansion_keys]))
    return unique // n, unique % n


def _pair_distances(features: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Squared distances ``[P]`` between the feature rows of each ``(rows[p], cols[p])`` pair."""
    squared_norms = features.pow(2).sum(dim=1)
    out = torch.empty(len(rows))
    for start in range(0, len(rows), _PAIR_CHUNK):
        r, c = rows[start : start + _PAIR_CHUNK], cols[start : start + _PAIR_CHUNK]
        dot = (features[r] * features[c]).sum(dim=1)
        out[start : start + _PAIR_CHUNK] = (squared_norms[r] + squared_norms[c] - 2.0 * dot).clamp_min_(0.0)
    return out


def _encoding(features: Tensor, neighbours: _Neighbours, k1: int) -> _SparseRows:
    """``V``: Gaussian-kernel weights of the expanded k-reciprocal set, each row summing to one."""
    nearest, nearest_dist, row_max = neighbours
    n = len(nearest)
    rows, cols = _expansion_pairs(nearest, k1)
    # Most expansion pairs are among a row's nearest, whose distances the first pass kept; compute the rest.
    pool_keys, order = torch.sort((torch.arange(n).unsqueeze(1) * n + nearest).view(-1))
    pair_keys = rows * n + cols
    at = torch.searchsorted(pool_keys, pair_keys).clamp_max_(len(pool_keys) - 1)
    known = pool_keys[at] == pair_keys
    dist = torch.where(known, nearest_dist.view(-1)[order[at]], 0.0)
    unknown = torch.nonzero(~known).squeeze(1)
    dist[unknown] = _pair_distances(features, rows[unknown], cols[unknown])
    weights = torch.exp(-dist / row_max[rows])
    totals = torch.zeros(n).index_add_(0, rows, weights)
    return _SparseRows(rows, cols, weights / totals[rows])


def _local_query_expansion(v: _SparseRows, nearest: Tensor, k2: int) -> _SparseRows:
    """Row ``i`` becomes the mean of the rows of ``V`` of its ``k2`` nearest images (itself included)."""
    n = len(nearest)
    k2 = min(k2, nearest.shape[1])  # fewer than k2 images in all: average over all of them
    sources = nearest[:, :k2].reshape(-1)  # [N * k2]; entry s feeds output row s // k2
    counts = torch.bincount(v.rows, minlength=n)
    row_start = counts.cumsum(0) - counts
    lengths = counts[sources]
    segment = torch.repeat_interleave(torch.arange(len(sources)), lengths)
    offset_in_segment = torch.arange(len(segment)) - (lengths.cumsum(0) - lengths)[segment]
    entries = row_start[sources][segment] + offset_in_segment
    out_rows = segment // k2
    keys, inverse = torch.unique(out_rows * n + v.cols[entries], return_inverse=True)
    values = torch.zeros(len(keys)).index_add_(0, inverse, v.values[entries] / k2)
    return _SparseRows(keys // n, keys % n, values)


def _shared_mass(v: _SparseRows, num_query: int, num_gallery: int) -> Tensor:
    """``[Q, G]`` of ``sum_k min(V_ik, V_jk)`` between query rows (``< Q``) and gallery rows (``>= Q``) of ``V``.

    A sparse join on the column ``k``: each query entry meets every gallery entry of its column.
    """
    is_query = v.rows < num_query
    q_rows, q_cols, q_vals = v.rows[is_query], v.cols[is_query], v.values[is_query]  # sorted by row
    by_column = torch.argsort(v.cols[~is_query], stable=True)
    g_cols = v.cols[~is_query][by_column]
    g_index = (v.rows[~is_query] - num_query)[by_column]
    g_vals = v.values[~is_query][by_column]
    g_counts = torch.bincount(g_cols, minlength=num_query + num_gallery)
    g_start = g_counts.cumsum(0) - g_counts

    shared = torch.zeros(num_query * num_gallery)
    partners = g_counts[q_cols]
    ends = partners.cumsum(0)
    start = 0
    while start < len(q_rows):
        # The next chunk: as many query entries as keep it near _JACCARD_CHUNK pairs (at least one). Query
        # entries come row by row, so a chunk adds into consecutive rows of ``shared``.
        done = int(ends[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(ends, done + _JACCARD_CHUNK, right=True)), start + 1)
        lengths = partners[start:stop]
        # Pair p of entry e reads gallery entry g_start[col_e] + (p - first pair of e).
        shift = g_start[q_cols[start:stop]] - (lengths.cumsum(0) - lengths)
        partner = torch.arange(int(lengths.sum())).add_(torch.repeat_interleave(shift, lengths))
        flat = torch.repeat_interleave(q_rows[start:stop] * num_gallery, lengths).add_(g_index[partner])
        values = torch.minimum(torch.repeat_interleave(q_vals[start:stop], lengths), g_vals[partner])
        shared.index_add_(0, flat, values)
        start = stop
    return shared.view(num_query, num_gallery)


@torch.no_grad()
def k_reciprocal_rerank(
    query_features: Tensor,
    gallery_features: Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    block_size: int = 2048,
) -> Tensor:
    """Re-ranked query x gallery distance ``[Q, G]`` (float32, in [0, 1]) from features ``[Q, D]`` and ``[G, D]``.

    ``(1 - lambda) * Jaccard + lambda * original``; see the module docstring for the definitions.
    One ``block_size`` x ``block_size`` block of the ``N x N`` distances exists at a time.
    """
    if query_features.dim() != 2 or gallery_features.dim() != 2:
        raise EcnreidError(
            f"re-ranking features must be 2-D [N, D]; got query {tuple(query_features.shape)}, "
            f"gallery {tuple(gallery_features.shape)}"
        )
    if query_features.shape[1] != gallery_features.shape[1]:
        raise EcnreidError(
            f"re-ranking features differ in dimension: query {query_features.shape[1]}, "
            f"gallery {gallery_features.shape[1]}"
        )
    if len(query_features) == 0 or len(gallery_features) == 0:
        raise EcnreidError("re-ranking needs at least one query and one gallery feature")
    if k1 < 1 or k2 < 1 or block_size < 1:
        raise EcnreidError(f"re-ranking k1, k2 and block_size must be at least 1; got {k1}, {k2}, {block_size}")
    if not 0.0 <= lambda_value <= 1.0:
        raise EcnreidError(f"re-ranking lambda_value must lie in [0, 1], got {lambda_value}")

    num_query = len(query_features)
    features = F.normalize(torch.cat([query_features, gallery_features]).float().cpu(), dim=1)
    pool = min(max(k1 + 1, k2), len(features))
    neighbours, original = _neighbours(features, pool, num_query, block_size)
    v = _encoding(features, neighbours, k1)
    if k2 > 1:
        v = _local_query_expansion(v, neighbours.indices, k2)
    # Rows of V sum to one only up to rounding, so two equal rows can share 1 + 1e-7: capping the shared mass
    # at 1 keeps the Jaccard distance in [0, 1] as defined, and with it the result.
    shared = _shared_mass(v, num_query, len(gallery_features)).clamp_max_(1.0)
    # Jaccard = 1 - shared / (2 - shared); the result is lambda * original + (1 - lambda) * Jaccard, in place.
    ratio = shared.div_(2.0 - shared)
    return original.mul_(lambda_value).add_(1.0 - lambda_value).sub_(ratio, alpha=1.0 - lambda_value)
