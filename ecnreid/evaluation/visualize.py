"""Rank-list pictures: a query next to its top-k gallery images, true matches framed green, others red.

The ranking follows the evaluation protocol (``ecnreid.evaluation.metrics``): gallery images with the
query's person id and camera, and gallery images with id -1, are left out of each query's list.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ecnreid.data.records import ImageRecord
from ecnreid.io import atomic_save_image

# Layout, in pixels. A slot is one framed tile; slot 0 is the query, slots 1..top_k the ranked gallery.
TILE_W, TILE_H = 64, 128  # every image is resized to this
FRAME = 4  # frame width around each tile
SLOT_W, SLOT_H = TILE_W + 2 * FRAME, TILE_H + 2 * FRAME
GAP = 6  # between two gallery slots
QUERY_GAP = 22  # between the query and rank 1 (a separator line runs through it)
MARGIN = 10  # around the whole picture
CAPTION_H = 26  # query file name, above the tiles
LABEL_H = 34  # rank and distance, under each tile

BACKGROUND = (255, 255, 255)
QUERY_COLOR = (40, 40, 40)
MATCH_COLOR = (0, 170, 60)
WRONG_COLOR = (220, 30, 30)
PLACEHOLDER_COLOR = (175, 175, 175)
PLACEHOLDER_CROSS = (110, 110, 110)
TEXT_COLOR = (30, 30, 30)

_QUERY_CHUNK = 1024  # rows of the (queries x gallery) masks built at once, to bound memory on MSMT17


@functools.lru_cache(maxsize=16)
def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font at ``size`` pixels (the fixed bitmap font if FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def text_size(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> tuple[int, int]:
    """Width and height in pixels of ``text`` drawn at the origin with ``font``."""
    left, top, right, bottom = font.getbbox(text)
    return int(math.ceil(right - min(left, 0))), int(math.ceil(bottom - min(top, 0)))


def rank_list_size(top_k: int) -> tuple[int, int]:
    """Width and height of a rank-list picture with ``top_k`` gallery slots."""
    width = 2 * MARGIN + (1 + top_k) * SLOT_W + QUERY_GAP + max(top_k - 1, 0) * GAP
    return width, MARGIN + CAPTION_H + SLOT_H + LABEL_H + MARGIN


def slot_origin(slot: int) -> tuple[int, int]:
    """Top-left pixel of the frame of ``slot`` (0 = query, k = rank k)."""
    x = MARGIN if slot == 0 else MARGIN + SLOT_W + QUERY_GAP + (slot - 1) * (SLOT_W + GAP)
    return x, MARGIN + CAPTION_H


def valid_query_mask(query: Sequence[ImageRecord], gallery: Sequence[ImageRecord]) -> torch.Tensor:
    """Bool [Q]: the query keeps at least one true match (same id, other camera) in the gallery."""
    q_pids = torch.tensor([r.pid for r in query], dtype=torch.long)
    q_cams = torch.tensor([r.camid for r in query], dtype=torch.long)
    g_pids = torch.tensor([r.pid for r in gallery], dtype=torch.long)
    g_cams = torch.tensor([r.camid for r in gallery], dtype=torch.long)
    g_pids = torch.where(g_pids == -1, torch.full_like(g_pids, -2), g_pids)  # -1 never matches anything
    valid = torch.zeros(len(query), dtype=torch.bool)
    for start in range(0, len(query), _QUERY_CHUNK):
        stop = start + _QUERY_CHUNK
        same_pid = q_pids[start:stop, None] == g_pids[None, :]
        other_cam = q_cams[start:stop, None] != g_cams[None, :]
        valid[start:stop] = (same_pid & other_cam).any(dim=1)
    return valid


def pick_queries(valid: torch.Tensor, num_queries: int, seed: int = 0) -> list[int]:
    """Indices of ``num_queries`` valid queries spread evenly over the query list.

    The valid queries are cut into ``num_queries`` equal stretches and one is taken from each, at the same
    relative offset (drawn from ``seed``), so the pick is deterministic and covers the whole list.
    """
    candidates = torch.nonzero(valid, as_tuple=False).flatten().tolist()
    if num_queries >= len(candidates):
        return candidates
    if num_queries <= 0:
        return []
    phase = random.Random(seed).random()
    stride = len(candidates) / num_queries
    return [candidates[int((i + phase) * stride)] for i in range(num_queries)]


def tile_image(path: str) -> Image.Image:
    """The image at ``path`` resized to the tile size (``TILE_W`` x ``TILE_H``), or a grey tile with an X
    when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB").resize((TILE_W, TILE_H), Image.Resampling.BILINEAR)
    except (OSError, ValueError):
        # A rank list is a picture for people, not a measurement: show the gap instead of failing.
        tile = Image.new("RGB", (TILE_W, TILE_H), PLACEHOLDER_COLOR)
        draw = ImageDraw.Draw(tile)
        draw.line([(0, 0), (TILE_W - 1, TILE_H - 1)], fill=PLACEHOLDER_CROSS, width=3)
        draw.line([(TILE_W - 1, 0), (0, TILE_H - 1)], fill=PLACEHOLDER_CROSS, width=3)
        return tile


def _format_distance(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.4g}"


def fit_text(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    """``text`` cut from the left with a leading '...' until it fits ``width`` pixels (file names keep their
    distinctive end)."""
    if text_size(text, font)[0] <= width:
        return text
    while len(text) > 1 and text_size("..." + text, font)[0] > width:
        text = text[1:]
    return "..." + text


def draw_slot(
    canvas: Image.Image, slot: int, record: ImageRecord, color: tuple[int, int, int], lines: tuple[str, str]
) -> None:
    """Draw slot ``slot`` of a rank list (0: the query, then rank 1, 2, ...) onto ``canvas``: the record's
    tile framed in ``color``, with two centred text ``lines`` under it (cut from the left to fit)."""
    draw = ImageDraw.Draw(canvas)
    x, y = slot_origin(slot)
    draw.rectangle([x, y, x + SLOT_W - 1, y + SLOT_H - 1], fill=color)
    canvas.paste(tile_image(record.path), (x + FRAME, y + FRAME))
    font = load_font(12)
    for row, text in enumerate(lines):
        draw.text(
            (x + SLOT_W // 2, y + SLOT_H + 3 + row * 15),
            fit_text(text, font, SLOT_W + GAP),
            font=font,
            fill=TEXT_COLOR,
            anchor="mt",
        )


def save_rank_lists(
    distmat: torch.Tensor,
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    out_dir: Path,
    num_queries: int,
    top_k: int = 10,
    seed: int = 0,
) -> list[Path]:
    """Draw ``out_dir/rank_{qi:05d}.png`` for ``num_queries`` evenly spread valid queries; return the paths.

    ``distmat`` is [Q, G] (smaller is closer). Each picture shows the query, then its ``top_k`` nearest
    gallery images after the protocol filter, with rank and distance under each.
    """
    if distmat.shape != (len(query), len(gallery)):
        raise ValueError(f"distmat has shape {tuple(distmat.shape)}, expected ({len(query)}, {len(gallery)})")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    chosen = pick_queries(valid_query_mask(query, gallery), num_queries, seed)
    if not chosen:
        return []

    # Protocol filter for the chosen rows only: [n, G] masks, then one batched topk.
    index = torch.tensor(chosen, dtype=torch.long)
    g_pids = torch.tensor([r.pid for r in gallery], dtype=torch.long)
    g_cams = torch.tensor([r.camid for r in gallery], dtype=torch.long)
    q_pids = torch.tensor([query[i].pid for i in chosen], dtype=torch.long)
    q_cams = torch.tensor([query[i].camid for i in chosen], dtype=torch.long)
    same_pid = q_pids[:, None] == g_pids[None, :]
    removed = (same_pid & (q_cams[:, None] == g_cams[None, :])) | (g_pids == -1)[None, :]
    rows = distmat[index.to(distmat.device)].detach().to("cpu", torch.float64)
    rows = rows.masked_fill(removed, float("inf"))
    k = min(top_k, len(gallery))
    distances, ranked = torch.topk(rows, k, dim=1, largest=False, sorted=True)
    kept = ~torch.gather(removed, 1, ranked)  # fewer than k gallery images may survive the filter
    is_match = torch.gather(same_pid, 1, ranked)

    out_dir = Path(out_dir)
    caption_font = load_font(14)
    size = rank_list_size(top_k)
    paths = []
    for row, qi in enumerate(chosen):
        record = query[qi]
        canvas = Image.new("RGB", size, BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        caption = f"query {qi}: {Path(record.path).name}  |  pid {record.pid}  |  cam {record.camid}"
        draw.text(
            (MARGIN, MARGIN + CAPTION_H // 2 - 2),
            fit_text(caption, caption_font, size[0] - 2 * MARGIN),
            font=caption_font,
            fill=TEXT_COLOR,
            anchor="lm",
        )
        draw_slot(canvas, 0, record, QUERY_COLOR, ("query", f"pid {record.pid}"))
        separator_x = MARGIN + SLOT_W + QUERY_GAP // 2
        _, top = slot_origin(0)
        draw.line([(separator_x, top), (separator_x, top + SLOT_H - 1)], fill=(200, 200, 200), width=2)
        # Removed entries sit at +inf; skipping them (rather than stopping) keeps a gallery image whose
        # own distance is +inf, which topk may have ordered among them.
        shown = [j for j in range(k) if kept[row, j]]
        for rank, j in enumerate(shown, start=1):
            color = MATCH_COLOR if is_match[row, j] else WRONG_COLOR
            lines = (f"#{rank}", _format_distance(float(distances[row, j])))
            draw_slot(canvas, rank, gallery[int(ranked[row, j])], color, lines)
        path = out_dir / f"rank_{qi:05d}.png"
        atomic_save_image(canvas, path)
        paths.append(path)
    return paths
