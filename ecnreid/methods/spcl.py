"""SpCL (Ge et al., "Self-paced Contrastive Learning with Hybrid Memory for Domain Adaptive Object Re-ID",
NeurIPS 2020) as a method of the two-domain loop.

One hybrid memory holds a centroid per source identity and a feature per target image. Every epoch the target
features are clustered (DBSCAN on the k-reciprocal Jaccard distance) and only the reliable part of each cluster
is kept (``ecnreid.clustering``); the source batch and the target batch then train one contrastive loss against
all source identities, target clusters and un-clustered target images (``HybridMemory.loss``), and the memory
takes each batch's features with momentum. Both domains pass the network with their own BatchNorms
(``models.dsbn``); the tested model uses the target's. Adam with a step schedule, P x K batches on both sides.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ecnreid.clustering import PseudoLabels, self_paced_labels
from ecnreid.config import SpCLConfig, TrainConfig
from ecnreid.data.batches import LabelledBatch, UnlabelledBatch, collate_labelled, collate_unlabelled
from ecnreid.data.camstyle_dataset import CamStyleTargetDataset
from ecnreid.data.image_dataset import ImageDataset
from ecnreid.data.loaders import TARGET_STREAM, LoaderFactory
from ecnreid.data.samplers import EpochLoader
from ecnreid.data.two_domains import TwoDomainData
from ecnreid.errors import EcnreidError
from ecnreid.evaluation.features import extract_features
from ecnreid.evaluation.reranking import jaccard_graph
from ecnreid.memory import HybridMemory
from ecnreid.methods.base import Method, RunContext, StepOutput
from ecnreid.models.backbones import build_backbone
from ecnreid.models.card import MethodCard, ModelCard
from ecnreid.models.spcl import SPCL_FEATURE, SpCLModel
from ecnreid.progress import console
from ecnreid.runtime import all_gather_cat


class SpCLForward(nn.Module):
    """The source and the target batch in one forward call (DistributedDataParallel sees one per backward)."""

    def __init__(self, model: SpCLModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_domains(source, target)


def sampling_groups(labels: np.ndarray, num_clusters: int, instances: int, seed: int) -> np.ndarray:
    """The identities the target's P x K order draws from: each cluster, and the un-clustered images (classes
    from ``num_clusters`` on) in random runs of ``instances``, so that each is drawn once per pass, as in the
    authors' sampler, instead of ``instances`` times."""
    groups = labels.copy()
    unclustered = np.flatnonzero(labels >= num_clusters)
    order = np.random.default_rng(seed).permutation(unclustered)
    groups[order] = num_clusters + np.arange(len(order)) // instances
    return groups


class SpCL(Method):
    """SpCL's model, hybrid memory, self-paced pseudo-labels and loss."""

    name = "spcl"

    def __init__(self, config: TrainConfig, data: TwoDomainData, run: RunContext) -> None:
        super().__init__(config, data, run)
        self.spcl: SpCLConfig = config.spcl
        m = config.model
        backbone = build_backbone(m.arch, weights=m.weights, pretrained=m.pretrained, last_stride=m.last_stride)
        self.model = SpCLModel(backbone).to(run.device)
        self.network = SpCLForward(self.model).to(run.device)
        self.num_source_classes = data.num_source_classes
        self.memory = HybridMemory(self.num_source_classes, len(data.target_train), backbone.out_channels)
        self.memory.to(run.device)
        self.num_target_cameras = max(r.camid for r in data.target_train) + 1
        self.source_labels = np.array([r.pid for r in data.source_train], dtype=np.int64)
        target_ids = np.array([r.pid for r in data.target_train], dtype=np.int64)
        # Diagnosis only (purity, NMI in the log): no target identity chooses anything.
        self.target_ids = target_ids if (target_ids >= 0).all() else None
        self.independence_threshold: float | None = None
        self.pseudo_labels: PseudoLabels | None = None
        self.target_groups = np.arange(len(data.target_train))
        self.statistics: dict[str, Any] = {}

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        if config.dg.any:
            raise EcnreidError(
                "--mixstyle, --snr and --rsc are ECN's domain-generalisation modules; SpCL takes none of them"
            )
        if not config.ecn.uses_target:
            raise EcnreidError("--source-only and --no-target are ECN's settings; SpCL always trains on the target")
        if config.domains.camstyle_dir is not None:
            raise EcnreidError("--camstyle-dir feeds ECN's camera invariance; SpCL trains on the target's own images")

    @property
    def uses_target(self) -> bool:
        return True

    def target_dataset(self, transform: Any) -> Dataset | None:
        return CamStyleTargetDataset(self.data.target_train, None, self.num_target_cameras, transform)

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": self.spcl.adam_lr}]

    def build_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """Adam, the learning rate times ``--spcl-lr-gamma`` every ``--spcl-lr-step`` epochs."""
        optimizer = torch.optim.Adam(
            self.parameter_groups(), lr=self.spcl.adam_lr, weight_decay=self.spcl.adam_weight_decay
        )
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, self.spcl.lr_step, gamma=self.spcl.lr_step_gamma)
        return optimizer, scheduler

    def build_loaders(self, factory: LoaderFactory) -> tuple[EpochLoader, EpochLoader | None]:
        """P x K batches: source identities, and the target's current clusters (read at every epoch)."""
        cfg = self.config
        source = factory.identity_loader(
            ImageDataset(self.data.source_train, factory.transform),
            cfg.input.batch_size,
            labels=lambda: self.source_labels,
            instances=self.spcl.instances,
            collate_fn=collate_labelled,
        )
        target = factory.identity_loader(
            self.target_dataset(factory.transform),
            cfg.domains.target_batch_size or cfg.input.batch_size,
            labels=lambda: self.target_groups,
            instances=self.spcl.instances,
            collate_fn=collate_unlabelled,
            stream=TARGET_STREAM,
        )
        return source, target

    def before_training(self) -> None:
        """The memory starts from the initial model: each source identity's mean feature, each target image's."""
        kwargs = {
            "height": self.config.input.height,
            "width": self.config.input.width,
            "batch_size": max(32, self.config.input.batch_size),
            "workers": self.config.input.workers,
            "device": self.run.device,
            "show_progress": self.run.dist.is_main,
        }
        source = extract_features(self.model, self.data.source_train, description="source centroids", **kwargs)
        target = extract_features(self.model, self.data.target_train, description="target features", **kwargs)
        pids = torch.from_numpy(self.source_labels)
        sums = torch.zeros(self.num_source_classes, source.shape[1]).index_add_(0, pids, source)
        rows = torch.cat([sums, target]).to(self.run.device)
        self.memory.update(rows, torch.arange(len(rows), device=self.run.device), alpha=0.0)
        self.model.train()

    def before_epoch(self, epoch: int) -> None:
        """Cluster the memory's target features; un-clustered images and unreliable cluster members become
        classes of their own. The independence threshold is fixed by the first clustering that has clusters."""
        start = time.perf_counter()
        graph = jaccard_graph(self.memory.features[self.num_source_classes :], self.spcl.k1, self.spcl.k2)
        labels = self_paced_labels(
            graph,
            eps=self.spcl.eps,
            eps_gap=self.spcl.eps_gap,
            min_samples=self.spcl.min_samples,
            independence_threshold=self.independence_threshold,
        )
        self.independence_threshold = labels.independence_threshold
        self.pseudo_labels = labels
        self.memory.set_target_labels(torch.from_numpy(labels.labels))
        seed = self.config.runtime.seed * 10_007 + epoch
        self.target_groups = sampling_groups(labels.labels, labels.num_clusters, self.spcl.instances, seed)
        stats = labels.statistics(self.target_ids)
        threshold = stats.pop("independence_threshold")
        stats["independence_iou"] = None if threshold is None else 1.0 - threshold  # the paper's form: IoU >= it
        stats["cluster_seconds"] = time.perf_counter() - start
        self.statistics = {f"spcl_{k}": v for k, v in stats.items()}
        if self.run.dist.is_main:
            console.print(self.describe_clusters(epoch))

    def describe_clusters(self, epoch: int) -> str:
        s = self.statistics
        line = (
            f"epoch {epoch + 1} pseudo-labels: {s['spcl_clusters']} clusters ({s['spcl_clustered']} images), "
            f"{s['spcl_unclustered']} un-clustered"
        )
        if s["spcl_independence_iou"] is not None:
            line += f", independence IoU >= {s['spcl_independence_iou']:.3f}"
        if "spcl_purity" in s:
            purity = "-" if s["spcl_purity"] is None else f"{s['spcl_purity']:.3f}"
            line += f" (diagnosis: purity {purity}, NMI {s['spcl_nmi']:.3f})"
        return line + f" in {s['spcl_cluster_seconds']:.1f} s"

    def epoch_statistics(self) -> dict[str, Any]:
        """The last clustering's statistics, for the epoch's row."""
        return dict(self.statistics)

    def step(self, network: nn.Module, x: LabelledBatch, u: UnlabelledBatch | None, epoch: int) -> StepOutput:
        if u is None:
            raise ValueError("SpCL trains on target batches")
        source_features, target_features = network(x.images, u.images)
        source_features, target_features = source_features.float(), target_features.float()
        target_slots = u.indices + self.num_source_classes
        temperature = self.spcl.temperature
        loss_source = self.memory.loss(source_features, x.pids, temperature)
        loss_target = self.memory.loss(target_features, target_slots, temperature)
        state = (
            torch.cat([source_features.detach(), target_features.detach()]),
            torch.cat([x.pids, target_slots]),
        )
        return StepOutput(loss_source + loss_target, {"source": loss_source, "target": loss_target}, state)

    def after_step(self, output: StepOutput, u: UnlabelledBatch | None, epoch: int) -> None:
        """Every feature of the step (all processes' batches) moves its slot, in batch order."""
        features, slots = output.state
        ctx = self.run.dist
        momentum = self.spcl.memory_momentum
        self.memory.update_in_order(all_gather_cat(features, ctx), all_gather_cat(slots, ctx), momentum)

    def state_dict(self) -> dict[str, Any]:
        """The memory (its features, and its labels: the source classes, then the last pseudo-labels) and the
        independence threshold fixed by the first clustering. ``before_epoch`` re-clusters the restored memory
        on resume, which gives the straight run's pseudo-labels again."""
        return {"memory": self.memory.state_dict(), "independence_threshold": self.independence_threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state["memory"])
        self.independence_threshold = state["independence_threshold"]

    def signature(self) -> dict[str, Any]:
        return {"memory_slots": self.memory.num_slots, "feature_dim": self.memory.dim}

    def provenance(self) -> dict[str, Any]:
        return {"setting": "SpCL", "backbone_weights": self.model.backbone.weights_origin}

    def model_card(self) -> MethodCard:
        return MethodCard(
            SPCL_FEATURE,
            self.model.out_channels,
            "SpCL",
            {
                "backbone_weights": self.model.backbone.weights_origin,
                "model": {"last_stride": self.model.backbone.last_stride},
            },
        )

    @classmethod
    def model_from_card(cls, card: ModelCard, device: torch.device) -> nn.Module:
        """The trained ``SpCLModel`` (random weights until its state_dict is loaded)."""
        backbone = build_backbone(card.arch, pretrained=False, last_stride=card.details["model"]["last_stride"])
        return SpCLModel(backbone).to(device)

    def describe(self) -> str:
        d = self.data
        return (
            f"SpCL: source {self.config.domains.source} ({len(d.source_train)} images, {d.num_source_classes} ids) "
            f"→ target {self.config.domains.target} ({len(d.target_train)} train images, {len(d.target.query)} "
            f"query, {len(d.target.gallery)} gallery)"
        )
