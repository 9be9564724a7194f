"""The ECN trainer (Zhong et al., CVPR 2019): source cross-entropy plus exemplar, camera and
neighbourhood invariance on an exemplar memory of the target training set.

One epoch is one pass over the labelled source loader (``x``); the unlabelled target loader (``u``) cycles.
Every epoch's randomness is re-seeded from ``(seed, epoch)`` so that a resumed run continues exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ecnreid.config import TrainConfig, config_to_dict
from ecnreid.data.camstyle_dataset import (
    CAMSTYLE_FOLDER,
    CamStyleCoverage,
    CamStyleTargetDataset,
    apply_pseudo_cameras,
    camstyle_coverage,
    find_camstyle_dir,
    load_pseudo_cameras,
)
from ecnreid.data.datasets import read_dataset
from ecnreid.data.image_dataset import ImageDataset, verify_images
from ecnreid.data.records import ImageRecord, ReidDataset, relabel_pids
from ecnreid.data.samplers import build_loader, cycle
from ecnreid.data.transforms import build_train_transform
from ecnreid.engine.checkpoint import check_resume_compatible, load_checkpoint, save_checkpoint
from ecnreid.errors import EcnreidError
from ecnreid.evaluation.features import PooledBackbone, extract_features
from ecnreid.evaluation.runner import evaluate_model, metrics_row
from ecnreid.io import append_jsonl, ensure_output_dir, require_dir, sweep_stale_temp_files, write_json
from ecnreid.losses import (
    ecn_total_loss,
    knn_backend,
    nearest_slots_faiss,
    source_loss,
    target_invariance_loss,
)
from ecnreid.memory import ExemplarMemory
from ecnreid.models.dg import build_rsc, dg_source_loss
from ecnreid.models.ecn import ECNModel
from ecnreid.models.factory import build_ecn_model
from ecnreid.models.rsc import RSC
from ecnreid.progress import console, make_progress
from ecnreid.runtime import DistributedContext, all_gather_cat, init_distributed, is_interruption, seed_everything

MEMORY_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
KNN_METHODS = ("topk", "faiss")  # topk of the logits is ~100x faster on CPU (bench/knn_speed.py)
# What `metrics.json` reports of the run's result: the final epoch's target scores (for watching, never selection).
RESULT_KEYS = ("epoch", "rank1", "rank5", "rank10", "mAP", "mINP")
MEMORY_INITS = ("zeros", "features")


@dataclass
class TrainingData:
    """The records a run trains and evaluates on."""

    source_train: list[ImageRecord]
    num_source_classes: int
    target: ReidDataset
    target_train: list[ImageRecord]
    num_target_cameras: int
    camstyle: CamStyleCoverage | None

    @property
    def camstyle_dir(self) -> Path | None:
        return self.camstyle.camstyle_dir if self.camstyle is not None else None


def resolve_camstyle(config: TrainConfig, target: ReidDataset, target_train: list[ImageRecord]) -> tuple[
    CamStyleCoverage, list[ImageRecord]
]:
    """The complete CamStyle set camera invariance trains on, and the target records with its (pseudo) cameras.

    No set, or an incomplete one, stops the run: training on without it would be another setting than the
    one asked for."""
    if config.camstyle_dir is not None:
        folder = require_dir(config.camstyle_dir, "--camstyle-dir", "CamStyle folder")
    else:
        looked_for = Path(target.root) / CAMSTYLE_FOLDER
        found = find_camstyle_dir(target.root)
        if found is None:
            raise EcnreidError(
                f"{looked_for}: no CamStyle set for camera invariance; make one with `ecnreid prepare --dataset "
                f"{config.target} --root {config.target_root}`, point --camstyle-dir at one, or train without "
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


def load_training_data(config: TrainConfig, *, announce: bool = True) -> TrainingData:
    """Read source and target, relabel source ids, check the CamStyle set when camera invariance is on."""
    source = read_dataset(config.source, config.source_root, require_test=False)
    target = read_dataset(config.target, config.target_root, require_test=True)
    source_train = relabel_pids(source.train)
    target_train = list(target.train)
    if config.skip_bad_images:
        source_train, bad_source = verify_images(source_train)
        target_train, bad_target = verify_images(target_train)
        if announce and (bad_source or bad_target):
            console.print(f"[yellow]skipped {len(bad_source) + len(bad_target)} undecodable images")
    camstyle = None
    if config.uses_target_training and config.use_camera:
        camstyle, target_train = resolve_camstyle(config, target, target_train)
    num_target_cameras = max(r.camid for r in target_train) + 1
    return TrainingData(
        source_train=source_train,
        num_source_classes=len({r.pid for r in source_train}),
        target=target,
        target_train=target_train,
        num_target_cameras=num_target_cameras,
        camstyle=camstyle,
    )


class TwoDomainForward(nn.Module):
    """One forward call that runs the source and the target batch side by side (BatchNorm statistics per
    domain; cross-domain MixStyle mixes the two), so DistributedDataParallel sees a single forward per backward.

    The target batch runs first so that modules which keep state of their last pass (SNR) hold the source
    batch's. RSC, when on, replaces the source logits with those of its challenged feature map.
    """

    def __init__(self, model: ECNModel, rsc: RSC | None = None) -> None:
        super().__init__()
        self.model = model
        self.rsc = rsc

    def forward(
        self, source_images: torch.Tensor, source_labels: torch.Tensor, target_images: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        out_x, out_u = self.model.forward_domains(source_images, target_images)
        if self.rsc is not None and self.training:

            def logits_of(feature_map: torch.Tensor) -> torch.Tensor:
                return self.model.forward_head(feature_map)["source_logits"]

            challenged = self.rsc(out_x["feature_map"], source_labels, logits_of, eval_module=self.model)
            out_x = {**out_x, "source_logits": logits_of(challenged)}
        return out_x, out_u


class ECNTrainer:
    """Trains ECN as configured; ``fit()`` returns the final summary (also written as ``metrics.json``).

    ``data`` replaces reading the datasets (benchmarks feed tensors to :meth:`train_step` directly).
    """

    def __init__(self, config: TrainConfig, data: TrainingData | None = None) -> None:
        if config.knn not in KNN_METHODS:
            raise EcnreidError(f"--knn {config.knn}: expected one of {', '.join(KNN_METHODS)}")
        if config.memory_init not in MEMORY_INITS:
            raise EcnreidError(f"--memory-init {config.memory_init}: expected one of {', '.join(MEMORY_INITS)}")
        if config.dg.mixstyle_stages and config.dg.mixstyle_mix == "crossdomain" and not config.uses_target_training:
            raise EcnreidError(
                "--mixstyle-mix crossdomain mixes source with target statistics: it needs target images "
                "(not --source-only or --no-target); use --mixstyle-mix random"
            )
        if config.uses_target_training and config.memory_dtype not in MEMORY_DTYPES:
            raise EcnreidError(f"--memory-dtype {config.memory_dtype}: expected one of {sorted(MEMORY_DTYPES)}")
        self.config = config
        self.ctx, self.device = init_distributed(config.device)
        self.out = Path(config.out)
        if self.ctx.is_main:
            ensure_output_dir(self.out, "--out")
        seed_everything(config.seed)
        self.data = data if data is not None else load_training_data(config, announce=self.ctx.is_main)
        self.model = build_ecn_model(config.model, config.dg, self.data.num_source_classes).to(self.device)
        self.memory: ExemplarMemory | None = None
        self.knn = "topk"
        if config.uses_target_training:
            self.memory = ExemplarMemory(
                len(self.data.target_train), config.model.embedding_dim, dtype=MEMORY_DTYPES[config.memory_dtype]
            ).to(self.device)
            self.knn = knn_backend(config.knn, self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameter_groups(config.lr, config.backbone_lr_mult),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=True,
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=config.lr_step, gamma=0.1)
        self.use_amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        forward = TwoDomainForward(self.model, build_rsc(config.dg)).to(self.device)
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(forward, device_ids=ids, find_unused_parameters=config.dg.any)
        self.forward = forward
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- bookkeeping
    def signature(self) -> dict[str, Any]:
        """What must match between a checkpoint and a run that resumes it."""
        return {
            "source": f"{self.config.source}:{len(self.data.source_train)}",
            "target": f"{self.config.target}:{len(self.data.target_train)}",
            "memory_slots": len(self.data.target_train) if self.memory is not None else 0,
            "num_source_classes": self.data.num_source_classes,
            "embedding_dim": self.config.model.embedding_dim,
            "arch": self.config.model.arch,
            "memory_dtype": self.config.memory_dtype,
        }

    def provenance(self) -> dict[str, Any]:
        """What the run actually trains with: the setting, the backbone's initial weights, the CamStyle set
        and the neighbour search (written into config.json and metrics.json)."""
        camstyle = self.data.camstyle
        return {
            "setting": self.config.setting_name,
            "backbone_weights": self.model.backbone.weights_origin,
            "camstyle": camstyle.to_dict() if camstyle is not None else None,
            "knn_backend": self.knn if self.memory is not None else None,
        }

    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "memory": self.memory.state_dict() if self.memory is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "history": self.history,
            "rng": {"torch": torch.get_rng_state(), "cuda": _cuda_rng_state()},
            "config": config_to_dict(self.config),
            "provenance": self.provenance(),
            "signature": self.signature(),
        }

    def maybe_resume(self) -> None:
        last = self.out / "last.pt"
        if not self.config.resume:
            if last.exists():
                raise EcnreidError(
                    f"{last}: a run already exists here; pass --resume to continue it or choose another --out"
                )
            return
        if not last.exists():
            if self.ctx.is_main:
                console.print(f"[yellow]--resume: no checkpoint at {last}; starting a new run")
            return
        state = load_checkpoint(last, map_location=self.device)
        check_resume_compatible(state.get("signature", {}), self.signature(), last)
        self.model.load_state_dict(state["model"])
        if self.memory is not None:
            self.memory.load_state_dict(state["memory"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.start_epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        if self.ctx.is_main:
            console.print(f"resumed {last} at epoch {self.start_epoch}")

    # ----------------------------------------------------------------- data per epoch
    def _epoch_loaders(self, epoch: int) -> tuple[int, Iterator, Iterator | None]:
        cfg = self.config
        per_rank = max(1, cfg.batch_size // self.ctx.world_size)
        per_rank_u = max(1, (cfg.target_batch_size or cfg.batch_size) // self.ctx.world_size)
        transform = build_train_transform(cfg.height, cfg.width)
        epoch_seed = cfg.seed * 10_007 + epoch
        source_loader = build_loader(
            ImageDataset(self.data.source_train, transform),
            batch_size=per_rank,
            shuffle=True,
            drop_last=True,
            workers=cfg.workers,
            seed=epoch_seed,
            distributed=self.ctx.enabled,
        )
        if len(source_loader) == 0:
            raise EcnreidError(
                f"{cfg.source_root}: {len(self.data.source_train)} source images is fewer than one batch of {per_rank}"
            )
        iters = cfg.iters_per_epoch or len(source_loader)
        target_iter = None
        if self.memory is not None:
            target_dataset = CamStyleTargetDataset(
                self.data.target_train,
                self.data.camstyle_dir,
                self.data.num_target_cameras,
                transform,
                scheme=self.data.camstyle.scheme if self.data.camstyle is not None else None,
            )
            target_loader = build_loader(
                target_dataset,
                batch_size=per_rank_u,
                shuffle=True,
                drop_last=True,
                workers=cfg.workers,
                seed=epoch_seed + 7_919,
                distributed=self.ctx.enabled,
            )
            if len(target_loader) == 0:
                raise EcnreidError(
                    f"{cfg.target_root}: {len(self.data.target_train)} target images is fewer than one batch"
                )
            target_iter = cycle(target_loader)
        return iters, cycle(source_loader), target_iter

    # ----------------------------------------------------------------- one epoch
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.config
        # Re-seed per epoch: dropout, erasing and CamStyle draws depend only on (seed, epoch, rank).
        seed_everything(cfg.seed * 10_007 + epoch * 101 + self.ctx.rank)
        iters, source_iter, target_iter = self._epoch_loaders(epoch)
        self.forward.train()
        sums = {"loss_total": 0.0, "loss_source": 0.0, "loss_target": 0.0}
        images_seen = 0
        start = time.perf_counter()
        progress = make_progress(transient=False)
        with progress if self.ctx.is_main else nullcontext():
            task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=iters, unit="it", info="")
            for step in range(iters):
                images_x, labels_x, *_ = next(source_iter)
                images_u = indices_u = None
                if target_iter is not None:
                    batch_u = next(target_iter)
                    images_u, indices_u = batch_u[0], batch_u[-1]
                losses = self.train_step(epoch, images_x, labels_x, images_u, indices_u, iteration=step)
                for key, value in losses.items():
                    sums[key] += value
                batch_images = len(images_x) + (len(images_u) if images_u is not None else 0)
                images_seen += batch_images * self.ctx.world_size
                rate = images_seen / max(time.perf_counter() - start, 1e-9)
                info = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in losses.items()) + f" {rate:.0f} img/s"
                progress.update(task, advance=1, info=info)
        seconds = time.perf_counter() - start
        self.scheduler.step()
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({k: v / iters for k, v in sums.items() if k != "loss_target" or self.memory is not None})
        row.update(
            {"lr": self.optimizer.param_groups[0]["lr"], "seconds": seconds, "images_per_s": images_seen / seconds}
        )
        return row

    def train_step(
        self,
        epoch: int,
        images_x: torch.Tensor,
        labels_x: torch.Tensor,
        images_u: torch.Tensor | None = None,
        indices_u: torch.Tensor | None = None,
        *,
        iteration: int = 0,
    ) -> dict[str, float]:
        """One step of training: forward, losses, backward, SGD, then the memory update; returns the losses.

        A non-finite loss stops the run before the memory takes the step's features."""
        images_x = images_x.to(self.device, non_blocking=True)
        labels_x = labels_x.to(self.device, non_blocking=True)
        if images_u is not None and indices_u is not None:
            images_u = images_u.to(self.device, non_blocking=True)
            indices_u = indices_u.to(self.device, non_blocking=True)
        losses, target_features = self._step(epoch, images_x, labels_x, images_u, indices_u)
        if not all(math.isfinite(v) for v in losses.values()):
            raise EcnreidError(
                f"non-finite loss at epoch {epoch + 1} iteration {iteration + 1} "
                f"({', '.join(f'{k} {v:.4g}' for k, v in losses.items())}); stopped. "
                f"Last good checkpoint: {self.out / 'last.pt'}"
            )
        if self.memory is not None and target_features is not None:
            alpha = self.config.alpha * epoch
            self.memory.update(all_gather_cat(target_features, self.ctx), all_gather_cat(indices_u, self.ctx), alpha)
        return losses

    def _step(
        self,
        epoch: int,
        images_x: torch.Tensor,
        labels_x: torch.Tensor,
        images_u: torch.Tensor | None,
        indices_u: torch.Tensor | None,
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        cfg = self.config
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            out_x, out_u = self.forward(images_x, labels_x, images_u)
            loss_x = source_loss(out_x["source_logits"], labels_x) + dg_source_loss(self.model, labels_x, cfg.dg)
        losses = {"loss_source": loss_x}
        total = loss_x
        target_features = None
        if out_u is not None and self.memory is not None:
            target_features = out_u["target_embedding"].float()
            loss_u = self.target_loss(target_features, indices_u, epoch)
            losses["loss_target"] = loss_u
            total = ecn_total_loss(loss_x, loss_u, cfg.lam)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        values = {"loss_total": total.item(), **{k: v.item() for k, v in losses.items()}}
        detached = target_features.detach() if target_features is not None else None
        return values, detached

    def target_loss(self, features: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """ECN's target loss on the exemplar memory: the logits, the neighbour search and the loss run in
        float32 whatever autocast surrounds the call, as published."""
        cfg = self.config
        with torch.autocast(features.device.type, enabled=False):
            features = features.float()
            logits = self.memory.logits(features, cfg.beta)
            neighbours = None
            if self.knn != "topk" and cfg.use_neighbour and epoch >= cfg.neighbour_start_epoch:
                neighbours = nearest_slots_faiss(features, self.memory.features, cfg.k)
            return target_invariance_loss(
                logits,
                indices,
                epoch,
                k=cfg.k,
                neighbour_start_epoch=cfg.neighbour_start_epoch,
                use_neighbourhood=cfg.use_neighbour,
                neighbours=neighbours,
            )

    def initialise_memory(self) -> None:
        """``--memory-init features``: every slot starts as its image's embedding under the initial model
        instead of zero, so that exemplar and neighbourhood targets are meaningful from the first step
        (with zeros, a short schedule visits each slot only a few times)."""
        cfg = self.config
        embeddings = target_embeddings(
            self.model,
            self.data.target_train,
            height=cfg.height,
            width=cfg.width,
            batch_size=max(32, cfg.batch_size),
            workers=cfg.workers,
            device=self.device,
            show_progress=self.ctx.is_main,
        )
        self.memory.update(embeddings, torch.arange(len(embeddings), device=self.device), alpha=0.0)

    # ----------------------------------------------------------------- evaluation and the run
    def evaluate(self) -> dict[str, float]:
        target = self.data.target
        results, _ = evaluate_model(
            self.model,
            target.query,
            target.gallery,
            height=self.config.height,
            width=self.config.width,
            device=self.device,
            batch_size=max(32, self.config.batch_size),
            workers=self.config.workers,
            flip=self.config.flip_eval,
        )
        return metrics_row(results["plain"])

    def fit(self) -> dict[str, Any]:
        cfg = self.config
        self.maybe_resume()
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            removed = sweep_stale_temp_files(self.out)
            if removed:
                console.print(f"removed {removed} stale temp files from {self.out}")
            write_json({**config_to_dict(cfg), **self.provenance(), **self.signature()}, self.out / "config.json")
            self._announce()
        if self.memory is not None and self.start_epoch == 0 and cfg.memory_init == "features":
            self.initialise_memory()
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                row = self.train_epoch(epoch)
                last_epoch = epoch + 1 == cfg.epochs
                if self.ctx.is_main and (last_epoch or (cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0)):
                    row.update(self.evaluate())
                self._end_epoch(epoch, row)
        except (KeyboardInterrupt, RuntimeError) as exc:
            if not is_interruption(exc):
                raise
            if self.ctx.is_main:
                save_checkpoint(self.state_dict(epoch), self.out / "interrupted.pt")
                console.print(
                    f"[yellow]interrupted in epoch {epoch + 1}: weights saved to {self.out / 'interrupted.pt'}; "
                    f"--resume continues from {self.out / 'last.pt'} (the last completed epoch)"
                )
            raise
        summary = self._summary()
        if self.ctx.is_main:
            write_json(summary, self.out / "metrics.json")
        if self.ctx.enabled:
            dist.barrier()
        return summary

    def _end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            if self.ctx.enabled:
                dist.barrier()
            return
        from ecnreid.plots import training_curves_png

        self.history.append(row)
        append_jsonl(row, self.out / "log.jsonl")
        save_checkpoint(self.state_dict(epoch + 1), self.out / "last.pt")
        training_curves_png(self.history, self.out / "curves.png")
        losses = "  ".join(f"{k.removeprefix('loss_')} {row[k]:.3f}" for k in row if k.startswith("loss_"))
        scores = f"  rank-1 {row['rank1']:.1f}  mAP {row['mAP']:.1f}" if "rank1" in row else ""
        console.print(f"epoch {epoch + 1}: {losses}  {row['images_per_s']:.0f} img/s{scores}")
        if self.ctx.enabled:
            dist.barrier()

    def _summary(self) -> dict[str, Any]:
        """The run's result is its final epoch (no target label chooses a checkpoint); earlier evaluations
        stay in ``log.jsonl`` and on the curves, for watching only."""
        final = self.history[-1] if self.history else {}
        return {
            **self.provenance(),
            "source": self.config.source,
            "target": self.config.target,
            "epochs": self.config.epochs,
            "final": {k: final.get(k) for k in RESULT_KEYS},
            "evaluations": [{k: row[k] for k in RESULT_KEYS} for row in self.history if "rank1" in row],
            "camstyle_dir": str(self.data.camstyle_dir) if self.data.camstyle_dir else None,
            "out": str(self.out),
        }

    def _announce(self) -> None:
        d = self.data
        console.print(
            f"ECN {self.config.setting_name}: source {self.config.source} ({len(d.source_train)} images, "
            f"{d.num_source_classes} ids) → target {self.config.target} ({len(d.target_train)} train images, "
            f"{d.num_target_cameras} cameras, {len(d.target.query)} query, {len(d.target.gallery)} gallery) "
            f"on {self.device}" + (f" x{self.ctx.world_size}" if self.ctx.enabled else "")
        )
        origin = self.model.backbone.weights_origin
        if origin["kind"] == "random" and self.config.model.frozen_stages > 0:
            frozen = ", ".join(self.model.backbone.stage_names[: self.config.model.frozen_stages])
            console.print(
                f"[yellow]warning: random initial weights (--no-pretrained), and the stages {frozen} stay frozen "
                "at them (--frozen-stages 0 trains every stage)"
            )
        if self.config.knn == "faiss" and self.knn == "topk":
            console.print(
                f"[yellow]--knn faiss: this faiss build sees no GPU; neighbours by torch top-k on {self.device}"
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
    embedding = torch.nn.functional.batch_norm(
        head.embed(pool5), None, None, head.embed_bn.weight, head.embed_bn.bias, training=True, eps=head.embed_bn.eps
    )
    return torch.nn.functional.normalize(embedding, dim=1)


def _cuda_rng_state() -> list[torch.Tensor] | None:
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def train(config: TrainConfig) -> dict[str, Any]:
    """Library entry point behind ``ecnreid train``."""
    return ECNTrainer(config).fit()


__all__ = ["DistributedContext", "ECNTrainer", "TrainingData", "load_training_data", "train"]
