"""SpCL as a method of the loop (ecnreid/methods/spcl.py): trained through `ecnreid train --method spcl` to its
end on tiny synthetic domains, its checkpoint served by extract, search and export, and an exact resume."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_reid_tree
from rich.console import Console
from sklearn.metrics import normalized_mutual_info_score
from terminal_bars import assert_finished_bar, last_frames, terminal_console
from typer.testing import CliRunner

import ecnreid.methods
import ecnreid.methods.spcl as spcl_module
from ecnreid.cli import app
from ecnreid.clustering import cluster_purity, self_paced_labels
from ecnreid.config import DGConfig, DomainsConfig, ModelConfig, TrainConfig, override
from ecnreid.data.batches import LabelledBatch, UnlabelledBatch
from ecnreid.data.loaders import SOURCE_STREAM, TARGET_STREAM, LoaderFactory
from ecnreid.data.transforms import build_train_transform
from ecnreid.data.two_domains import load_two_domains
from ecnreid.errors import EcnreidError
from ecnreid.evaluation.features import extract_features
from ecnreid.evaluation.reranking import jaccard_graph
from ecnreid.methods.base import StepOutput
from ecnreid.methods.spcl import SpCL, SpCLForward, sampling_groups
from ecnreid.models.card import MethodCard, ModelCard
from ecnreid.models.spcl import SPCL_FEATURE, SpCLModel
from ecnreid.runstate import load_checkpoint
from ecnreid.runtime import DistributedContext, RunContext
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


# ---------------------------------------------------------------- each hook on its own, against numbers made here
# SpCL built directly on the tiny domains (4 source identities of 4 images, 24 target images of 3 cameras, 4 people).

SOURCE_IDS, TARGET_IMAGES, DIM = 4, 24, 512
# Non-default clustering settings for which the clusters below change with every one of them.
CLUSTERING = {"k1": 5, "k2": 2, "eps": 0.5, "eps_gap": 0.05, "min_samples": 3}


def build_spcl(source: Path, target: Path, out: Path, dist: DistributedContext | None = None, **settings) -> SpCL:
    config = small_config(source, target, out, **settings)
    SpCL.check_config(config)
    return SpCL(config, load_two_domains(config, announce=False), RunContext(torch.device("cpu"), dist or
                                                                             DistributedContext()))


@pytest.fixture(scope="module")
def shared_spcl(tmp_path_factory: pytest.TempPathFactory) -> SpCL:
    """One SpCL for the tests that only read it: building the ResNet-18 is most of such a test's time."""
    root = tmp_path_factory.mktemp("spcl")
    source = make_reid_tree(root / "source", ids=4, cameras=2, per_camera=2, seed=1)  # as two_domains
    target = make_reid_tree(root / "target", ids=4, cameras=3, per_camera=2, seed=2, first_pid=50)
    return build_spcl(source, target, root / "run")


def unit_rows(rows: int, seed: int, dim: int = DIM) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def clustered_rows(seed: int) -> torch.Tensor:
    """24 unit target features around 4 centres, each with its own amount of noise (a few stray apart)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(4, 16, generator=g), dim=1)
    noise = torch.rand(TARGET_IMAGES, generator=g) * 0.6
    rows = centres[torch.arange(TARGET_IMAGES) % 4] + noise[:, None] * torch.randn(TARGET_IMAGES, 16, generator=g)
    return F.pad(F.normalize(rows, dim=1), (0, DIM - 16))


def clustering(features: torch.Tensor, threshold: float | None, k1=5, k2=2, eps=0.5, eps_gap=0.05, min_samples=3):
    return self_paced_labels(jaccard_graph(features, k1, k2), eps=eps, eps_gap=eps_gap, min_samples=min_samples,
                             independence_threshold=threshold)


class FakeClock:
    """``time.perf_counter`` that returns the given readings in turn."""

    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def perf_counter(self) -> float:
        return self.readings.pop(0)


def plain_console(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    shown = Console(file=io.StringIO(), width=300, color_system=None)
    monkeypatch.setattr(spcl_module, "console", shown)
    return shown.file


def test_adam_and_its_step_schedule_take_the_spcl_settings(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    spcl = build_spcl(source, target, tmp_path, adam_lr=2e-3, adam_weight_decay=3e-4, lr_step=2, lr_step_gamma=0.25)
    optimizer, scheduler = spcl.build_optimizer()
    assert type(optimizer) is torch.optim.Adam and type(scheduler) is torch.optim.lr_scheduler.StepLR
    (group,) = optimizer.param_groups
    trained = [p for p in spcl.model.parameters() if p.requires_grad]
    assert [id(p) for p in group["params"]] == [id(p) for p in trained]
    assert (group["lr"], group["weight_decay"]) == (2e-3, 3e-4)
    assert (group["betas"], group["eps"], group["amsgrad"]) == ((0.9, 0.999), 1e-8, False)  # Adam's own
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([2e-3, 2e-3, 5e-4, 5e-4, 1.25e-4])  # times 0.25 every 2 epochs


def test_parameter_groups_hold_every_trained_parameter_at_the_adam_rate(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    spcl = build_spcl(source, target, tmp_path, adam_lr=7e-4)
    (group,) = spcl.parameter_groups()
    assert set(group) == {"params", "lr"} and group["lr"] == 7e-4
    named = dict(spcl.model.named_parameters())
    held = {id(p) for p in group["params"]}
    assert len(held) == len(group["params"])
    # The feature BatchNorms' biases are fixed at zero; everything else trains.
    assert sorted(name for name, p in named.items() if id(p) not in held) == [
        "feature_bn.source.bias", "feature_bn.target.bias"]
    assert spcl.uses_target is True


def test_loaders_draw_p_x_k_batches_of_identities_and_of_the_groups_of_each_epoch(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    spcl = build_spcl(source, target, tmp_path, batch_size=8, target_batch_size=12, instances=4)
    factory = LoaderFactory(seed=11, workers=0, transform=build_train_transform(32, 16))
    source_loader, target_loader = spcl.build_loaders(factory)
    assert (source_loader.sampler.seed, target_loader.sampler.seed) == (11 + SOURCE_STREAM, 11 + TARGET_STREAM)
    rng = np.random.default_rng(0)
    for epoch, groups in enumerate((rng.permutation(np.arange(TARGET_IMAGES) // 4), np.arange(TARGET_IMAGES) // 6)):
        spcl.target_groups = groups  # what before_epoch leaves; the loader reads it at set_epoch
        source_loader.set_epoch(epoch)
        target_loader.set_epoch(epoch)
        x, u = next(source_loader), next(target_loader)
        assert isinstance(x, LabelledBatch) and isinstance(u, UnlabelledBatch)
        assert x.images.shape == (8, 3, 32, 16) and u.images.shape == (12, 3, 32, 16)
        assert x.pids.tolist() == spcl.source_labels[x.indices.numpy()].tolist()
        assert u.camids.tolist() == [spcl.data.target_train[i].camid for i in u.indices.tolist()]
        source_runs = x.pids.view(2, 4)  # 2 identities x 4 images
        target_runs = torch.from_numpy(groups)[u.indices].view(3, 4)  # 3 groups x 4 images
        for runs in (source_runs, target_runs):
            assert (runs == runs[:, :1]).all() and len(set(runs[:, 0].tolist())) == len(runs)
    spcl = build_spcl(source, target, tmp_path, batch_size=8, instances=2)  # no --target-batch-size: --batch-size
    _, target_loader = spcl.build_loaders(factory)
    target_loader.set_epoch(0)
    pairs = next(target_loader).indices.view(4, 2)  # before any clustering each image is a group of its own
    assert (pairs[:, 0] == pairs[:, 1]).all() and len(set(pairs[:, 0].tolist())) == 4


def test_the_target_dataset_gives_each_image_its_camera_and_index(shared_spcl: SpCL) -> None:
    spcl = shared_spcl
    dataset = spcl.target_dataset(lambda image: ("transformed", image.size))
    records = spcl.data.target_train
    assert len(dataset) == TARGET_IMAGES and spcl.num_target_cameras == 3
    assert [dataset[i] for i in (0, 7, 23)] == [(("transformed", (16, 32)), records[i].camid, i) for i in (0, 7, 23)]


def test_the_memory_starts_from_source_centroids_and_target_features(two_domains, tmp_path: Path, monkeypatch) -> None:
    source, target = two_domains
    shown = terminal_console(monkeypatch)
    spcl = build_spcl(source, target, tmp_path, height=32, width=16, batch_size=8)
    spcl.before_training()
    assert spcl.model.training
    frames = last_frames(shown.getvalue())
    assert len(frames) == 2
    assert_finished_bar(frames[0], "source centroids", 16, 16, "img")
    assert_finished_bar(frames[1], "target features", TARGET_IMAGES, TARGET_IMAGES, "img")
    settings = {"height": 32, "width": 16, "batch_size": 8, "workers": 0, "show_progress": False}
    source_features = extract_features(spcl.model, spcl.data.source_train, **settings)
    target_features = extract_features(spcl.model, spcl.data.target_train, **settings)
    pids = np.array([r.pid for r in spcl.data.source_train])
    centroids = torch.stack([F.normalize(source_features[pids == c].sum(0), dim=0) for c in range(SOURCE_IDS)])
    memory = spcl.memory.features
    assert torch.allclose(memory[:SOURCE_IDS], centroids, atol=1e-5)
    assert torch.allclose(memory[SOURCE_IDS:], target_features, atol=1e-5)
    assert spcl.memory.labels.tolist() == list(range(SOURCE_IDS + TARGET_IMAGES))  # no clustering yet

    shown.seek(0)
    shown.truncate()
    other_rank = build_spcl(source, target, tmp_path, dist=DistributedContext(rank=1, world_size=2))
    other_rank.before_training()
    assert last_frames(shown.getvalue()) == [] and other_rank.model.training


def test_each_epoch_clusters_the_target_memory_with_the_settings(two_domains, tmp_path: Path, monkeypatch) -> None:
    source, target = two_domains
    shown = plain_console(monkeypatch)
    monkeypatch.setattr(spcl_module, "time", FakeClock(100.0, 102.5, 200.0, 201.0))
    spcl = build_spcl(source, target, tmp_path, seed=5, batch_size=6, instances=3, **CLUSTERING)
    first = clustered_rows(3)
    spcl.memory.features[SOURCE_IDS:] = first
    spcl.before_epoch(2)
    expected = clustering(first, None)
    assert (expected.num_clusters, expected.num_unclustered, expected.independence_threshold) == (4, 8, 0.25)
    assert clustering(first, None, 30, 6, 0.6, 0.02, 4).labels.tolist() != expected.labels.tolist()  # the defaults'
    got = spcl.pseudo_labels
    assert got.labels.tolist() == expected.labels.tolist() and spcl.independence_threshold == 0.25
    assert (got.num_clusters, got.num_clustered, got.num_unclustered, got.dbscan_clusters) == (4, 16, 8, 4)
    assert spcl.memory.labels.tolist() == [*range(SOURCE_IDS), *(expected.labels + SOURCE_IDS).tolist()]
    groups = sampling_groups(expected.labels, 4, 3, 5 * 10_007 + 2)
    assert spcl.target_groups.tolist() == groups.tolist()
    assert groups.tolist() != sampling_groups(expected.labels, 4, 3, 5 * 10_007 + 3).tolist()
    true_ids = np.array([r.pid for r in spcl.data.target_train])
    purity = cluster_purity(expected.labels, true_ids)
    nmi = float(normalized_mutual_info_score(true_ids, expected.labels))
    assert spcl.epoch_statistics() == {
        "spcl_clusters": 4, "spcl_clustered": 16, "spcl_unclustered": 8, "spcl_dbscan_clusters": 4,
        "spcl_independence_iou": 0.75, "spcl_purity": purity, "spcl_nmi": nmi, "spcl_cluster_seconds": 2.5,
    }
    assert shown.getvalue() == (
        f"epoch 3 pseudo-labels: 4 clusters (16 images), 8 un-clustered, independence IoU >= 0.750 "
        f"(diagnosis: purity {purity:.3f}, NMI {nmi:.3f}) in 2.5 s\n"
    )
    spcl.epoch_statistics()["spcl_clusters"] = 0  # a copy
    assert spcl.statistics["spcl_clusters"] == 4

    # The next clustering keeps the first one's threshold (its own would be 0.4, and cluster otherwise).
    second = clustered_rows(4)
    spcl.memory.features[SOURCE_IDS:] = second
    spcl.before_epoch(3)
    kept = clustering(second, 0.25)
    assert kept.labels.tolist() != clustering(second, None).labels.tolist()
    assert spcl.pseudo_labels.labels.tolist() == kept.labels.tolist() and spcl.independence_threshold == 0.25
    assert spcl.memory.labels[SOURCE_IDS:].tolist() == (kept.labels + SOURCE_IDS).tolist()
    assert spcl.statistics["spcl_cluster_seconds"] == 1.0 and spcl.statistics["spcl_independence_iou"] == 0.75


def test_only_the_main_rank_prints_the_clusters(two_domains, tmp_path: Path, monkeypatch) -> None:
    source, target = two_domains
    shown = plain_console(monkeypatch)
    spcl = build_spcl(source, target, tmp_path, dist=DistributedContext(rank=1, world_size=2), **CLUSTERING)
    spcl.memory.features[SOURCE_IDS:] = clustered_rows(3)
    spcl.before_epoch(0)
    assert shown.getvalue() == "" and spcl.statistics["spcl_clusters"] == 4


def test_target_identities_serve_the_diagnosis_only_when_every_image_has_one(two_domains, tmp_path: Path,
                                                                              monkeypatch) -> None:
    source, target = two_domains
    shown = plain_console(monkeypatch)
    monkeypatch.setattr(spcl_module, "time", FakeClock(0.0, 0.25))
    config = small_config(source, target, tmp_path, **CLUSTERING)
    data = load_two_domains(config, announce=False)
    data.target_train = [r._replace(pid=0) if i == 5 else r for i, r in enumerate(data.target_train)]  # pid 0 counts
    assert SpCL(config, data, RunContext(torch.device("cpu"))).target_ids.tolist() == [
        r.pid for r in data.target_train]
    data.target_train = [r._replace(pid=-1) if i == 5 else r for i, r in enumerate(data.target_train)]
    spcl = SpCL(config, data, RunContext(torch.device("cpu")))
    assert spcl.target_ids is None
    spcl.memory.features[SOURCE_IDS:] = clustered_rows(3)
    spcl.before_epoch(0)
    assert "spcl_purity" not in spcl.statistics and "spcl_nmi" not in spcl.statistics
    assert shown.getvalue() == (
        "epoch 1 pseudo-labels: 4 clusters (16 images), 8 un-clustered, independence IoU >= 0.750 in 0.2 s\n"
    )


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({}, "epoch 5 pseudo-labels: 3 clusters (10 images), 14 un-clustered, independence IoU >= 0.813 "
             "(diagnosis: purity 0.900, NMI 0.712) in 1.3 s"),
        ({"spcl_purity": None}, "epoch 5 pseudo-labels: 3 clusters (10 images), 14 un-clustered, independence "
                                "IoU >= 0.813 (diagnosis: purity -, NMI 0.712) in 1.3 s"),
        ({"spcl_independence_iou": None}, "epoch 5 pseudo-labels: 3 clusters (10 images), 14 un-clustered "
                                          "(diagnosis: purity 0.900, NMI 0.712) in 1.3 s"),
        ({"spcl_purity": "drop", "spcl_nmi": "drop", "spcl_independence_iou": None},
         "epoch 5 pseudo-labels: 3 clusters (10 images), 14 un-clustered in 1.3 s"),
    ],
)
def test_the_clustering_line(shared_spcl: SpCL, changes: dict, line: str) -> None:
    spcl = shared_spcl
    statistics = {"spcl_clusters": 3, "spcl_clustered": 10, "spcl_unclustered": 14, "spcl_independence_iou": 0.8126,
                  "spcl_purity": 0.9, "spcl_nmi": 0.71234, "spcl_cluster_seconds": 1.26}
    statistics.update(changes)
    spcl.statistics = {k: v for k, v in statistics.items() if v != "drop"}
    assert spcl.describe_clusters(4) == line


def test_one_step_is_the_hybrid_loss_of_both_batches_at_the_temperature(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    spcl = build_spcl(source, target, tmp_path, temperature=0.2)
    memory = spcl.memory
    memory.features.copy_(unit_rows(SOURCE_IDS + TARGET_IMAGES, 0))
    memory.set_target_labels(torch.arange(TARGET_IMAGES) // 3)  # 8 clusters of 3
    source_features = unit_rows(4, 1).requires_grad_()
    target_features = unit_rows(3, 2).requires_grad_()
    calls = []

    def network(source_images: torch.Tensor, target_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append((source_images, target_images))
        return source_features.double(), target_features.double()  # as under autocast: not float32

    cameras = torch.zeros(4, dtype=torch.long)
    x = LabelledBatch(torch.zeros(4, 3, 32, 16), torch.tensor([2, 0, 3, 2]), cameras, torch.arange(4))
    u = UnlabelledBatch(torch.ones(3, 3, 32, 16), cameras[:3], torch.tensor([5, 17, 0]))
    output = spcl.step(network, x, u, epoch=1)
    assert len(calls) == 1 and calls[0][0] is x.images and calls[0][1] is u.images
    slots = torch.tensor([5, 17, 0]) + SOURCE_IDS
    loss_source = memory.loss(source_features, x.pids, 0.2).item()
    loss_target = memory.loss(target_features, slots, 0.2).item()
    assert loss_target != pytest.approx(memory.loss(target_features, slots, 0.05).item(), rel=1e-2)
    assert set(output.parts) == {"source", "target"}
    assert output.parts["source"].item() == pytest.approx(loss_source, rel=1e-5)
    assert output.parts["target"].item() == pytest.approx(loss_target, rel=1e-5)
    assert output.total.item() == pytest.approx(loss_source + loss_target, rel=1e-5)
    output.total.backward()
    assert source_features.grad is not None and target_features.grad is not None
    features, state_slots = output.state
    assert features.dtype == torch.float32 and not features.requires_grad
    assert torch.equal(features, torch.cat([source_features, target_features]).detach())
    assert state_slots.tolist() == [2, 0, 3, 2, 9, 21, 4]
    with pytest.raises(ValueError, match="^SpCL trains on target batches$"):
        spcl.step(network, x, None, epoch=1)


def test_the_forward_runs_both_domains_through_their_batchnorms(shared_spcl: SpCL) -> None:
    spcl = shared_spcl
    images = torch.randn(4, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    assert isinstance(spcl.network, SpCLForward) and spcl.network.model is spcl.model
    with torch.no_grad():
        got = spcl.network(images[:2], images[2:])
        expected = spcl.model.forward_domains(images[:2], images[2:])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, expected, strict=True))


def test_after_step_moves_every_slot_with_the_momentum_in_batch_order(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    spcl = build_spcl(source, target, tmp_path, memory_momentum=0.35)
    memory = spcl.memory.features
    memory.copy_(unit_rows(SOURCE_IDS + TARGET_IMAGES, 3))
    expected = memory.clone()
    features = torch.randn(5, DIM, generator=torch.Generator().manual_seed(4))
    slots = torch.tensor([1, 9, 1, 20, 1])  # a source class three times, as in a P x K batch
    spcl.after_step(StepOutput(torch.zeros(()), {}, (features, slots)), None, 0)
    for feature, slot in zip(features, slots.tolist(), strict=True):
        expected[slot] = F.normalize(0.35 * expected[slot] + 0.65 * feature, dim=0)
    assert torch.allclose(memory, expected, atol=1e-6)


def test_the_memory_and_the_threshold_round_trip_through_the_state(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    trained = build_spcl(source, target, tmp_path)
    trained.memory.features.copy_(unit_rows(SOURCE_IDS + TARGET_IMAGES, 5))
    trained.memory.set_target_labels(torch.arange(TARGET_IMAGES) % 5)
    trained.independence_threshold = 0.3
    state = trained.state_dict()
    assert set(state) == {"memory", "independence_threshold"} and state["independence_threshold"] == 0.3
    resumed = build_spcl(source, target, tmp_path)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.memory.features, trained.memory.features)
    assert torch.equal(resumed.memory.labels, trained.memory.labels) and resumed.independence_threshold == 0.3


def test_signature_provenance_card_and_description(shared_spcl: SpCL) -> None:
    spcl = shared_spcl
    assert spcl.signature() == {"memory_slots": SOURCE_IDS + TARGET_IMAGES, "feature_dim": DIM}
    assert spcl.provenance() == {"setting": "SpCL", "backbone_weights": {"kind": "random"}}
    assert spcl.model_card() == MethodCard(
        SPCL_FEATURE, DIM, "SpCL", {"backbone_weights": {"kind": "random"}, "model": {"last_stride": 2}}
    )
    data = spcl.data
    assert (len(data.target.query), len(data.target.gallery)) == (9, 18)
    assert spcl.describe() == (
        "SpCL: source synthetic (16 images, 4 ids) → target synthetic (24 train images, 9 query, 18 gallery)"
    )


@pytest.mark.parametrize("last_stride", [1, 2])
def test_the_model_is_rebuilt_from_its_card(two_domains, tmp_path: Path, last_stride: int) -> None:
    source, target = two_domains
    spcl = build_spcl(source, target, tmp_path, last_stride=last_stride)
    card = ModelCard.from_dict(spcl.card([], 1), "card")
    model = SpCL.model_from_card(card, torch.device("cpu"))
    assert type(model) is SpCLModel and model.backbone.last_stride == last_stride
    assert model.state_dict().keys() == spcl.model.state_dict().keys()
    model.load_state_dict(spcl.model.state_dict())
    images = torch.randn(2, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model.eval()(images), spcl.model.eval()(images), atol=1e-5)


def test_check_config_names_the_refused_setting_in_one_line(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    config = small_config(source, target, tmp_path)
    assert SpCL.check_config(config) is None
    refused = [
        (override(config, dg=DGConfig(mixstyle_stages=("layer1",))),
         "--mixstyle, --snr and --rsc are ECN's domain-generalisation modules; SpCL takes none of them"),
        (override(config, source_only=True),
         "--source-only and --no-target are ECN's settings; SpCL always trains on the target"),
        (override(config, camstyle_dir=tmp_path),
         "--camstyle-dir feeds ECN's camera invariance; SpCL trains on the target's own images"),
    ]
    for bad, message in refused:
        with pytest.raises(EcnreidError, match=f"^{re.escape(message)}$"):
            SpCL.check_config(bad)


def test_sampling_groups_at_the_edges() -> None:
    clustered = np.array([0, 1, 1, 0, 2])
    assert sampling_groups(clustered, num_clusters=3, instances=2, seed=0).tolist() == clustered.tolist()
    alone = np.arange(5)  # nothing clustered: runs of 2, 2 and 1
    groups = sampling_groups(alone, num_clusters=0, instances=2, seed=4)
    assert sorted(np.bincount(groups).tolist()) == [1, 2, 2] and set(groups.tolist()) == {0, 1, 2}
    assert alone.tolist() == list(range(5))  # the labels are not changed
    labels = np.array([0, 0, 1, 2, 3, 4, 5, 6])
    single = sampling_groups(labels, num_clusters=1, instances=1, seed=1)
    assert single[:2].tolist() == [0, 0] and sorted(single[2:].tolist()) == [1, 2, 3, 4, 5, 6]
    # The seed's permutation of the un-clustered images, cut into runs of `instances`.
    order = np.random.default_rng(9).permutation([2, 3, 4, 5, 6, 7])
    expected = labels.copy()
    for rank, image in enumerate(order):
        expected[image] = 1 + rank // 4
    assert sampling_groups(labels, num_clusters=1, instances=4, seed=9).tolist() == expected.tolist()
    assert sampling_groups(labels, 1, 4, 9).tolist() != sampling_groups(labels, 1, 4, 10).tolist()


def recording_backbones(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple, dict]]:
    """Record what SpCL asks ``build_backbone`` for; build a random ResNet-18 of the asked last stride."""
    calls: list[tuple[tuple, dict]] = []
    real = spcl_module.build_backbone

    def recorded(*args, **kwargs):
        calls.append((args, kwargs))
        return real("resnet18", pretrained=False, last_stride=kwargs["last_stride"])

    monkeypatch.setattr(spcl_module, "build_backbone", recorded)
    return calls


def test_a_new_spcl_builds_the_configured_backbone_and_starts_unclustered(two_domains, tmp_path: Path,
                                                                        monkeypatch) -> None:
    source, target = two_domains
    calls = recording_backbones(monkeypatch)
    weights = tmp_path / "imagenet.pth"
    config = override(small_config(source, target, tmp_path), pretrained=True, weights=weights, last_stride=1)
    spcl = SpCL(config, load_two_domains(config, announce=False), RunContext(torch.device("cpu")))
    assert calls == [(("resnet18",), {"weights": weights, "pretrained": True, "last_stride": 1})]
    assert (spcl.independence_threshold, spcl.pseudo_labels, spcl.epoch_statistics()) == (None, None, {})
    assert spcl.target_groups.tolist() == list(range(TARGET_IMAGES))
    assert spcl.source_labels.dtype == np.int64 and spcl.target_ids.dtype == np.int64


def test_the_card_asks_for_random_weights_of_its_own_arch_and_stride(monkeypatch) -> None:
    calls = recording_backbones(monkeypatch)
    details = {"model": {"last_stride": 1}}
    card = ModelCard("resnet34", 32, 16, SPCL_FEATURE, DIM, "spcl", "a", "b", 1, 1, details=details)
    model = SpCL.model_from_card(card, torch.device("cpu"))
    assert calls == [(("resnet34",), {"pretrained": False, "last_stride": 1})]
    assert type(model) is SpCLModel and model.backbone.last_stride == 1


def test_a_clustering_without_clusters_leaves_the_threshold_to_the_next(two_domains, tmp_path: Path,
                                                                       monkeypatch) -> None:
    source, target = two_domains
    shown = plain_console(monkeypatch)
    monkeypatch.setattr(spcl_module, "time", FakeClock(0.0, 0.5, 1.0, 1.5))
    spcl = build_spcl(source, target, tmp_path, **CLUSTERING)
    spcl.memory.features[SOURCE_IDS:] = unit_rows(TARGET_IMAGES, 0)  # strangers: no cluster forms
    spcl.before_epoch(0)
    assert spcl.independence_threshold is None and sorted(spcl.pseudo_labels.labels) == list(range(TARGET_IMAGES))
    true_ids = np.array([r.pid for r in spcl.data.target_train])
    nmi = float(normalized_mutual_info_score(true_ids, spcl.pseudo_labels.labels))
    assert spcl.epoch_statistics() == {
        "spcl_clusters": 0, "spcl_clustered": 0, "spcl_unclustered": TARGET_IMAGES, "spcl_dbscan_clusters": 0,
        "spcl_independence_iou": None, "spcl_purity": None, "spcl_nmi": nmi, "spcl_cluster_seconds": 0.5,
    }
    assert shown.getvalue() == (
        f"epoch 1 pseudo-labels: 0 clusters (0 images), 24 un-clustered (diagnosis: purity -, NMI {nmi:.3f}) "
        "in 0.5 s\n"
    )
    spcl.memory.features[SOURCE_IDS:] = clustered_rows(3)
    spcl.before_epoch(1)  # the first clustering with clusters fixes it
    assert spcl.independence_threshold == 0.25 and spcl.statistics["spcl_independence_iou"] == 0.75
