"""What ``ecnreid prepare --check DIR --score`` shows and writes: the fidelity table, ``fidelity.json``, and
``fidelity.png``, a few originals with their fakes, one column per camera, each tile labelled with the camera
probe's verdict. The scoring itself is ``camstyle.fidelity``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from rich.console import Group
from rich.table import Table

from camstyle.check import open_camstyle_set
from camstyle.fidelity import Sample, score_fidelity
from camstyle.fidelity_config import FidelityConfig
from ecnreid.evaluation.visualize import load_font, text_size
from ecnreid.io import atomic_save_image, ensure_output_dir, sweep_stale_temp_files, write_json

FIDELITY_JSON, FIDELITY_PNG = "fidelity.json", "fidelity.png"
PICTURE_ROWS = 6
TILE_W, TILE_H, FRAME, GAP, MARGIN = 64, 128, 4, 6, 10
HEADER_H, TITLE_H, LABEL_H = 20, 14 * 5 + 6, 18
RIGHT, WRONG, ORIGINAL, STILL_OWN = (0, 160, 60), (220, 30, 30), (60, 60, 60), (235, 150, 0)
TEXT, BACKGROUND = (30, 30, 30), (255, 255, 255)
LEGEND = (
    ("camera probe's verdict", TEXT),
    ("grey: the real image", ORIGINAL),
    ("green: the camera made for", RIGHT),
    ("orange: its original camera", STILL_OWN),
    ("red: another camera", WRONG),
)


def picture_rows(originals: Sequence[Any], rows: int = PICTURE_ROWS) -> list[int]:
    """Indices of ``rows`` originals, one per camera in turn (the first of each camera, then the second, ...)."""
    turn: dict[int, int] = {}
    keys = []
    for index, record in enumerate(originals):
        keys.append((turn.get(record.camid, 0), record.camid, index))
        turn[record.camid] = turn.get(record.camid, 0) + 1
    return [index for _, _, index in sorted(keys)[:rows]]


def _tile(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB").resize((TILE_W, TILE_H), Image.Resampling.BILINEAR)


def save_fidelity_png(sample: Sample, verdicts: dict[str, torch.Tensor], num_cameras: int, path: Path) -> None:
    """Rows: originals; column c: the original rendered in camera c (the original itself in its own camera).
    Frames and labels: green where the probe names the tile's camera, orange where it names a fake's original
    camera, red otherwise; the original is framed grey."""
    rows = picture_rows(sample.originals)
    slot_w, slot_h = TILE_W + 2 * FRAME, TILE_H + 2 * FRAME + LABEL_H
    font = load_font(12)
    legend_w = max(text_size(text, font)[0] for text, _ in LEGEND)
    width = 2 * MARGIN + max(num_cameras * slot_w + (num_cameras - 1) * GAP, legend_w)
    height = 2 * MARGIN + TITLE_H + HEADER_H + len(rows) * (slot_h + GAP)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for line, (text, colour) in enumerate(LEGEND):
        draw.text((MARGIN, MARGIN + line * 14), text, font=font, fill=colour)
    fake_at = {(int(j), sample.fakes[f].camid): f for f, j in enumerate(sample.fake_source.tolist())}
    for c in range(num_cameras):
        x = MARGIN + c * (slot_w + GAP)
        draw.text((x + slot_w // 2, MARGIN + TITLE_H), f"c{c + 1}", font=font, fill=TEXT, anchor="mt")
    for row, j in enumerate(rows):
        original = sample.originals[j]
        y = MARGIN + TITLE_H + HEADER_H + row * (slot_h + GAP)
        for c in range(num_cameras):
            x = MARGIN + c * (slot_w + GAP)
            if c == original.camid:
                image_path, verdict = original.path, int(verdicts["originals"][j])
                colour, label = ORIGINAL, f"real: c{verdict + 1}"
                label_colour = RIGHT if verdict == c else WRONG
            else:
                f = fake_at[(j, c)]
                image_path, verdict = sample.fakes[f].path, int(verdicts["fakes"][f])
                colour = RIGHT if verdict == c else STILL_OWN if verdict == original.camid else WRONG
                label, label_colour = f"probe: c{verdict + 1}", colour
            draw.rectangle([x, y, x + slot_w - 1, y + TILE_H + 2 * FRAME - 1], fill=colour)
            canvas.paste(_tile(image_path), (x + FRAME, y + FRAME))
            draw.text((x + slot_w // 2, y + TILE_H + 2 * FRAME + 3), label, font=font, fill=label_colour, anchor="mt")
    atomic_save_image(canvas, path)


def percent(value: float | None) -> str:
    """A share as the report writes it: one decimal and a per cent sign, '-' where there is none."""
    return "-" if value is None else f"{100 * value:.1f} %"


def _people(count: int) -> str:
    return f"{count:,} person" if count == 1 else f"{count:,} people"


def _similarity(entry: dict[str, Any]) -> str:
    return "-" if entry["mean"] is None else f"{entry['mean']:.3f} ± {entry['std']:.3f} ({entry['pairs']:,} pairs)"


def render_fidelity_table(summary: dict[str, Any]) -> Group:
    """The main numbers, which probe and model, where the files are; then the camera probe per camera."""
    deep, stats, identity = summary["camera_probe"], summary["statistics_probe"], summary["identity"]
    sample = summary["sample"]
    cameras = Table(title="camera probe per camera c")
    for name in ("c", "fakes", "fakes as c", "fakes as original", "real as c"):
        cameras.add_column(name, justify="right")
    for entry in deep["per_camera"]:
        cameras.add_row(
            f"c{entry['camera']}",
            f"{entry['fakes']:,}",
            percent(entry["fake_accuracy"]),
            percent(entry["fake_still_original"]),
            percent(entry["real_accuracy"]),
        )
    table = Table(title=f"CamStyle fidelity of {summary['camstyle_dir']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("camera fidelity", f"[bold]{percent(deep['fake_accuracy'])}[/] of fakes classified as the camera made for"),
        ("ceiling", f"{percent(deep['real_accuracy'])} of held-out real images as their own camera "
                    f"(chance {percent(deep['chance'])})"),
        ("still original", f"{percent(deep['fake_still_original'])} of fakes classified as their original camera"),
        ("colour/sharpness", f"fakes {percent(stats['fake_accuracy'])}, real {percent(stats['real_accuracy'])}, "
                             f"still original {percent(stats['fake_still_original'])} (statistics probe)"),
        ("identity: fake-original", _similarity(identity["fake_vs_original"])),
        ("same person, other camera", _similarity(identity["same_person_other_camera"])),
        ("other person, same camera", _similarity(identity["other_person_same_camera"])),
        ("camera probe", f"{deep['classifier']} on {deep['features']}"),
        ("why this probe", deep["why"]),
        ("identity model", identity["model"]),
        ("sample", f"{sample['originals']:,} originals of {_people(sample['original_people'])}, {sample['fakes']:,} "
                   f"fakes; the probe learnt from {sample['probe_images']:,} images of "
                   f"{_people(sample['probe_people'])} (others; seed {sample['seed']})"),
        ("time", f"{summary['seconds']:.1f} s on {summary['device']}"),
        ("files", f"{summary['paths']['json']}\n{summary['paths']['png']}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return Group(table, cameras)


def run_fidelity(config: FidelityConfig, *, progress: bool = True) -> dict[str, Any]:
    """Score ``config.camstyle`` and write ``fidelity.json`` and ``fidelity.png`` into the output folder (made
    first, so that a file in its way fails at once; a failed run leaves it empty, and the CLI removes it)."""
    found = open_camstyle_set(config.camstyle)
    out = config.out if config.out is not None else found.camstyle_dir.parent / f"{found.camstyle_dir.name}_fidelity"
    out = ensure_output_dir(out, "--out")
    sweep_stale_temp_files(out)
    summary, sample, verdicts = score_fidelity(config, found, progress=progress)
    summary["paths"] = {"out": str(out), "json": str(out / FIDELITY_JSON), "png": str(out / FIDELITY_PNG)}
    save_fidelity_png(sample, verdicts, found.num_cameras, out / FIDELITY_PNG)
    write_json(summary, out / FIDELITY_JSON)
    return summary
