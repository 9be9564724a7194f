"""ECN (Zhong et al., CVPR 2019) as a method of the two-domain loop: source cross-entropy plus exemplar, camera
and neighbourhood invariance on an exemplar memory of the target training set.

Source only, DG only (``--no-target``) and the ablations are this method with terms switched off
(``ECNConfig``); the domain-generalisation modules plug into its model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ecnreid.config import ECNConfig, TrainConfig
from ecnreid.data.batches import LabelledBatch, UnlabelledBatch
from ecnreid.data.camstyle_dataset import (
    CAMSTYLE_FOLDER,
    CamStyleCoverage,
    CamStyleTargetDataset,
    apply_pseudo_cameras,
    camstyle_coverage,
    find_camstyle_dir,
    load_pseudo_cameras,
)
from ecnreid.data.records import ImageRecord, ReidDataset
from ecnreid.data.two_domains import TwoDomainData
from ecnreid.errors import EcnreidError
from ecnreid.evaluation.features import extract_features
from ecnreid.io import require_dir
from ecnreid.losses import (
    ecn_total_loss,
    knn_backend,
    nearest_slots_faiss,
    source_loss,
    target_invariance_loss,
)
from ecnreid.memory import ExemplarMemory
from ecnreid.methods.base import Method, RunContext, StepOutput
from ecnreid.models.card import ECN_FEATURE, MethodCard, ModelCard
from ecnreid.models.dg import build_rsc, dg_source_loss
from ecnreid.models.ecn import ECNModel
from ecnreid.models.factory import build_ecn_model, ecn_eval_network, ecn_model_details
from ecnreid.models.pooled import PooledBackbone
from ecnreid.models.rsc import RSC
from ecnreid.runtime import all_gather_cat

MEMORY_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def resolve_camstyle(
    config: TrainConfig, target: ReidDataset, target_train: list[ImageRecord]
) -> tuple[CamStyleCoverage, list[ImageRecord]]:
    """The complete CamStyle set camera invariance trains on, and the target records with its (pseudo) cameras.

    No set, or an incomplete one, stops the run: training on without it would be another setting than the
    one asked for."""
    domains = config.domains
    if domains.camstyle_dir is not None:
        folder = require_dir(domains.camstyle_dir, "--camstyle-dir", "CamStyle folder")
    else:
        looked_for = Path(target.root) / CAMSTYLE_FOLDER
        found = find_camstyle_dir(target.root)
        if found is None:
            raise EcnreidError(
                f"{looked_for}: no CamStyle set for camera invariance; make one with `ecnreid prepare --dataset "
                f"{domains.target} --root {domains.target_root}`, point --camstyle-dir at one, or train without "
                "camera invariance with --no-camera"
            )
        folder = found
    if (mapping := load_pseudo_cameras(folder)) is not None:
        target_train = apply_pseudo_cameras(target_train, mapping)
    num_cameras = max(r.camid for r in target_train) + 1
    coverage = camstyle_coverage(target_train, folder, num_cameras)
    if not coverage.complete:
        raise EcnreidError(
            f"{folder}: incomplete CamStyle set, {coverage.missing} of {coverage.expected} images missing "
            f"(first: {coverage.first_missing}); rerun `ecnreid prepare` to fill it, or train with --no-camera"
        )
    return coverage, target_train


class TwoDomainForward(nn.Module):
    """One forward call that runs the source and the target batch side by side (BatchNorm statistics per
    domain; cross-domain MixStyle mixes the two), so DistributedDataParallel sees a single forward per backward.

    RSC, when on, replaces the source logits with those of its challenged feature map.
    """

    def __init__(self, model: ECNModel, rsc: RSC | None = None) -> None:
        super().__init__()
        self.model = model
        self.rsc = rsc

    def forward(
        self, source_images: torch.Tensor, source_labels: torch.Tensor, target_images: torch.Tensor | None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        out_x, out_u = self.model.forward_domains(source_images, target_images)
        if self.rsc is not None and self.training:

            def logits_of(feature_map: torch.Tensor) -> torch.Tensor:
                return self.model.forward_head(feature_map)["source_logits"]

            challenged = self.rsc(out_x["feature_map"], source_labels, logits_of, eval_module=self.model)
            out_x = {**out_x, "source_logits": logits_of(challenged)}
        return out_x, out_u


class ECN(Method):
    """ECN's model, exemplar memory and losses."""

    name = "ecn"

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Cross-domain MixStyle needs target batches."""
        if config.dg.mixstyle_stages and config.dg.mixstyle_mix == "crossdomain" and not config.ecn.uses_target:
            raise EcnreidError(
                "--mixstyle-mix crossdomain mixes source with target statistics: it needs target images "
                "(not --source-only or --no-target); use --mixstyle-mix random"
            )

    def __init__(self, config: TrainConfig, data: TwoDomainData, run: RunContext) -> None:
        super().__init__(config, data, run)
        self.ecn: ECNConfig = config.ecn
        self.camstyle: CamStyleCoverage | None = None
        if self.ecn.uses_target and self.ecn.use_camera:
            self.camstyle, data.target_train = resolve_camstyle(config, data.target, data.target_train)
        self.num_target_cameras = max(r.camid for r in data.target_train) + 1
        self.model: ECNModel = build_ecn_model(config.model, config.dg, data.num_source_classes).to(run.device)
        self.memory: ExemplarMemory | None = None
        self.knn = "topk"
        if self.ecn.uses_target:
            self.memory = ExemplarMemory(
                len(data.target_train), config.model.embedding_dim, dtype=MEMORY_DTYPES[self.ecn.memory_dtype]
            ).to(run.device)
            self.knn = knn_backend(self.ecn.knn, run.device)
        self.network = TwoDomainForward(self.model, build_rsc(config.dg)).to(run.device)

    @property
    def uses_target(self) -> bool:
        return self.memory is not None

    def target_dataset(self, transform: Any) -> Dataset | None:
        if self.memory is None:
            return None
        return CamStyleTargetDataset(
            self.data.target_train,
            self.camstyle.camstyle_dir if self.camstyle is not None else None,
            self.num_target_cameras,
            transform,
            scheme=self.camstyle.scheme if self.camstyle is not None else None,
        )

    def parameter_groups(self) -> list[dict[str, Any]]:
        return self.model.parameter_groups(self.config.optim.lr, self.config.optim.backbone_lr_mult)

    def ddp_find_unused_parameters(self) -> bool:
        """The DG modules leave some parameters without gradient in some steps (RSC, SNR's classifiers)."""
        return self.config.dg.any

    def step(self, network: nn.Module, x: LabelledBatch, u: UnlabelledBatch | None, epoch: int) -> StepOutput:
        out_x, out_u = network(x.images, x.pids, u.images if u is not None else None)
        loss_x = source_loss(out_x["source_logits"], x.pids) + dg_source_loss(self.model, out_x, x.pids, self.config.dg)
        parts = {"source": loss_x}
        total = loss_x
        target_features = None
        if out_u is not None and self.memory is not None and u is not None:
            target_features = out_u["target_embedding"].float()
            parts["target"] = self.target_loss(target_features, u.indices, epoch)
            total = ecn_total_loss(loss_x, parts["target"], self.ecn.lam)
        state = target_features.detach() if target_features is not None else None
        return StepOutput(total=total, parts=parts, state=state)

    def neighbours_on(self, epoch: int) -> bool:
        return self.memory is not None and self.ecn.use_neighbour and epoch >= self.ecn.neighbour_start_epoch

    def target_loss(self, features: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """ECN's target loss on the exemplar memory: the logits, the neighbour search and the loss run in
        float32 whatever autocast surrounds the call, as published."""
        assert self.memory is not None, "target_loss needs the exemplar memory"
        ecn = self.ecn
        with torch.autocast(features.device.type, enabled=False):
            features = features.float()
            logits = self.memory.logits(features, ecn.beta)
            neighbours = None
            use_neighbours = self.neighbours_on(epoch)  # the one place that decides, for top-k and faiss alike
            if use_neighbours and self.knn != "topk":
                neighbours = nearest_slots_faiss(features, self.memory.features, ecn.k)
            return target_invariance_loss(
                logits,
                indices,
                epoch,
                k=ecn.k,
                neighbour_start_epoch=ecn.neighbour_start_epoch,
                use_neighbourhood=use_neighbours,
                neighbours=neighbours,
            )

    def after_step(self, output: StepOutput, u: UnlabelledBatch | None, epoch: int) -> None:
        """The memory takes the step's target features with momentum α = alpha × epoch (all ranks' batches)."""
        if self.memory is None or output.state is None or u is None:
            return
        ctx = self.run.dist
        self.memory.update(all_gather_cat(output.state, ctx), all_gather_cat(u.indices, ctx), self.ecn.alpha * epoch)

    def before_training(self) -> None:
        """``--memory-init features``: every slot starts as its image's embedding under the initial model
        instead of zero, so that exemplar and neighbourhood targets are meaningful from the first step
        (with zeros, a short schedule visits each slot only a few times)."""
        if self.memory is None or self.ecn.memory_init != "features":
            return
        embeddings = target_embeddings(
            self.model,
            self.data.target_train,
            height=self.config.input.height,
            width=self.config.input.width,
            batch_size=max(32, self.config.input.batch_size),
            workers=self.config.input.workers,
            device=self.run.device,
            show_progress=self.run.dist.is_main,
        )
        self.memory.update(embeddings, torch.arange(len(embeddings), device=self.run.device), alpha=0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict() if self.memory is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.memory is not None:
            self.memory.load_state_dict(state["memory"])

    def signature(self) -> dict[str, Any]:
        return {
            "embedding_dim": self.config.model.embedding_dim,
            "memory_slots": len(self.data.target_train) if self.memory is not None else 0,
            "memory_dtype": self.ecn.memory_dtype,
        }

    def provenance(self) -> dict[str, Any]:
        """The setting, the backbone's initial weights, the CamStyle set and the neighbour search."""
        return {
            "setting": self.ecn.setting_name,
            "backbone_weights": self.model.backbone.weights_origin,
            "camstyle": self.camstyle.to_dict() if self.camstyle is not None else None,
            "knn_backend": self.knn if self.memory is not None else None,
        }

    def model_card(self) -> MethodCard:
        """ECN tests with L2-normalised pool5 (``ECNModel.forward`` in eval mode), not with the embedding."""
        dg = self.config.dg
        modules = {"mixstyle": list(dg.mixstyle_stages), "snr": list(dg.snr_stages), "rsc": dg.rsc}
        return MethodCard(
            ECN_FEATURE,
            self.model.backbone.out_channels,
            self.ecn.setting_name,
            {
                "backbone_weights": self.model.backbone.weights_origin,
                "dg": modules,
                "model": ecn_model_details(self.config.model, dg),
            },
        )

    @classmethod
    def model_from_card(cls, card: ModelCard, device: torch.device) -> nn.Module:
        """The backbone with its DG modules, pooled: ``ECNModel``'s eval-mode feature without the head."""
        return ecn_eval_network(card.arch, card.details["model"]).to(device)

    def notices(self) -> list[str]:
        notes = []
        origin = self.model.backbone.weights_origin
        frozen_stages = self.config.model.frozen_stages
        if origin["kind"] == "random" and frozen_stages > 0:
            frozen = ", ".join(self.model.backbone.stage_names[:frozen_stages])
            notes.append(
                f"warning: random initial weights (--no-pretrained), and the stages {frozen} stay frozen "
                "at them (--frozen-stages 0 trains every stage)"
            )
        if self.memory is not None and self.ecn.knn == "faiss" and self.knn == "topk":  # no memory, no search
            notes.append(f"--knn faiss: this faiss build sees no GPU; neighbours by torch top-k on {self.run.device}")
        return notes

    def describe(self) -> str:
        d = self.data
        return (
            f"ECN {self.ecn.setting_name}: source {self.config.domains.source} ({len(d.source_train)} images, "
            f"{d.num_source_classes} ids) → target {self.config.domains.target} ({len(d.target_train)} train "
            f"images, {self.num_target_cameras} cameras, {len(d.target.query)} query, {len(d.target.gallery)} "
            "gallery)"
        )


@torch.no_grad()
def target_embeddings(
    model: ECNModel,
    records: list[ImageRecord],
    *,
    height: int,
    width: int,
    batch_size: int,
    workers: int,
    device: torch.device,
    show_progress: bool = True,
) -> torch.Tensor:
    """Unit-norm target-branch embeddings [N, D] of ``records`` (test transform, no dropout), by the training
    path: raw pool5 through the embedding, as the head takes it in training.

    The embedding BatchNorm normalises with the statistics of the whole set, as training normalises each
    target batch with its own; the eval-mode running statistics would leave every embedding sharing one
    large common direction.
    """
    was_training = model.training
    pool5 = extract_features(
        PooledBackbone(model.backbone, normalize=False).eval(),
        records,
        height=height,
        width=width,
        batch_size=batch_size,
        workers=workers,
        device=device,
        description="memory init",
        show_progress=show_progress,
        normalize=False,
    ).to(device)
    model.train(was_training)  # the bare backbone's mode switch bypasses ECNModel.train's frozen BatchNorms
    head = model.head
    embedding = F.batch_norm(
        head.embed(pool5), None, None, head.embed_bn.weight, head.embed_bn.bias, training=True, eps=head.embed_bn.eps
    )
    return F.normalize(embedding, dim=1)
