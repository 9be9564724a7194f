"""Compare CamStyle sets by their fidelity reports: one markdown table and one picture of the same originals.

Each ``--report LABEL=DIR`` is the output folder of ``ecnreid prepare --check SET --score --out DIR``. Reports
scored with the same sample settings (``--score-images``, ``--probe-images``, ``--seed``) of one dataset show the
same originals in the same rows, so their ``fidelity.png`` pictures are put side by side under their labels::

    python experiments/fidelity_compare.py --report colour=runs/fidelity_colour \\
        --report capture=runs/fidelity_capture --out docs/camstyle_fidelity.png --json docs/camstyle_fidelity.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_errors import refuse_bad_input  # noqa: E402

from camstyle.fidelity_report import FIDELITY_JSON, FIDELITY_PNG, percent  # noqa: E402
from ecnreid.errors import EcnreidError  # noqa: E402
from ecnreid.evaluation.visualize import load_font  # noqa: E402
from ecnreid.io import atomic_save_image, write_json  # noqa: E402

# What must agree for two reports to be read side by side: the same originals, fakes and probe.
SAME_SAMPLE = ("probe_images", "originals", "fakes", "seed")
REPORT_KEYS = ("camstyle_dir", "dataset", "sample", "camera_probe", "statistics_probe", "identity")
LABEL_H, GAP = 24, 16


def read_report(label: str, folder: Path) -> dict[str, Any]:
    """A report's summary, with its label and picture path; one line naming the folder when it is not one."""
    summary_path, picture = folder / FIDELITY_JSON, folder / FIDELITY_PNG
    if not summary_path.is_file() or not picture.is_file():
        raise EcnreidError(f"{folder}: no {FIDELITY_JSON} and {FIDELITY_PNG}; give the --out folder of "
                           "`ecnreid prepare --check SET --score`")
    try:
        summary = json.loads(summary_path.read_text())
    except ValueError:
        summary = None
    if not isinstance(summary, dict) or not all(key in summary for key in REPORT_KEYS):
        raise EcnreidError(f"{summary_path}: not a fidelity report; score the set again")
    return {"label": label, "picture": str(picture), **summary}


def check_comparable(reports: list[dict[str, Any]]) -> None:
    """Stop with one line when two reports did not score the same sample of the same dataset with one probe."""
    first = reports[0]
    for report in reports[1:]:
        for what, a, b in [
            ("dataset", first["dataset"], report["dataset"]),
            ("camera probe features", first["camera_probe"]["features"], report["camera_probe"]["features"]),
            *((f"sample {key}", first["sample"][key], report["sample"][key]) for key in SAME_SAMPLE),
        ]:
            if a != b:
                raise EcnreidError(f"{report['camstyle_dir']}: its {what} is {b}, {first['label']}'s is {a}; score "
                                   "every set with the same --score-images, --probe-images, --seed and probe")


def _mean(entry: dict[str, Any]) -> str:
    return "-" if entry["mean"] is None else f"{entry['mean']:.3f}"


def table_rows(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per report: the figures the README's table shows."""
    return [
        {
            "label": r["label"],
            "camstyle_dir": r["camstyle_dir"],
            "real_accuracy": r["camera_probe"]["real_accuracy"],
            "camera_fidelity": r["camera_probe"]["fake_accuracy"],
            "still_original": r["camera_probe"]["fake_still_original"],
            "statistics_fidelity": r["statistics_probe"]["fake_accuracy"],
            "statistics_still_original": r["statistics_probe"]["fake_still_original"],
            "identity_fake_vs_original": r["identity"]["fake_vs_original"]["mean"],
            "identity_same_person_other_camera": r["identity"]["same_person_other_camera"]["mean"],
            "identity_other_person_same_camera": r["identity"]["other_person_same_camera"]["mean"],
            "per_camera_fidelity": [c["fake_accuracy"] for c in r["camera_probe"]["per_camera"]],
        }
        for r in reports
    ]


def markdown_table(reports: list[dict[str, Any]]) -> str:
    header = ("| method | camera fidelity | still original | statistics probe: fakes / still original "
              "| identity fake↔original |\n|---|---|---|---|---|")
    lines = [header]
    for r in reports:
        camera, statistics = r["camera_probe"], r["statistics_probe"]
        lines.append(
            f"| {r['label']} | {percent(camera['fake_accuracy'])} | {percent(camera['fake_still_original'])} "
            f"| {percent(statistics['fake_accuracy'])} / {percent(statistics['fake_still_original'])} "
            f"| {_mean(r['identity']['fake_vs_original'])} |"
        )
    sample, probe = reports[0]["sample"], reports[0]["camera_probe"]
    lines.append(
        f"\n{sample['originals']:,} originals, {sample['fakes']:,} fakes, probe taught on {sample['probe_images']:,} "
        f"images, seed {sample['seed']}; camera probe on {probe['features']}: real images "
        f"{percent(probe['real_accuracy'])} (ceiling), chance {percent(probe['chance'])}."
    )
    return "\n".join(lines)


def side_by_side(reports: list[dict[str, Any]], out: Path) -> None:
    """The reports' pictures in a row, each under its label."""
    pictures = []
    for r in reports:
        with Image.open(r["picture"]) as image:
            pictures.append(image.convert("RGB"))
    width = sum(p.width for p in pictures) + GAP * (len(pictures) - 1)
    canvas = Image.new("RGB", (width, LABEL_H + max(p.height for p in pictures)), (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), load_font(16)
    x = 0
    for r, picture in zip(reports, pictures, strict=True):
        draw.text((x + picture.width // 2, 4), r["label"], font=font, fill=(30, 30, 30), anchor="mt")
        canvas.paste(picture, (x, LABEL_H))
        x += picture.width + GAP
    atomic_save_image(canvas, out)


def _label_and_folder(text: str) -> tuple[str, Path]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: write LABEL=DIR")
    return label, Path(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=_label_and_folder, action="append", required=True, metavar="LABEL=DIR")
    parser.add_argument("--out", type=Path, required=True, help="the side-by-side picture (PNG)")
    parser.add_argument("--json", type=Path, help="also write the table's figures here")
    args = parser.parse_args()
    with refuse_bad_input(parser):
        reports = [read_report(label, folder) for label, folder in args.report]
        check_comparable(reports)
    print(markdown_table(reports))
    side_by_side(reports, args.out)
    if args.json:
        write_json(table_rows(reports), args.json)


if __name__ == "__main__":
    main()
