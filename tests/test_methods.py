"""The method registry: a second method is one class plus a name, trained by the same loop untouched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from typer.testing import CliRunner

import ecnreid.methods
from ecnreid.config import DomainsConfig, ModelConfig, TrainConfig, override
from ecnreid.data.batches import LabelledBatch, UnlabelledBatch, collate_unlabelled
from ecnreid.data.image_dataset import ImageDataset
from ecnreid.engine.hooks import Hook
from ecnreid.errors import EcnreidError
from ecnreid.inference.card import ModelCard
from ecnreid.methods import LoaderFactory, Method, StepOutput
from ecnreid.models.backbones import build_backbone
from ecnreid.models.pooled import PooledBackbone
from ecnreid.runstate import load_checkpoint
from ecnreid.training import build_loop, train


class CentroidPull(Method):
    """A toy two-domain method: source cross-entropy, plus pulling each target feature towards the mean of its
    batch. It counts its steps as its own state."""

    def __init__(self, config, data, run) -> None:
        super().__init__(config, data, run)
        backbone = build_backbone(config.model.arch, pretrained=False)
        self.model = PooledBackbone(backbone).to(run.device)
        self.classifier = nn.Linear(backbone.out_channels, data.num_source_classes).to(run.device)
        self.network = nn.ModuleDict({"model": self.model, "classifier": self.classifier})
        self.steps = 0

    @property
    def uses_target(self) -> bool:
        return True

    def target_dataset(self, transform: Any) -> Dataset:
        class Unlabelled(Dataset):
            def __init__(self, records) -> None:
                self.images = ImageDataset(records, transform)

            def __len__(self) -> int:
                return len(self.images)

            def __getitem__(self, index: int):
                image, _, camid, _ = self.images[index]
                return image, camid, index

        return Unlabelled(self.data.target_train)

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.network.parameters() if p.requires_grad]}]

    def step(self, network: nn.Module, x: LabelledBatch, u: UnlabelledBatch | None, epoch: int) -> StepOutput:
        source = network["classifier"](self.model.backbone(x.images).mean(dim=(2, 3)))
        target = self.model.backbone(u.images).mean(dim=(2, 3))
        parts = {"source": F.cross_entropy(source, x.pids), "pull": (target - target.mean(0)).pow(2).mean()}
        return StepOutput(total=parts["source"] + 0.1 * parts["pull"], parts=parts)

    def after_step(self, output: StepOutput, u: UnlabelledBatch | None, epoch: int) -> None:
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "classifier": self.classifier.state_dict()}  # trained, but not in `model`

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.classifier.load_state_dict(state["classifier"])

    @classmethod
    def model_from_card(cls, card: ModelCard, device: torch.device) -> nn.Module:
        return PooledBackbone(build_backbone(card.arch, pretrained=False)).to(device)


def test_a_method_registered_in_one_line_trains_for_an_epoch(two_domains, tmp_path: Path, monkeypatch) -> None:
    source, target = two_domains
    monkeypatch.setitem(ecnreid.methods.METHODS, "centroid", CentroidPull)
    config = TrainConfig(
        domains=DomainsConfig("synthetic", source, "synthetic", target),
        out=tmp_path / "run",
        method="centroid",
        model=ModelConfig(arch="resnet18", pretrained=False),
    )
    config = override(config, epochs=1, batch_size=8, height=32, width=16, workers=0, device="cpu", every=1)
    summary = train(config)
    assert summary["method"] == "centroid" and summary["final"]["epoch"] == 1
    row = json.loads((tmp_path / "run" / "log.jsonl").read_text())
    assert {"loss_total", "loss_source", "loss_pull", "rank1", "mAP"} <= row.keys()
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["method"]["steps"] == 2 and state["signature"]["method"] == "centroid"  # 16 images / 8


def test_an_unknown_method_is_a_one_line_error(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    config = TrainConfig(domains=DomainsConfig("synthetic", source, "synthetic", target), method="cycle")
    with pytest.raises(EcnreidError, match="--method cycle: unknown; valid methods: ecn"):
        ecnreid.methods.build_method(config, None, None)  # type: ignore[arg-type]


def test_ecn_is_registered() -> None:
    assert ecnreid.methods.METHODS["ecn"].__name__ == "ECN"
    assert torch.is_tensor(StepOutput(torch.zeros(()), {}).total)


class Relabelling(CentroidPull):
    """A toy clustering-style method: it relabels the target in ``before_epoch``, draws P x K target batches over
    those labels, and trains with its own optimiser and schedule."""

    name = "relabelling"

    def __init__(self, config, data, run) -> None:
        super().__init__(config, data, run)
        self.labels = np.full(len(data.target_train), -1)  # no labels until the first epoch assigns them
        self.batch_labels: list[np.ndarray] = []

    def before_epoch(self, epoch: int) -> None:
        self.labels[:] = (np.arange(len(self.labels)) + epoch) % 6

    def build_loaders(self, factory: LoaderFactory):
        source, _ = super().build_loaders(factory)
        target = factory.identity_loader(
            self.target_dataset(factory.transform), 8, labels=lambda: self.labels, instances=2,
            collate_fn=collate_unlabelled,
        )
        return source, target

    def build_optimizer(self):
        optimizer = torch.optim.Adam(self.parameter_groups(), lr=1e-3)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    def step(self, network: nn.Module, x: LabelledBatch, u: UnlabelledBatch | None, epoch: int) -> StepOutput:
        self.batch_labels.append(self.labels[u.indices.numpy()].reshape(4, 2))
        return super().step(network, x, u, epoch)


class StepRecorder(Hook):
    def __init__(self) -> None:
        self.steps: list[tuple[int, int, set[str]]] = []

    def after_step(self, loop, epoch: int, iteration: int, values: dict[str, float]) -> None:
        self.steps.append((epoch, iteration, set(values)))


def test_a_method_brings_its_optimiser_loaders_and_per_epoch_labels(two_domains, tmp_path: Path, monkeypatch) -> None:
    source, target = two_domains
    monkeypatch.setitem(ecnreid.methods.METHODS, "relabelling", Relabelling)
    config = TrainConfig(
        domains=DomainsConfig("synthetic", source, "synthetic", target),
        out=tmp_path / "run",
        method="relabelling",
        model=ModelConfig(arch="resnet18", pretrained=False),
    )
    config = override(config, epochs=2, batch_size=8, height=32, width=16, workers=0, device="cpu", every=0)
    recorder = StepRecorder()
    loop = build_loop(config, extra_hooks=[recorder])
    loop.fit()
    assert isinstance(loop.optimizer, torch.optim.Adam)
    assert [row["lr"] for row in loop.history] == pytest.approx([5e-4, 2.5e-4])  # stepped once per epoch
    # before_epoch ran before the loaders were re-seeded: every batch is 4 identities x 2 images of this
    # epoch's labels (the labels start as -1, which no identity batch could be drawn from)
    assert len(loop.method.batch_labels) == 4
    for labels in loop.method.batch_labels:
        assert (labels == labels[:, :1]).all() and len(set(labels[:, 0])) == 4 and (labels >= 0).all()
    assert [(epoch, iteration) for epoch, iteration, _ in recorder.steps] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all({"loss_total", "loss_source", "loss_pull"} == keys for _, _, keys in recorder.steps)


def test_a_method_is_checked_where_it_is_looked_up(two_domains, tmp_path: Path, monkeypatch) -> None:
    class Picky(CentroidPull):
        @classmethod
        def check_config(cls, config: TrainConfig) -> None:
            if config.optim.epochs > 1:
                raise EcnreidError("--epochs: picky trains one epoch")

    source, target = two_domains
    monkeypatch.setitem(ecnreid.methods.METHODS, "picky", Picky)
    config = TrainConfig(domains=DomainsConfig("synthetic", source, "synthetic", target), out=tmp_path / "run",
                         method="picky")
    with pytest.raises(EcnreidError, match="--epochs: picky trains one epoch"):
        train(override(config, epochs=2))
    assert not (tmp_path / "run").exists()
    assert ecnreid.methods.resolve_method(override(config, epochs=1)) is Picky


def test_a_registered_method_trains_through_the_cli_and_its_checkpoint_serves_every_command(
    two_domains, tmp_path: Path, monkeypatch
) -> None:
    """A method without a ``setting``: the run ends with its summary table and ``metrics.json``, and extract,
    search and export rebuild its model from the checkpoint through the registry."""
    from ecnreid.cli import app

    source, target = two_domains
    monkeypatch.setitem(ecnreid.methods.METHODS, "centroid", CentroidPull)
    runner = CliRunner()
    run = tmp_path / "run"
    domains = ["--source", "synthetic", "--source-root", str(source), "--target", "synthetic", "--target-root"]
    sizes = ["--arch", "resnet18", "--no-pretrained", "--height", "32", "--width", "16", "--batch-size", "8"]
    args = ["train", "--method", "centroid", *domains, str(target), *sizes, "--epochs", "2", "--eval-every", "1"]
    result = runner.invoke(app, [*args, "--workers", "0", "--device", "cpu", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert "centroid: synthetic → synthetic" in result.output and "2 (final)" in result.output
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "centroid" and "setting" not in metrics
    assert metrics["final"] == {key: log[-1][key] for key in metrics["final"]} and metrics["final"]["epoch"] == 2
    assert [row["epoch"] for row in metrics["evaluations"]] == [1, 2]
    checkpoint = run / "last.pt"
    common = ["--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0"]

    feats = tmp_path / "feats"
    gallery = ["--images", str(target / "bounding_box_test")]
    result = runner.invoke(app, ["extract", *common, *gallery, "--out", str(feats)])
    assert result.exit_code == 0, result.output
    assert np.load(feats / "features.npy").shape[1] == 512
    result = runner.invoke(app, ["search", *common, "--query", str(target / "query"), "--gallery", str(feats),
                                 "--out", str(tmp_path / "search")])
    assert result.exit_code == 0, result.output
    searched = json.loads((tmp_path / "search" / "results.json").read_text())
    queries = len(list((target / "query").iterdir()))
    assert searched["card"]["method"] == "centroid" and len(searched["results"]) == queries
    exported = tmp_path / "model.pt"
    result = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--format", "torchscript",
                                 "--out", str(exported)])
    assert result.exit_code == 0, result.output
    assert exported.is_file()


def test_a_checkpoint_of_a_method_this_ecnreid_lacks_is_a_one_line_error(two_domains, tmp_path: Path) -> None:
    from inference_checkpoint import train_tiny_checkpoint

    from ecnreid.inference.adapted import load_adapted_model

    checkpoint, _ = train_tiny_checkpoint(tmp_path)
    state = load_checkpoint(checkpoint)
    state["card"]["method"] = "cycle"
    torch.save(state, tmp_path / "cycle.pt")
    with pytest.raises(EcnreidError, match="trained with the method 'cycle', which this ecnreid does not have"):
        load_adapted_model(tmp_path / "cycle.pt")


def test_a_run_with_per_epoch_labels_and_its_own_optimiser_resumes_exactly(
    two_domains, tmp_path: Path, monkeypatch
) -> None:
    source, target = two_domains
    monkeypatch.setitem(ecnreid.methods.METHODS, "relabelling", Relabelling)
    config = TrainConfig(
        domains=DomainsConfig("synthetic", source, "synthetic", target),
        method="relabelling",
        model=ModelConfig(arch="resnet18", pretrained=False),
    )
    config = override(config, batch_size=8, height=32, width=16, workers=0, device="cpu", every=0)
    train(override(config, out=tmp_path / "straight", epochs=2))
    train(override(config, out=tmp_path / "resumed", epochs=1))
    train(override(config, out=tmp_path / "resumed", epochs=2, resume=True))
    straight, resumed = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert straight["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    assert [row["loss_total"] for row in straight["history"]] == [row["loss_total"] for row in resumed["history"]]
