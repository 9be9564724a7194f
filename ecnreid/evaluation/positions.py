"""Positions of each query's true matches in its filtered ranking, without sorting the row (compiled).

The protocol's rules are in ``metrics.py``; this module is the one step that touches every distance. For a
row whose matches are sorted by (distance, gallery index), with ``first``/``last`` their distances and ``K``
cells, each kept entry falls in cell ``trunc(1 + clamp((d - first) * K / (last - first), -1, K + 2))``. Each
step is one correctly rounded float32 operation or a clamp, so the map is non-decreasing in ``d`` on any CPU:
an entry in a lower cell than a match ranks before it, one in a higher cell after it, and a histogram counts
the former. The few entries sharing a cell with a match are compared with it exactly, (distance, index)
against (distance, index). A row whose first or last match is infinite is one cell, compared whole.

One compiled pass per row replaces about ten tensor passes (cell map, bincount, gather of the cells that hold
a match, nonzero); row ranges run in parallel on ``torch.get_num_threads()`` threads. numba compiles the loop on
first use and caches it beside this file (or in its user cache where that is read-only).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from torch import Tensor

_MATCH_MARK = -(1 << 30)


def compiled(function):
    """``numba.njit`` with an on-disk cache, or without one where numba finds no writable place for it (a
    read-only install and home): then each process compiles on first use, a few seconds, and works the same."""
    try:
        return numba.njit(cache=True, nogil=True, error_model="numpy")(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True, error_model="numpy")(function)


@compiled
def _cell(d, first, scale, whole, top):  # pragma: no cover - compiled
    if whole:
        return 0
    y = (d - first) * scale
    if not y <= top:  # NaN too: it ranks last
        y = top
    if y < np.float32(-1.0):
        y = np.float32(-1.0)
    return np.int64(y + np.float32(1.0))


@compiled
def _row_positions(
    row, slot_cols, num_matches, excluded, is_excluded, cells_per_row, histogram, first_slot, shared, out
):
    # pragma: no cover - compiled
    top = np.float32(cells_per_row + 2)
    first = row[slot_cols[0]]
    last = row[slot_cols[num_matches - 1]]
    whole = not (np.isfinite(first) and np.isfinite(last))
    scale = np.float32(0.0)
    if not whole:
        scale = np.float32(cells_per_row) / (last - first)
        if not (np.isfinite(scale) and scale > 0):
            # Any positive finite scale keeps the map monotone; this one only spreads a zero-width row.
            scale = np.float32(cells_per_row) / max(abs(first), np.float32(1.0))
    histogram[:] = 0
    first_slot[:] = -1  # per cell, the first match slot in it (slots are in rank order, so cells ascend)
    for m in range(num_matches - 1, -1, -1):
        first_slot[_cell(row[slot_cols[m]], first, scale, whole, top)] = m
    count = 0
    if whole:  # one cell: every entry is compared exactly
        histogram[0] = row.shape[0]
        shared[: row.shape[0]] = np.arange(row.shape[0])
        count = row.shape[0]
    else:
        # A match's cell starts at -2**30, so one load tells both its count and that it holds a match.
        for m in range(num_matches):
            histogram[_cell(row[slot_cols[m]], first, scale, False, top)] = _MATCH_MARK
        for g in range(row.shape[0]):
            cell = _cell(row[g], first, scale, False, top)
            seen = histogram[cell]
            histogram[cell] = seen + 1
            if seen < 0:
                shared[count] = g
                count += 1
        for m in range(num_matches):
            cell = _cell(row[slot_cols[m]], first, scale, False, top)
            if histogram[cell] < 0:
                histogram[cell] -= _MATCH_MARK
    # Entries out of the ranking were counted with the rest (one branch less per entry); take them back out.
    for g in excluded:
        histogram[_cell(row[g], first, scale, whole, top)] -= 1
    below = 0
    cell = 0
    for m in range(num_matches):
        match_cell = _cell(row[slot_cols[m]], first, scale, whole, top)
        while cell < match_cell:
            below += histogram[cell]
            cell += 1
        out[m] = below + 1
    # Entries of lower cells are in ``below``; one sharing a match's cell counts if its key is smaller.
    for i in range(count):
        g = shared[i]
        if is_excluded[g]:
            continue
        d = row[g]
        cell = _cell(d, first, scale, whole, top)
        m = first_slot[cell]
        while m < num_matches:
            col = slot_cols[m]
            dm = row[col]
            if _cell(dm, first, scale, whole, top) != cell:
                break
            if d < dm or (d == dm and g < col):
                out[m] += 1
            m += 1


@compiled
def _rows_positions(dist, slot_cols, num_matches, junk, removed_cols, cells_per_row, start, end, positions):
    # pragma: no cover - compiled
    histogram = np.zeros(cells_per_row + 4, np.int32)
    first_slot = np.empty(cells_per_row + 4, np.int32)
    shared = np.empty(dist.shape[1], np.int64)
    junk_cols = np.flatnonzero(junk)
    excluded = np.empty(len(junk_cols) + removed_cols.shape[1], np.int64)
    excluded[: len(junk_cols)] = junk_cols
    is_excluded = junk.copy()
    for r in range(start, end):
        if num_matches[r] == 0:
            continue
        # Junk columns leave every ranking; a removed column (same pid and camera, never junk) leaves row r's.
        count = len(junk_cols)
        for col in removed_cols[r]:
            if col >= 0:
                excluded[count] = col
                is_excluded[col] = True
                count += 1
        _row_positions(
            dist[r],
            slot_cols[r],
            num_matches[r],
            excluded[:count],
            is_excluded,
            cells_per_row,
            histogram,
            first_slot,
            shared,
            positions[r],
        )
        is_excluded[excluded[len(junk_cols) : count]] = False


def match_positions(
    dist: Tensor, slot_cols: Tensor, num_matches: Tensor, junk: Tensor, removed_cols: Tensor, cells_per_row: int
) -> Tensor:
    """``[B, P]`` int64 1-based positions of each row's matches among its kept entries (0 past its matches).

    ``dist`` ``[B, G]`` float32; ``slot_cols`` ``[B, P]`` the matches' gallery columns sorted by (distance,
    column), the first ``num_matches[r]`` valid; ``junk`` ``[G]`` bool columns out of every ranking;
    ``removed_cols`` ``[B, R]`` further columns out of row ``r``'s ranking, -1 where none.
    """
    positions = torch.zeros(slot_cols.shape, dtype=torch.int64)
    arrays = (dist.numpy(), slot_cols.numpy(), num_matches.numpy(), junk.numpy(), removed_cols.numpy())
    num_rows = len(dist)
    threads = max(1, min(torch.get_num_threads(), num_rows))
    # The loop releases the GIL, so plain threads run row ranges in parallel (as torch's own threads would).
    bounds = [(num_rows * i // threads, num_rows * (i + 1) // threads) for i in range(threads)]
    if threads == 1:
        _rows_positions(*arrays, cells_per_row, 0, num_rows, positions.numpy())
        return positions
    with ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(_rows_positions, *arrays, cells_per_row, a, b, positions.numpy()) for a, b in bounds]:
            done.result()
    return positions
