"""Rank-1 and mAP against training steps for runs of one schedule, and their ratio to a source-only run.

Reads each run's ``log.jsonl`` (the evaluations its ``--eval-every`` logged, for watching only) and
``config.json`` (iterations per epoch), writes one PNG with three panels (rank-1, mAP, ratio to the baseline
at the steps both evaluated) and prints a Markdown table and one JSON line (also written to ``--json``).
Nothing here selects anything: the number a run reports is its final evaluation.

    python experiments/budget_curve.py --baseline "source only=runs/budget/source_only" \\
        --run "+E+C+N (colour)=runs/budget/ECN" --out docs/budget_curve.png --json docs/budget_curve.json

A run may also be named by such a JSON record instead of its folder (``LABEL=FILE.json`` takes the record's
curve of that label), so a figure can be redrawn after the run folders are gone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_errors import refuse_bad_input  # noqa: E402

from ecnreid.errors import EcnreidError  # noqa: E402
from ecnreid.plots import Series, panel_plot  # noqa: E402

METRICS = (("rank1", "rank-1"), ("mAP", "mAP"))


def labelled_folder(text: str) -> tuple[str, Path]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=RUN_FOLDER")
    return label, Path(folder)


def recorded_evaluations(label: str, record: Path) -> dict[int, dict[str, float]]:
    """The curve of ``label`` in a JSON record this script wrote."""
    runs = json.loads(record.read_text())["runs"]
    if label not in runs:
        raise EcnreidError(f"{record}: no curve labelled {label!r} (it has {', '.join(map(repr, runs))})")
    return {int(step): {key: float(row[key]) for key, _ in METRICS} for step, row in runs[label].items()}


def evaluations(label: str, folder: Path) -> dict[int, dict[str, float]]:
    """``{step: {"rank1": %, "mAP": %}}`` of the run's logged evaluations, steps = epochs x iterations."""
    if folder.suffix == ".json":
        return recorded_evaluations(label, folder)
    config = json.loads((folder / "config.json").read_text())
    # Today's config tree, or the flat config.json of the earlier version the long runs started with.
    steps_per_epoch = config["optim"]["iters_per_epoch"] if "optim" in config else config["iters_per_epoch"]
    out = {}
    for line in (folder / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        if all(key in row for key, _ in METRICS):
            out[row["epoch"] * steps_per_epoch] = {key: float(row[key]) for key, _ in METRICS}
    if not out:
        raise EcnreidError(f"{folder / 'log.jsonl'}: no evaluation logged yet")
    return out


def curve_panels(runs: dict[str, dict[int, dict[str, float]]], base_label: str) -> list[tuple[str, str, Series]]:
    """Each metric against steps, then each metric divided by the baseline's at the same step. Every panel
    lists the runs in the same order, so a run has one colour throughout; the baseline's ratio is the line at 1."""
    base = runs[base_label]
    panels = []
    for key, name in METRICS:
        curves = {label: (list(rows), [rows[s][key] for s in rows]) for label, rows in runs.items()}
        panels.append((f"{name} (%)", f"{name} (%)", curves))
    for key, name in METRICS:
        ratios = {}
        for label, rows in runs.items():
            common = [s for s in rows if s in base]
            ratios[label] = (common, [rows[s][key] / base[s][key] for s in common])
        panels.append((f"{name} ÷ {base_label}", "ratio", ratios))
    return panels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=labelled_folder, required=True, help="LABEL=FOLDER of source only")
    parser.add_argument("--run", type=labelled_folder, action="append", required=True, help="LABEL=FOLDER")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--json", type=Path, help="also write the curves' JSON record here")
    args = parser.parse_args()

    with refuse_bad_input(parser):
        runs = {label: evaluations(label, folder) for label, folder in [args.baseline, *args.run]}
    base_label = args.baseline[0]
    base = runs[base_label]
    panel_plot(curve_panels(runs, base_label), args.out, xlabel="training step", size=(1600, 420))

    steps = sorted({s for rows in runs.values() for s in rows})
    header = (
        "| step | "
        + " | ".join(f"{label} R1 / mAP" for label in runs)
        + " | "
        + " | ".join(f"{label} / {base_label} (R1, mAP)" for label in runs if label != base_label)
        + " |"
    )
    print(header)
    print("|" + "---|" * (1 + len(runs) + len(runs) - 1))
    for s in steps:
        cells = [
            f"{runs[label][s]['rank1']:.1f} / {runs[label][s]['mAP']:.1f}" if s in runs[label] else "" for label in runs
        ]
        for label in runs:
            if label == base_label:
                continue
            if s in runs[label] and s in base:
                r1 = runs[label][s]["rank1"] / base[s]["rank1"]
                mp = runs[label][s]["mAP"] / base[s]["mAP"]
                cells.append(f"×{r1:.2f}, ×{mp:.2f}")
            else:
                cells.append("")
        print(f"| {s:,} | " + " | ".join(cells) + " |")
    record = json.dumps({"runs": {label: {str(s): v for s, v in sorted(rows.items())} for label, rows in runs.items()}})
    print(record)
    if args.json:
        args.json.write_text(record + "\n")


if __name__ == "__main__":
    main()
