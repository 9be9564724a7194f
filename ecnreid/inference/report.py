"""What a person looks at after a search: a rank-list PNG per query (the layout of ``ecnreid eval``'s rank
lists) and one self-contained HTML page with every query and its matches as embedded JPEG thumbnails."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from ecnreid.evaluation.visualize import (
    BACKGROUND,
    CAPTION_H,
    MARGIN,
    MATCH_COLOR,
    QUERY_COLOR,
    QUERY_GAP,
    SLOT_H,
    SLOT_W,
    TEXT_COLOR,
    WRONG_COLOR,
    draw_slot,
    fit_text,
    load_font,
    rank_list_size,
    slot_origin,
    tile_image,
)
from ecnreid.inference.results import QueryResult
from ecnreid.io import atomic_save_image, atomic_write_bytes

UNKNOWN_COLOR = (70, 110, 190)  # no ids in the file names: neither right nor wrong
THUMB_QUALITY = 80


def _frame_color(same: bool | None) -> tuple[int, int, int]:
    return UNKNOWN_COLOR if same is None else MATCH_COLOR if same else WRONG_COLOR


def _ids_text(pid: int | None, camid: int | None) -> str:
    return "" if pid is None else f"pid {pid}" + ("" if camid is None else f", cam {camid}")


def rank_list_png(result: QueryResult, number: int, top_k: int, path: Path) -> Path:
    """Draw one query and its matches: frames green/red where the file names say same/other person."""
    canvas = Image.new("RGB", rank_list_size(top_k), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    query = result.query
    ids = _ids_text(query.pid, query.camid)
    caption = f"query {number}: {Path(query.path).name}" + (f"  |  {ids}" if ids else "")
    draw.text((MARGIN, MARGIN + CAPTION_H // 2 - 2), fit_text(caption, load_font(14), canvas.width - 2 * MARGIN),
              font=load_font(14), fill=TEXT_COLOR, anchor="lm")
    draw_slot(canvas, 0, query.record(), QUERY_COLOR, ("query", ids or Path(query.path).name))
    separator_x = MARGIN + SLOT_W + QUERY_GAP // 2
    _, top = slot_origin(0)
    draw.line([(separator_x, top), (separator_x, top + SLOT_H - 1)], fill=(200, 200, 200), width=2)
    for match in result.matches[:top_k]:
        color = _frame_color(result.same_person(match))
        draw_slot(canvas, match.rank, match.image.record(), color, (f"#{match.rank}", f"{match.similarity:.3f}"))
    atomic_save_image(canvas, path)
    return path


class _Thumbnails:
    """Base64 JPEG thumbnails, each image encoded once however often it is shown."""

    def __init__(self) -> None:
        self.cache: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if path not in self.cache:
            buffer = io.BytesIO()
            tile_image(path).save(buffer, format="JPEG", quality=THUMB_QUALITY)
            self.cache[path] = base64.b64encode(buffer.getvalue()).decode("ascii")
        return self.cache[path]


_STYLE = """
body{font-family:sans-serif;margin:16px;color:#222}
h1{font-size:20px}
.q{border-top:1px solid #ccc;padding:10px 0;display:flex;gap:6px;align-items:flex-start;overflow-x:auto}
figure{margin:0;text-align:center;font-size:11px;width:76px;flex:none}
figure img{border:4px solid #999;width:64px;height:128px;display:block}
figure.query img{border-color:#282828}
figure.match img{border-color:#00aa3c}
figure.other img{border-color:#dc1e1e}
figure.unknown img{border-color:#466ebe}
figcaption{word-break:break-all}
.sep{width:14px;flex:none}
"""


def _figure(thumbnails: _Thumbnails, path: str, kind: str, lines: Sequence[str]) -> str:
    caption = "<br>".join(html.escape(line) for line in lines if line)
    return (
        f'<figure class="{kind}"><img src="data:image/jpeg;base64,{thumbnails(path)}" '
        f'title="{html.escape(path)}" alt="{html.escape(Path(path).name)}"><figcaption>{caption}</figcaption></figure>'
    )


def results_html(results: Sequence[QueryResult], title: str, path: Path) -> Path:
    """One HTML page, query by query, thumbnails embedded (it opens anywhere, without the images)."""
    thumbnails = _Thumbnails()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for number, result in enumerate(results):
        query = result.query
        row = [_figure(thumbnails, query.path, "query",
                       (f"query {number}", Path(query.path).name, _ids_text(query.pid, query.camid))),
               '<div class="sep"></div>']
        for match in result.matches:
            same = result.same_person(match)
            kind = "unknown" if same is None else "match" if same else "other"
            lines = (f"#{match.rank}  {match.similarity:.3f}", Path(match.image.path).name,
                     _ids_text(match.image.pid, match.image.camid))
            row.append(_figure(thumbnails, match.image.path, kind, lines))
        parts.append(f'<div class="q">{"".join(row)}</div>')
    parts.append("</body></html>\n")
    atomic_write_bytes("\n".join(parts).encode(), path)
    return path
