"""SpCL as a method of the loop (ecnreid/methods/spcl.py): trained through `ecnreid train --method spcl` to its
end on tiny synthetic domains, its checkpoint served by extract, search and export, and an exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ecnreid.methods
from ecnreid.cli import app
from ecnreid.config import DGConfig, DomainsConfig, ModelConfig, TrainConfig, override
from ecnreid.errors import EcnreidError
from ecnreid.methods.spcl import SpCL, sampling_groups
from ecnreid.runstate import load_checkpoint
from ecnreid.training import train

runner = CliRunner()

# Tiny sizes: clusters of the synthetic people form with a few neighbours and two images per core.
SPCL_SMALL = ["--spcl-k1", "6", "--spcl-k2", "2", "--spcl-min-samples", "2", "--spcl-instances", "2"]


def train_args(source: Path, target: Path, out: Path, *extra: str) -> list[str]:
    domains = ["--source", "synthetic", "--source-root", str(source), "--target", "synthetic", "--target-root"]
    sizes = ["--arch", "resnet18", "--no-pretrained", "--height", "32", "--width", "16", "--batch-size", "8"]
    return ["train", "--method", "spcl", *domains, str(target), *sizes, *SPCL_SMALL, "--workers", "0",
            "--device", "cpu", "--out", str(out), *extra]


def test_spcl_is_registered() -> None:
    assert ecnreid.methods.METHODS["spcl"] is SpCL and SpCL.name == "spcl"


def test_spcl_trains_through_the_cli_and_its_checkpoint_serves_every_command(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    run = tmp_path / "run"
    result = runner.invoke(app, train_args(source, target, run, "--epochs", "2", "--iters-per-epoch", "1"))
    assert result.exit_code == 0, result.output
    assert "SpCL: source synthetic" in result.output and "2 (final)" in result.output
    assert "pseudo-labels:" in result.output
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "spcl" and metrics["setting"] == "SpCL"
    assert metrics["final"] == {key: log[-1][key] for key in metrics["final"]} and metrics["final"]["epoch"] == 2
    statistics = {"spcl_clusters", "spcl_clustered", "spcl_unclustered", "spcl_independence_iou", "spcl_purity"}
    for row in log:
        assert {"loss_source", "loss_target", "spcl_nmi", *statistics} <= set(row)
        assert row["spcl_clustered"] + row["spcl_unclustered"] == 24  # the target's training images
        assert row["spcl_clusters"] >= 1 and 0 < row["spcl_independence_iou"] <= 1
    assert log[-1]["lr"] == pytest.approx(3.5e-4)
    state = load_checkpoint(run / "last.pt")
    assert state["card"]["method"] == "spcl" and state["card"]["feature_dim"] == 512
    labels = state["method"]["memory"]["labels"]
    assert labels[:4].tolist() == [0, 1, 2, 3] and len(labels) == 4 + 24  # 4 source ids, 24 target images

    checkpoint = run / "last.pt"
    common = ["--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0"]
    feats = tmp_path / "feats"
    gallery = ["--images", str(target / "bounding_box_test")]
    result = runner.invoke(app, ["extract", *common, *gallery, "--out", str(feats)])
    assert result.exit_code == 0, result.output
    features = np.load(feats / "features.npy")
    assert features.shape[1] == 512 and np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-4)
    result = runner.invoke(app, ["search", *common, "--query", str(target / "query"), "--gallery", str(feats),
                                 "--out", str(tmp_path / "search")])
    assert result.exit_code == 0, result.output
    searched = json.loads((tmp_path / "search" / "results.json").read_text())
    assert searched["card"]["method"] == "spcl"
    exported = tmp_path / "model.pt"
    result = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--format", "torchscript",
                                 "--out", str(exported)])
    assert result.exit_code == 0, result.output
    assert exported.is_file()


def small_config(source: Path, target: Path, out: Path, **settings) -> TrainConfig:
    config = TrainConfig(
        domains=DomainsConfig("synthetic", source, "synthetic", target),
        out=out,
        method="spcl",
        model=ModelConfig(arch="resnet18", pretrained=False),
    )
    defaults = {"batch_size": 8, "height": 32, "width": 16, "workers": 0, "device": "cpu", "every": 0,
                "k1": 6, "k2": 2, "min_samples": 2, "instances": 2, "iters_per_epoch": 1}
    return override(config, **{**defaults, **settings})


def test_resume_mid_run_equals_the_straight_run(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    train(small_config(source, target, tmp_path / "straight", epochs=2, lr_step=1))
    train(small_config(source, target, tmp_path / "resumed", epochs=1, lr_step=1))
    train(small_config(source, target, tmp_path / "resumed", epochs=2, lr_step=1, resume=True))
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key in ("features", "labels"):  # the labels: source classes, then the last epoch's pseudo-labels
        assert torch.equal(a["method"]["memory"][key], b["method"]["memory"][key]), key
    assert a["method"]["independence_threshold"] == b["method"]["independence_threshold"] is not None
    rows_a = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    # Timings vary; the first part of the resumed run was scored as its last epoch.
    varying = {"seconds", "images_per_s", "spcl_cluster_seconds", "rank1", "rank5", "rank10", "mAP", "mINP"}
    assert [{k: v for k, v in r.items() if k not in varying} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in varying} for r in rows_b
    ]
    assert [row["lr"] for row in rows_a] == pytest.approx([3.5e-5, 3.5e-6])  # a drop after every epoch
    assert a["scheduler"]["step_size"] == 1 and a["optimizer"]["param_groups"][0]["weight_decay"] == 5e-4


def test_spcl_refuses_ecn_only_settings(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    with pytest.raises(EcnreidError, match="--mixstyle, --snr and --rsc"):
        SpCL.check_config(override(small_config(source, target, tmp_path), dg=DGConfig(rsc=True)))
    with pytest.raises(EcnreidError, match="--source-only and --no-target"):
        SpCL.check_config(override(small_config(source, target, tmp_path), no_target=True))
    with pytest.raises(EcnreidError, match="--camstyle-dir"):
        SpCL.check_config(override(small_config(source, target, tmp_path), camstyle_dir=tmp_path))


def test_a_refused_setting_is_one_line_through_the_cli_and_writes_nothing(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    result = runner.invoke(app, train_args(source, target, tmp_path / "run", "--rsc"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().startswith("error:") and "SpCL takes none of them" in result.output
    assert not (tmp_path / "run").exists()


def test_unclustered_images_are_drawn_in_runs_of_k() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 4, 5, 6])  # two clusters, five un-clustered images
    groups = sampling_groups(labels, num_clusters=2, instances=2, seed=0)
    assert (groups[:5] == labels[:5]).all()
    assert sorted(np.bincount(groups[5:])[2:].tolist()) == [1, 2, 2]
    assert (groups == sampling_groups(labels, num_clusters=2, instances=2, seed=0)).all()
