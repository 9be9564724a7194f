"""The re-ID ranking protocol: CMC, mAP (non-interpolated) and mINP (Market-1501's protocol, Zheng et al., ICCV 2015).

Rules, for each query:

- gallery entries with the query's person id **and** camera are removed from its ranking, and so are
  gallery entries with person id -1 (junk); id 0 (distractors) is an ordinary negative;
- the true matches are the remaining entries with the query's person id;
- a query with no true match left is counted in ``num_queries`` but left out of every average;
- ties: the ranking is a *stable* sort by distance, so among equal distances the smaller gallery index
  comes first; distances are compared as float32 (``-0.0`` equals ``0.0``) and NaN ranks last.

With ``p_1 < ... < p_n`` the 1-based positions of the ``n`` true matches in the filtered ranking:
CMC rank-k is ``[p_1 <= k]``, AP is ``mean_m(m / p_m)`` and INP is ``n / p_n`` (Ye et al., TPAMI 2021).

``evaluate_ranking`` never sorts a whole row: only the true matches' positions are needed, and the position
of a match is the number of kept entries ranked at or before it. Per query the matches' (distance, index)
keys are sorted here; ``positions.match_positions`` then counts, in one compiled pass per row, the entries
before each match (a histogram over a monotone map of the distance, exact comparisons within a match's
cell), so the cost no longer follows how deep the last match sits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from ecnreid.errors import EcnreidError
from ecnreid.evaluation.positions import match_positions

IdArray = Tensor | np.ndarray | Sequence[int]

# Distance elements per step; bounds the per-step [rows, matches] tensors (more only saves Python overhead).
_BLOCK_ELEMENTS = 1 << 24
_MAGNITUDE = 0x7FFFFFFF


@dataclass
class RankingResult:
    """CMC (``cmc[k-1]`` = rank-k, fractions), mAP and mINP over the queries that have a true match."""

    cmc: list[float]
    mAP: float
    mINP: float
    num_valid_queries: int
    num_queries: int

    def as_dict(self) -> dict[str, float | int | list[float]]:
        """rank1/rank5/rank10 (those within ``max_rank``), mAP, mINP as fractions, the counts and full CMC."""
        out: dict[str, float | int | list[float]] = {
            f"rank{k}": self.cmc[k - 1] for k in (1, 5, 10) if k <= len(self.cmc)
        }
        out.update(asdict(self))
        return out


def _as_ids(values: IdArray, name: str) -> Tensor:
    ids = torch.as_tensor(np.asarray(values) if not isinstance(values, Tensor) else values)
    if ids.dim() != 1:
        raise ValueError(f"evaluation {name} must be 1-D, got shape {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"evaluation {name} must hold integers, got {ids.dtype}")
    return ids.to(device="cpu", dtype=torch.int64)


def _monotone_bits(values: Tensor) -> Tensor:
    """int32 whose order is the float32 order of ``values`` (NaN excluded); ``-0.0`` and ``0.0`` map to 0.

    A negative float becomes minus its magnitude bits, a non-negative one keeps its bits.
    """
    bits = values.view(torch.int32)
    sign = bits >> 31  # 0 for non-negative, -1 for negative
    return ((bits & _MAGNITUDE) ^ sign) - sign  # conditional negation in two's complement


def _cells_per_row(num_gallery: int) -> int:
    """Cells of a row's histogram: a few entries per cell, so few share a match's cell, and a small histogram."""
    return min(max(16, num_gallery // 8), 1 << 22)


class RankingAccumulator:
    """Accumulate per-query match positions from distance blocks; ``result()`` gives the metrics.

    Feed it ``add(row_offset, block)`` with ``block`` = ``distmat[offset:offset + B]`` (``[B, G]``);
    every query row must arrive exactly once, in any order.
    """

    def __init__(
        self,
        query_pids: IdArray,
        gallery_pids: IdArray,
        query_camids: IdArray,
        gallery_camids: IdArray,
        max_rank: int = 50,
    ) -> None:
        self.query_pids = _as_ids(query_pids, "query_pids")
        self.query_camids = _as_ids(query_camids, "query_camids")
        self.gallery_pids = _as_ids(gallery_pids, "gallery_pids")
        self.gallery_camids = _as_ids(gallery_camids, "gallery_camids")
        if len(self.query_pids) != len(self.query_camids):
            raise ValueError(
                f"evaluation has {len(self.query_pids)} query pids but {len(self.query_camids)} query camids"
            )
        if len(self.gallery_pids) != len(self.gallery_camids):
            raise ValueError(
                f"evaluation has {len(self.gallery_pids)} gallery pids but {len(self.gallery_camids)} gallery camids"
            )
        if len(self.gallery_pids) == 0:
            raise ValueError("evaluation gallery is empty")
        if max_rank < 1:
            raise ValueError(f"evaluation max_rank must be at least 1, got {max_rank}")
        self.max_rank = max_rank
        num_queries = len(self.query_pids)
        # Each query's same-pid gallery entries, via the gallery sorted by pid: [start, end) of its group.
        self._gallery_by_pid = torch.argsort(self.gallery_pids, stable=True)
        sorted_pids = self.gallery_pids[self._gallery_by_pid]
        self._group_start = torch.searchsorted(sorted_pids, self.query_pids)
        self._group_size = torch.searchsorted(sorted_pids, self.query_pids, right=True) - self._group_start
        self._junk = self.gallery_pids == -1
        self._first_position = torch.zeros(num_queries, dtype=torch.int64)
        self._average_precision = torch.zeros(num_queries, dtype=torch.float64)
        self._inverse_negative_penalty = torch.zeros(num_queries, dtype=torch.float64)
        self._seen = torch.zeros(num_queries, dtype=torch.bool)

    def add(self, row_offset: int, block: Tensor) -> None:
        """Record the match positions of queries ``row_offset .. row_offset + B - 1`` from ``[B, G]``."""
        num_gallery = len(self.gallery_pids)
        if block.dim() != 2 or block.shape[1] != num_gallery:
            raise ValueError(
                f"evaluation distance block has shape {tuple(block.shape)}; expected [rows, {num_gallery}]"
            )
        if row_offset < 0 or row_offset + block.shape[0] > len(self.query_pids):
            raise ValueError(
                f"evaluation distance block rows {row_offset}..{row_offset + block.shape[0]} fall outside "
                f"the {len(self.query_pids)} queries"
            )
        rows_per_step = max(1, _BLOCK_ELEMENTS // num_gallery)
        block = block.detach().to(device="cpu", dtype=torch.float32)
        for start in range(0, block.shape[0], rows_per_step):
            self._add_rows(row_offset + start, block[start : start + rows_per_step].contiguous())

    def _add_rows(self, offset: int, dist: Tensor) -> None:
        num_rows, num_gallery = dist.shape
        queries = slice(offset, offset + num_rows)
        if self._seen[queries].any():
            raise ValueError(f"evaluation distance rows from {offset} were given twice")
        self._seen[queries] = True

        # Same-pid gallery entries of each query, padded to the largest group in these rows: [B, P].
        sizes = self._group_size[queries]
        width = max(int(sizes.max()), 1)
        slot = torch.arange(width)
        in_group = slot < sizes.unsqueeze(1)
        group_pos = (self._group_start[queries].unsqueeze(1) + slot).clamp_max(num_gallery - 1)
        cols = self._gallery_by_pid[group_pos]
        same_camera = self.gallery_camids[cols] == self.query_camids[queries].unsqueeze(1)
        is_match = in_group & ~same_camera & (self.gallery_pids[cols] != -1)
        # Junk pids are taken out once, with the junk columns, even when a query's own pid is -1.
        removed = in_group & ~is_match & (self.gallery_pids[cols] != -1)
        num_matches = is_match.sum(dim=1)
        valid = num_matches > 0
        if not bool(valid.any()):
            return

        match_dist = dist.gather(1, cols)
        if bool(torch.isnan(match_dist[is_match]).any()):
            raise EcnreidError(f"evaluation distance rows from {offset} hold NaN at a true match")
        # Matches in rank order: an exact, tie-aware (float32 distance, column) key; non-matches sort last.
        keys = _monotone_bits(match_dist).to(torch.int64) * num_gallery + cols
        order = torch.where(is_match, keys, (_MAGNITUDE + 1) * num_gallery).argsort(dim=1)
        matched = slot.unsqueeze(0) < num_matches.unsqueeze(1)  # slot m: the row's (m+1)-th match, in rank order
        positions = match_positions(
            dist,
            torch.where(matched, cols.gather(1, order), -1),
            num_matches,
            self._junk,
            torch.where(removed, cols, -1),
            _cells_per_row(num_gallery),
        )

        ordinal = torch.arange(1, width + 1, dtype=torch.float64)
        precision = torch.where(matched, ordinal / positions.clamp_min(1), torch.zeros((), dtype=torch.float64))
        n = num_matches.clamp_min(1)
        last_position = positions.gather(1, (n - 1).unsqueeze(1)).squeeze(1).clamp_min(1)
        self._first_position[queries] = torch.where(valid, positions[:, 0], 0)
        self._average_precision[queries] = torch.where(valid, precision.sum(dim=1) / n, 0.0)
        self._inverse_negative_penalty[queries] = torch.where(valid, n.double() / last_position, 0.0)

    def result(self) -> RankingResult:
        """Average over valid queries; raises if a query row was never added or no query has a match."""
        missing = torch.nonzero(~self._seen).squeeze(1)
        if len(missing):
            raise ValueError(
                f"evaluation is missing distance rows for {len(missing)} queries (first: {int(missing[0])})"
            )
        valid = self._first_position > 0
        num_valid = int(valid.sum())
        if num_valid == 0:
            raise EcnreidError("evaluation has no query with a true match in the gallery (other camera)")
        first = self._first_position[valid]
        hits = torch.bincount(first.clamp_max(self.max_rank + 1), minlength=self.max_rank + 2)
        cmc = hits[1 : self.max_rank + 1].cumsum(0).double() / num_valid
        return RankingResult(
            cmc=cmc.tolist(),
            mAP=float(self._average_precision[valid].mean()),
            mINP=float(self._inverse_negative_penalty[valid].mean()),
            num_valid_queries=num_valid,
            num_queries=len(self.query_pids),
        )


def evaluate_blocks(
    blocks: Iterable[tuple[int, Tensor]],
    query_pids: IdArray,
    gallery_pids: IdArray,
    query_camids: IdArray,
    gallery_camids: IdArray,
    max_rank: int = 50,
) -> RankingResult:
    """Metrics from ``(row_offset, distance block)`` pairs, e.g. ``iter_distance_blocks``, never the full matrix."""
    accumulator = RankingAccumulator(query_pids, gallery_pids, query_camids, gallery_camids, max_rank)
    for offset, block in blocks:
        accumulator.add(offset, block)
    return accumulator.result()


def evaluate_ranking(
    distmat: Tensor,
    query_pids: IdArray,
    gallery_pids: IdArray,
    query_camids: IdArray,
    gallery_camids: IdArray,
    max_rank: int = 50,
) -> RankingResult:
    """CMC, mAP and mINP of a query-gallery distance matrix ``[Q, G]`` under the protocol above."""
    distmat = torch.as_tensor(distmat)
    if distmat.dim() != 2 or distmat.shape[0] != len(query_pids):
        raise ValueError(
            f"evaluation distance matrix has shape {tuple(distmat.shape)}; expected [{len(query_pids)}, gallery]"
        )
    return evaluate_blocks([(0, distmat)], query_pids, gallery_pids, query_camids, gallery_camids, max_rank)
