"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), vectorised, sparse and blocked so it runs on a whole MSMT17 test set in bounded memory.

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
``V``). Neither the ``N x N`` nor the ``Q x G`` matrix is ever held: one pass over the upper-triangle blocks
of the ``N x N`` squared distances keeps only each row's nearest neighbours, their distances and the row
maximum; then ``iter_rerank_blocks`` builds the result ``block_size`` query rows at a time (the original part
recomputed from the features, the Jaccard part from ``V``), so a consumer such as ``evaluate_blocks`` sees
one ``[block_size, G]`` block at a time. Everything runs on the features' device.
Among exactly equal distances the neighbour order is ``topk``'s, i.e. unspecified.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

# Pairs gathered at once when computing exact distances of expansion pairs (each pair reads 2 x D floats).
_PAIR_CHUNK = 1 << 14
# Query x gallery (min, min) products accumulated at once in the Jaccard step.
_JACCARD_CHUNK = 1 << 23
# (source row, entry) pairs of V gathered at once by the local query expansion.
_EXPANSION_CHUNK = 1 << 22
# Elements of a query block combined at once into the final distance (bounds the temporaries).
_COMBINE_CHUNK = 1 << 22
# Most elements of one yielded query block (256 MiB in float32): on MSMT17 (G = 82,161) 816 query rows.
_QUERY_BLOCK_ELEMENTS = 1 << 26


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


class _GalleryColumns(NamedTuple):
    """The gallery rows of ``V`` grouped by column ``k``: entries ``start[k] .. start[k] + count[k] - 1``."""

    start: Tensor
    count: Tensor
    gallery_index: Tensor
    values: Tensor


def _squared_distances(rows: Tensor, rows_sq: Tensor, cols: Tensor, cols_sq: Tensor) -> Tensor:
    """``[R, C]`` squared distances from features and their squared norms, clamped at zero (rounding)."""
    dist = torch.addmm(cols_sq.unsqueeze(0), rows, cols.T, alpha=-2.0)
    return dist.add_(rows_sq.unsqueeze(1)).clamp_min_(0.0)


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


def _neighbours(features: Tensor, squared_norms: Tensor, pool: int, block_size: int) -> _Neighbours:
    """One pass over the squared distances of all ``N`` images, keeping each row's ``pool`` nearest and its
    maximum.

    The matrix is symmetric, so only blocks on and above the diagonal are computed; each off-diagonal block
    also serves, transposed, the rows of its columns.
    """
    n, device = features.shape[0], features.device
    best = _Neighbours(
        torch.zeros(n, pool, dtype=torch.int64, device=device),
        torch.full((n, pool), torch.inf, device=device),
        torch.zeros(n, device=device),
    )
    starts = range(0, n, block_size)
    for a in starts:
        rows = slice(a, min(a + block_size, n))
        for b in starts[a // block_size :]:
            cols = slice(b, min(b + block_size, n))
            dist = _squared_distances(features[rows], squared_norms[rows], features[cols], squared_norms[cols])
            _merge_nearest(best, rows, dist, b)
            if b != a:
                _merge_nearest(best, cols, dist.T.contiguous(), a)
    # A row of identical features has maximum 0; keep the division finite.
    best.row_max.clamp_min_(torch.finfo(torch.float32).tiny)
    return best


def _reciprocal_mask(nearest: Tensor, k: int) -> Tensor:
    """``[N, k]`` booleans: is ``nearest[i, p]`` k-reciprocal, i.e. does its own first ``k`` hold ``i``."""
    forward = nearest[:, :k]
    backward = forward[forward]  # [N, k, k]: the first k neighbours of each of i's first k
    own = torch.arange(len(nearest), device=nearest.device).view(-1, 1, 1)
    return (backward == own).any(dim=2)


def _expansion_pairs(nearest: Tensor, k: int, k_half: int) -> tuple[Tensor, Tensor]:
    """Unique ``(i, j)`` pairs, sorted, with ``j`` in the expanded k-reciprocal set ``R*(i)``, from neighbour
    lists of ``k`` images (itself included) and, for the expansion, of ``k_half`` images."""
    n = len(nearest)
    forward = nearest[:, :k]
    reciprocal = _reciprocal_mask(nearest, k)
    forward_half = nearest[:, :k_half]
    reciprocal_half = _reciprocal_mask(nearest, k_half)

    row_ids = torch.arange(n, device=nearest.device).unsqueeze(1)
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


def _pair_distances(features: Tensor, squared_norms: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Squared distances ``[P]`` between the feature rows of each ``(rows[p], cols[p])`` pair."""
    out = torch.empty(len(rows), device=features.device)
    for start in range(0, len(rows), _PAIR_CHUNK):
        r, c = rows[start : start + _PAIR_CHUNK], cols[start : start + _PAIR_CHUNK]
        dot = (features[r] * features[c]).sum(dim=1)
        out[start : start + _PAIR_CHUNK] = (squared_norms[r] + squared_norms[c] - 2.0 * dot).clamp_min_(0.0)
    return out


def _encoding(
    features: Tensor, squared_norms: Tensor, neighbours: _Neighbours, k: int, k_half: int, scale_by_row_max: bool
) -> _SparseRows:
    """``V``: Gaussian-kernel weights ``exp(-d(i, j))`` of the expanded k-reciprocal set, each row summing to one;
    ``d`` is the squared distance, divided by the row maximum when ``scale_by_row_max`` (CVPR 2017)."""
    nearest, nearest_dist, row_max = neighbours
    n = len(nearest)
    rows, cols = _expansion_pairs(nearest, k, k_half)
    # Most expansion pairs are among a row's nearest, whose distances the first pass kept; compute the rest.
    pool_keys, order = torch.sort((torch.arange(n, device=nearest.device).unsqueeze(1) * n + nearest).view(-1))
    pair_keys = rows * n + cols
    at = torch.searchsorted(pool_keys, pair_keys).clamp_max_(len(pool_keys) - 1)
    known = pool_keys[at] == pair_keys
    dist = torch.where(known, nearest_dist.view(-1)[order[at]], 0.0)
    unknown = torch.nonzero(~known).squeeze(1)
    dist[unknown] = _pair_distances(features, squared_norms, rows[unknown], cols[unknown])
    weights = torch.exp(-dist / row_max[rows]) if scale_by_row_max else torch.exp(-dist)
    totals = torch.zeros(n, device=weights.device).index_add_(0, rows, weights)
    return _SparseRows(rows, cols, weights / totals[rows])


def _local_query_expansion(v: _SparseRows, nearest: Tensor, k2: int) -> _SparseRows:
    """Row ``i`` becomes the mean of the rows of ``V`` of its ``k2`` nearest images (itself included).

    Output rows are built in chunks of about ``_EXPANSION_CHUNK`` gathered entries, so the temporaries stay
    bounded on MSMT17-sized problems; chunks hold whole rows, so concatenating them keeps the (row, column) order.
    """
    n, device = len(nearest), nearest.device
    k2 = min(k2, nearest.shape[1])  # fewer than k2 images in all: average over all of them
    counts = torch.bincount(v.rows, minlength=n)
    row_start = counts.cumsum(0) - counts
    gathered_per_row = counts[nearest[:, :k2]].sum(dim=1).cumsum(0)  # entries gathered by output rows 0..i
    parts: list[_SparseRows] = []
    first = 0
    while first < n:
        done = int(gathered_per_row[first - 1]) if first else 0
        last = max(int(torch.searchsorted(gathered_per_row, done + _EXPANSION_CHUNK, right=True)), first + 1)
        sources = nearest[first:last, :k2].reshape(-1)  # entry s feeds output row first + s // k2
        lengths = counts[sources]
        segment = torch.repeat_interleave(torch.arange(len(sources), device=device), lengths)
        offset_in_segment = torch.arange(len(segment), device=device) - (lengths.cumsum(0) - lengths)[segment]
        entries = row_start[sources][segment] + offset_in_segment
        out_rows = segment // k2 + first
        keys, inverse = torch.unique(out_rows * n + v.cols[entries], return_inverse=True)
        values = torch.zeros(len(keys), device=device).index_add_(0, inverse, v.values[entries] / k2)
        parts.append(_SparseRows(keys // n, keys % n, values))
        first = last
    return _SparseRows(*(torch.cat(field) for field in zip(*parts, strict=True)))


def _gallery_columns(v: _SparseRows, num_query: int, n: int) -> _GalleryColumns:
    """The gallery rows (``>= Q``) of ``V`` ``[N, N]``, regrouped by column for the query x gallery join."""
    is_gallery = v.rows >= num_query
    by_column = torch.argsort(v.cols[is_gallery], stable=True)
    count = torch.bincount(v.cols[is_gallery], minlength=n)
    return _GalleryColumns(
        start=count.cumsum(0) - count,
        count=count,
        gallery_index=(v.rows[is_gallery] - num_query)[by_column],
        values=v.values[is_gallery][by_column],
    )


def _shared_mass(
    query: _SparseRows, gallery: _GalleryColumns, row_offset: int, num_rows: int, num_gallery: int
) -> Tensor:
    """``[num_rows, G]`` of ``sum_k min(V_ik, V_jk)`` for query rows ``row_offset ..`` (their ``V`` entries in
    ``query``) against every gallery row ``j``.

    A sparse join on the column ``k``: each query entry meets every gallery entry of its column.
    """
    shared = torch.zeros(num_rows * num_gallery, device=query.values.device)
    partners = gallery.count[query.cols]
    ends = partners.cumsum(0)
    start = 0
    while start < len(query.rows):
        # The next chunk: as many query entries as keep it near _JACCARD_CHUNK pairs (at least one). Query
        # entries come row by row, so a chunk adds into consecutive rows of ``shared``.
        done = int(ends[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(ends, done + _JACCARD_CHUNK, right=True)), start + 1)
        lengths = partners[start:stop]
        total = int(ends[stop - 1]) - done
        # Pair p of entry e reads gallery entry start[col_e] + (p - first pair of e).
        shift = gallery.start[query.cols[start:stop]] - (lengths.cumsum(0) - lengths)
        partner = torch.arange(total, device=shared.device).add_(
            torch.repeat_interleave(shift, lengths, output_size=total)
        )
        flat = torch.repeat_interleave((query.rows[start:stop] - row_offset) * num_gallery, lengths, output_size=total)
        flat.add_(gallery.gallery_index[partner])
        values = torch.minimum(
            torch.repeat_interleave(query.values[start:stop], lengths, output_size=total), gallery.values[partner]
        )
        shared.index_add_(0, flat, values)
        start = stop
    return shared.view(num_rows, num_gallery)


def _combine(original: Tensor, shared: Tensor, lambda_value: float) -> Tensor:
    """``lambda * original + (1 - lambda) * Jaccard`` written into ``original`` ``[B, G]``, in row chunks."""
    rows_per_chunk = max(1, _COMBINE_CHUNK // max(1, original.shape[1]))
    for start in range(0, original.shape[0], rows_per_chunk):
        # Rows of V sum to one only up to rounding, so two equal rows can share 1 + 1e-7: capping the shared
        # mass at 1 keeps the Jaccard distance in [0, 1] as defined, and with it the result.
        s = shared[start : start + rows_per_chunk].clamp_max_(1.0)
        ratio = s.div_(2.0 - s)  # Jaccard = 1 - shared / (2 - shared)
        part = original[start : start + rows_per_chunk]
        part.mul_(lambda_value).add_(1.0 - lambda_value).sub_(ratio, alpha=1.0 - lambda_value)
    return original


def _check_inputs(
    query_features: Tensor, gallery_features: Tensor, k1: int, k2: int, lambda_value: float, block_size: int
) -> None:
    if query_features.dim() != 2 or gallery_features.dim() != 2:
        raise ValueError(
            f"re-ranking features must be 2-D [N, D]; got query {tuple(query_features.shape)}, "
            f"gallery {tuple(gallery_features.shape)}"
        )
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(
            f"re-ranking features differ in dimension: query {query_features.shape[1]}, "
            f"gallery {gallery_features.shape[1]}"
        )
    if query_features.device != gallery_features.device:
        raise ValueError(
            f"re-ranking features are on different devices: query {query_features.device}, "
            f"gallery {gallery_features.device}"
        )
    if len(query_features) == 0 or len(gallery_features) == 0:
        raise ValueError("re-ranking needs at least one query and one gallery feature")
    if k1 < 1 or k2 < 1 or block_size < 1:
        raise ValueError(f"re-ranking k1, k2 and block_size must be at least 1; got {k1}, {k2}, {block_size}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"re-ranking lambda_value must lie in [0, 1], got {lambda_value}")


@torch.no_grad()
def iter_rerank_blocks(
    query_features: Tensor,
    gallery_features: Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    block_size: int = 2048,
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(row_offset, re-ranked distances [B, G])``, float32 in [0, 1] on the features' device, over
    blocks of query rows, from features ``[Q, D]`` and ``[G, D]``.

    ``(1 - lambda) * Jaccard + lambda * original``; see the module docstring. The blocks feed ``evaluate_blocks``
    directly. ``B`` is ``block_size``, or fewer so that a block holds at most 2**26 distances. Memory: the
    features, the sparse ``V``, one ``block_size`` x ``block_size`` block of the ``N x N`` distances during the
    neighbour pass, then about two ``[B, G]`` buffers per yielded block. Validation happens at the first ``next()``.
    """
    _check_inputs(query_features, gallery_features, k1, k2, lambda_value, block_size)
    num_query, num_gallery = len(query_features), len(gallery_features)
    # torch.cat always copies, so normalising in place never touches the caller's tensors.
    features = torch.cat([query_features.detach().float(), gallery_features.detach().float()])
    features.div_(features.norm(dim=1, keepdim=True).clamp_min_(1e-12))  # F.normalize, without a second copy
    squared_norms = features.pow(2).sum(dim=1)
    pool = min(max(k1 + 1, k2), len(features))
    neighbours = _neighbours(features, squared_norms, pool, block_size)
    # R(i, k1) holds k1 + 1 images (itself included); R(c, k1/2) round(k1/2) + 1, rounding half to even.
    k, k_half = min(k1 + 1, len(features)), min(int(round(k1 / 2)) + 1, len(features))
    v = _encoding(features, squared_norms, neighbours, k, k_half, scale_by_row_max=True)
    if k2 > 1:
        v = _local_query_expansion(v, neighbours.indices, k2)
    gallery = _gallery_columns(v, num_query, len(features))
    rows_per_block = min(block_size, max(1, _QUERY_BLOCK_ELEMENTS // num_gallery))
    # V's entries are sorted by row: a query block's entries are one contiguous run.
    edges = torch.arange(0, num_query + rows_per_block, rows_per_block, device=v.rows.device).clamp_max_(num_query)
    bounds = torch.searchsorted(v.rows, edges).tolist()
    gallery_unit, gallery_sq = features[num_query:], squared_norms[num_query:]
    for index, start in enumerate(range(0, num_query, rows_per_block)):
        stop = min(start + rows_per_block, num_query)
        first, last = bounds[index], bounds[index + 1]
        query = _SparseRows(v.rows[first:last], v.cols[first:last], v.values[first:last])
        shared = _shared_mass(query, gallery, start, stop - start, num_gallery)
        original = _squared_distances(features[start:stop], squared_norms[start:stop], gallery_unit, gallery_sq)
        # The row maximum came from the neighbour pass's own blocks; a recomputed product can differ from it in
        # the last bit, and d <= 1 by definition.
        original.div_(neighbours.row_max[start:stop].unsqueeze(1)).clamp_max_(1.0)
        yield start, _combine(original, shared, lambda_value)
        del shared, original  # before the next block allocates its own: the consumer may still hold this one


@torch.no_grad()
def k_reciprocal_rerank(
    query_features: Tensor,
    gallery_features: Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    block_size: int = 2048,
) -> Tensor:
    """Re-ranked query x gallery distance ``[Q, G]`` (float32, in [0, 1], on the features' device) from features
    ``[Q, D]`` and ``[G, D]``: the blocks of ``iter_rerank_blocks`` in one matrix (small problems, rank lists).
    """
    _check_inputs(query_features, gallery_features, k1, k2, lambda_value, block_size)
    out = torch.empty(len(query_features), len(gallery_features), device=query_features.device)
    for start, block in iter_rerank_blocks(query_features, gallery_features, k1, k2, lambda_value, block_size):
        out[start : start + len(block)] = block
    return out


class JaccardGraph(NamedTuple):
    """The pairs ``(rows[p], cols[p])`` of ``N`` images whose Jaccard distance ``distances[p]`` is below 1
    (every other pair is at distance 1), sorted by (row, column); each image is at distance 0 from itself."""

    rows: Tensor
    cols: Tensor
    distances: Tensor
    num_images: int


@torch.no_grad()
def jaccard_graph(features: Tensor, k1: int = 30, k2: int = 6, block_size: int = 2048) -> JaccardGraph:
    """The k-reciprocal Jaccard distance among all images of ``features`` ``[N, D]``, as SpCL (Ge et al.,
    NeurIPS 2020) computes it for clustering: neighbour lists of ``k1`` images (itself included), the kernel
    ``exp(-||x_i - x_j||^2)`` on unit features without the row-maximum scaling, local query expansion over ``k2``.

    Sparse, because a pair shares mass only through common k-reciprocal neighbours; memory is ``V``, one
    ``block_size`` x ``block_size`` distance block and one bounded block of rows x ``N`` shared masses at a time.
    """
    _check_inputs(features, features, k1, k2, 0.0, block_size)
    unit = features.detach().float().clone()
    unit.div_(unit.norm(dim=1, keepdim=True).clamp_min_(1e-12))
    squared_norms = unit.pow(2).sum(dim=1)
    n = len(unit)
    k = min(k1, n)
    neighbours = _neighbours(unit, squared_norms, k, block_size)
    v = _encoding(unit, squared_norms, neighbours, k, min(int(round(k1 / 2)) + 1, k), scale_by_row_max=False)
    if k2 > 1:
        v = _local_query_expansion(v, neighbours.indices, k2)
    columns = _gallery_columns(v, 0, n)
    rows_per_block = min(block_size, max(1, _QUERY_BLOCK_ELEMENTS // 4 // n))
    edges = torch.arange(0, n + rows_per_block, rows_per_block, device=v.rows.device).clamp_max_(n)
    bounds = torch.searchsorted(v.rows, edges).tolist()
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    for index, start in enumerate(range(0, n, rows_per_block)):
        stop = min(start + rows_per_block, n)
        first, last = bounds[index], bounds[index + 1]
        block = _SparseRows(v.rows[first:last], v.cols[first:last], v.values[first:last])
        shared = _shared_mass(block, columns, start, stop - start, n).clamp_max_(1.0)
        at = torch.nonzero(shared > 0)
        mass = shared[at[:, 0], at[:, 1]]
        parts.append((at[:, 0] + start, at[:, 1], 1.0 - mass / (2.0 - mass)))
        del shared
    rows, cols, distances = (torch.cat(field) for field in zip(*parts, strict=True))
    return JaccardGraph(rows, cols, distances, n)
