"""Tests for experiments/cluster_statistics.py: SpCL's per-epoch clustering as a table, a JSON line and a figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from experiment_scripts import run_experiment
from PIL import Image


def _main(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    run_experiment(monkeypatch, "cluster_statistics", *args)


def _spcl_log(folder: Path, epochs: int) -> Path:
    folder.mkdir()
    rows = []
    for epoch in range(1, epochs + 1):
        row = {
            "epoch": epoch, "loss_total": 2.0, "spcl_dbscan_clusters": 10 + epoch, "spcl_clusters": 9 + epoch,
            "spcl_clustered": 1000 * epoch, "spcl_unclustered": 9000 - 1000 * epoch, "spcl_independence_iou": 0.25,
            "spcl_purity": None if epoch == 1 else 0.5 + epoch / 100, "spcl_nmi": 0.8,
        }
        if epoch == 4:
            row.update(rank1=30.25, mAP=12.5)
        rows.append(json.dumps(row))
    (folder / "log.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_table_json_and_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    run = _spcl_log(tmp_path / "run", 7)
    out = tmp_path / "clusters.png"
    _main(monkeypatch, "--run", str(run), "--out", str(out), "--every", "3")
    lines = capsys.readouterr().out.splitlines()
    # The first epoch, every third, the evaluated one and the last.
    assert lines[2:7] == [
        "| 1 | 11 | 10 | 1,000 | 8,000 | 0.250 | - | 0.800 |  |",
        "| 3 | 13 | 12 | 3,000 | 6,000 | 0.250 | 0.530 | 0.800 |  |",
        "| 4 | 14 | 13 | 4,000 | 5,000 | 0.250 | 0.540 | 0.800 | 30.2 / 12.5 |",
        "| 6 | 16 | 15 | 6,000 | 3,000 | 0.250 | 0.560 | 0.800 |  |",
        "| 7 | 17 | 16 | 7,000 | 2,000 | 0.250 | 0.570 | 0.800 |  |",
    ]
    record = json.loads(lines[-1])["epochs"]
    assert sorted(record, key=int) == [str(e) for e in range(1, 8)]
    assert record["4"]["rank1"] == 30.25 and record["2"]["spcl_unclustered"] == 7000
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1200, 420)


def test_bad_input_stops_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    run = tmp_path / "ecn"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"epoch": 1, "loss_total": 1.0}) + "\n")
    out = ("--out", str(tmp_path / "c.png"))
    for args, message in (
        (("--run", str(run)), f"{run / 'log.jsonl'}: no clustering statistics (is it an SpCL run?)"),
        (("--run", str(tmp_path / "none")), f"{tmp_path / 'none' / 'log.jsonl'}: No such file or directory"),
        (("--run", str(run), "--every", "0"), "--every 0: give a positive number of epochs"),
    ):
        with pytest.raises(SystemExit) as stop:
            _main(monkeypatch, *args, *out)
        assert stop.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"cluster_statistics.py: error: {message}"
    assert not (tmp_path / "c.png").exists()
