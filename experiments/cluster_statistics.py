"""SpCL's pseudo-labels, epoch by epoch, of one run.

Clusters, clustered and un-clustered images, and for diagnosis their purity and NMI against the target's
identities, with the run's evaluations beside them.

Reads a run's ``log.jsonl`` (each epoch's row holds the clustering that opened the epoch), writes one PNG with
three panels (clusters, images, purity and NMI) and prints a Markdown table (every ``--every``-th epoch, the
evaluated ones and the last) and one JSON line. The identities diagnose; nothing here selects anything.

    python experiments/cluster_statistics.py --run runs/budget/spcl --out docs/spcl_clusters.png
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
from ecnreid.plots import panel_plot  # noqa: E402

COUNTS = ("spcl_clusters", "spcl_clustered", "spcl_unclustered")
DIAGNOSIS = ("spcl_purity", "spcl_nmi")


def clustering_rows(folder: Path) -> list[dict]:
    """The log's epoch rows that hold a clustering, in epoch order."""
    log = folder / "log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = sorted((row for row in rows if all(key in row for key in COUNTS)), key=lambda row: row["epoch"])
    if not rows:
        raise EcnreidError(f"{log}: no clustering statistics (is it an SpCL run?)")
    return rows


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    kept = [row for row in rows if row.get(key) is not None]
    return [row["epoch"] for row in kept], [float(row[key]) for row in kept]


def cell(value: object, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="the SpCL run's folder")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--every", type=int, default=5, help="table rows: every N-th epoch (default 5)")
    args = parser.parse_args()
    if args.every < 1:
        parser.error(f"--every {args.every}: give a positive number of epochs")
    with refuse_bad_input(parser):
        rows = clustering_rows(args.run)
    panels = [
        (
            "clusters",
            "clusters",
            {"DBSCAN": series(rows, "spcl_dbscan_clusters"), "kept (reliable)": series(rows, "spcl_clusters")},
        ),
        (
            "target images",
            "images",
            {"clustered": series(rows, "spcl_clustered"), "un-clustered": series(rows, "spcl_unclustered")},
        ),
        (
            "diagnosis (target ids)",
            "score",
            {"purity": series(rows, "spcl_purity"), "NMI": series(rows, "spcl_nmi")},
        ),
    ]
    panel_plot(panels, args.out, xlabel="epoch")

    last = rows[-1]["epoch"]
    print(
        "| epoch | DBSCAN clusters | kept | clustered images | un-clustered | independence IoU ≥ | purity | NMI "
        "| R1 / mAP |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        evaluated = "rank1" in row and "mAP" in row
        if not (row["epoch"] % args.every == 0 or row["epoch"] == 1 or evaluated or row["epoch"] == last):
            continue
        cells = [cell(row.get(key), 0) for key in ("spcl_dbscan_clusters", *COUNTS)]
        cells += [cell(row.get(key), 3) for key in ("spcl_independence_iou", *DIAGNOSIS)]
        cells.append(f"{row['rank1']:.1f} / {row['mAP']:.1f}" if evaluated else "")
        print(f"| {row['epoch']} | " + " | ".join(cells) + " |")
    keys = ("spcl_dbscan_clusters", *COUNTS, "spcl_independence_iou", *DIAGNOSIS, "rank1", "mAP")
    print(json.dumps({"epochs": {str(row["epoch"]): {k: row[k] for k in keys if k in row} for row in rows}}))


if __name__ == "__main__":
    main()
