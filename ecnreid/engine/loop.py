"""The two-domain training loop: labelled source batches (``x``) and unlabelled target batches (``u``).

It owns epochs and iterations, the optimiser and scheduler, AMP, DDP, checkpoints and exact resume, the stop on
an interruption or a non-finite loss, and the hooks (evaluation, logging, curves, console). It knows nothing
of the method it trains: a ``Method`` (``ecnreid.methods``) gives the model, the losses and its own state.

One epoch is one pass over the source loader; the target loader restarts whenever it runs out. Every epoch's
randomness is re-seeded from ``(seed, epoch)`` so that a resumed run continues exactly.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ecnreid.config import TrainConfig, config_to_dict
from ecnreid.data.batches import LabelledBatch, UnlabelledBatch, collate_labelled, collate_unlabelled
from ecnreid.data.image_dataset import ImageDataset
from ecnreid.data.samplers import EpochLoader
from ecnreid.data.transforms import build_train_transform
from ecnreid.engine.data import TwoDomainData, load_two_domains
from ecnreid.engine.hooks import Hook, default_hooks
from ecnreid.errors import EcnreidError
from ecnreid.inference.card import build_card
from ecnreid.io import ensure_output_dir, sweep_stale_temp_files, write_json
from ecnreid.methods import build_method
from ecnreid.methods.base import RunContext
from ecnreid.progress import console, make_progress
from ecnreid.runstate import check_resume_compatible, interruption_guard, load_checkpoint, save_checkpoint
from ecnreid.runtime import init_distributed, seed_everything

# What must match between a checkpoint and a run that resumes it; the method adds its own keys.
RESUME_KEYS = ("method", "source", "target", "num_source_classes", "embedding_dim", "arch")
# What `metrics.json` reports of the run's result: the final epoch's target scores (for watching, never selection).
RESULT_KEYS = ("epoch", "rank1", "rank5", "rank10", "mAP", "mINP")
CHECKPOINT = "last.pt"


class TwoDomainLoop:
    """Trains ``config.method`` as configured; :meth:`fit` returns the final summary (also ``metrics.json``).

    ``data`` replaces reading the datasets (benchmarks feed batches to :meth:`train_step` directly);
    ``hooks`` replaces the default evaluation, logging, curves and console hooks.
    """

    def __init__(self, config: TrainConfig, data: TwoDomainData | None = None, hooks: list[Hook] | None = None) -> None:
        self.config = config
        self.ctx, self.device = init_distributed(config.runtime.device)
        self.out = Path(config.out)
        if self.ctx.is_main:
            ensure_output_dir(self.out, "--out")
        seed_everything(config.runtime.seed)
        self.data = data if data is not None else load_two_domains(config, announce=self.ctx.is_main)
        self.method = build_method(config, self.data, RunContext(self.device, self.ctx))
        optim = config.optim
        self.optimizer = torch.optim.SGD(
            self.method.parameter_groups(),
            lr=optim.lr,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
            nesterov=True,
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(optim.lr_steps), gamma=optim.lr_gamma
        )
        self.use_amp = optim.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.network = self.method.network
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = DistributedDataParallel(self.network, device_ids=ids, find_unused_parameters=config.dg.any)
        self.hooks = hooks if hooks is not None else default_hooks(self)
        self.start_epoch = 0
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self._loaders: tuple[EpochLoader, EpochLoader | None] | None = None

    # ----------------------------------------------------------------- state
    def signature(self) -> dict[str, Any]:
        """What must match between a checkpoint and a run that resumes it."""
        cfg = self.config
        return {
            "method": cfg.method,
            "source": f"{cfg.domains.source}:{len(self.data.source_train)}",
            "target": f"{cfg.domains.target}:{len(self.data.target_train)}",
            "num_source_classes": self.data.num_source_classes,
            "embedding_dim": cfg.model.embedding_dim,
            "arch": cfg.model.arch,
            **self.method.signature(),
        }

    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "model": self.method.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "history": self.history,
            "rng": {"torch": torch.get_rng_state()},
            "config": config_to_dict(self.config),
            "provenance": self.method.provenance(),
            "signature": self.signature(),
            # What `ecnreid extract/search/export` need to use the model; the history holds this epoch's row.
            "card": build_card(self.config, self.method.model_card(), self.history, epoch).to_dict(),
        }

    def maybe_resume(self) -> None:
        last = self.out / CHECKPOINT
        if not self.config.runtime.resume:
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
        current = self.signature()
        check_resume_compatible(
            state.get("signature", {}), current, last, keys=(*RESUME_KEYS, *self.method.signature())
        )
        self.method.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        # The milestones and gamma are this run's (a checkpoint of the single-step schedule holds neither).
        scheduler = {k: v for k, v in state["scheduler"].items() if k != "step_size"}
        self.scheduler.load_state_dict(
            {**scheduler, "milestones": self.scheduler.milestones, "gamma": self.scheduler.gamma}
        )
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.start_epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        if self.ctx.is_main:
            console.print(f"resumed {last} at epoch {self.start_epoch}")

    # ----------------------------------------------------------------- data
    def loaders(self) -> tuple[EpochLoader, EpochLoader | None]:
        """The source and target loaders, built once; ``set_epoch`` re-seeds them for each epoch."""
        if self._loaders is not None:
            return self._loaders
        cfg = self.config
        world, rank = self.ctx.world_size, self.ctx.rank
        per_rank = max(1, cfg.input.batch_size // world)
        per_rank_u = max(1, (cfg.domains.target_batch_size or cfg.input.batch_size) // world)
        transform = build_train_transform(cfg.input.height, cfg.input.width)
        seed = cfg.runtime.seed * 10_007
        common = dict(workers=cfg.input.workers, rank=rank, world_size=world)
        source = EpochLoader(
            ImageDataset(self.data.source_train, transform), per_rank, seed=seed, collate_fn=collate_labelled, **common
        )
        target = None
        target_dataset = self.method.target_dataset(transform)
        if target_dataset is not None:
            target = EpochLoader(target_dataset, per_rank_u, seed=seed + 7_919, collate_fn=collate_unlabelled, **common)
        self._loaders = (source, target)
        return self._loaders

    # ----------------------------------------------------------------- training
    def train_step(self, x: LabelledBatch, u: UnlabelledBatch | None, epoch: int, iteration: int = 0) -> dict:
        """One step: the method's losses, backward, SGD, then the method's after-step (ECN: the memory update);
        returns the losses. A non-finite loss stops the run before the method's state takes the step."""
        x = x.to(self.device)
        u = u.to(self.device) if u is not None else None
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            output = self.method.step(self.network, x, u, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(output.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        values = output.values()
        if not all(math.isfinite(v) for v in values.values()):
            raise EcnreidError(
                f"non-finite loss at epoch {epoch + 1} iteration {iteration + 1} "
                f"({', '.join(f'{k} {v:.4g}' for k, v in values.items())}); stopped. "
                f"Last good checkpoint: {self.out / CHECKPOINT}"
            )
        self.method.after_step(output, u, epoch)
        return values

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.config
        # Re-seed per epoch: dropout, erasing and CamStyle draws depend only on (seed, epoch, rank).
        seed_everything(cfg.runtime.seed * 10_007 + epoch * 101 + self.ctx.rank)
        source, target = self.loaders()
        source.set_epoch(epoch)
        if target is not None:
            target.set_epoch(epoch)
        iters = cfg.optim.iters_per_epoch or len(source)
        self.method.before_epoch(epoch)
        self.network.train()
        sums: dict[str, float] = {}
        images_seen = 0
        start = time.perf_counter()
        progress = make_progress(transient=False)
        with progress if self.ctx.is_main else nullcontext():
            task = progress.add_task(f"epoch {epoch + 1}/{cfg.optim.epochs}", total=iters, unit="it", info="")
            for step in range(iters):
                x = next(source)
                u = next(target) if target is not None else None
                losses = self.train_step(x, u, epoch, iteration=step)
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + value
                batch_images = len(x.images) + (len(u.images) if u is not None else 0)
                images_seen += batch_images * self.ctx.world_size
                rate = images_seen / max(time.perf_counter() - start, 1e-9)
                info = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in losses.items()) + f" {rate:.0f} img/s"
                progress.update(task, advance=1, info=info)
        seconds = time.perf_counter() - start
        self.scheduler.step()
        row: dict[str, Any] = {"epoch": epoch + 1, **{k: v / iters for k, v in sums.items()}}
        row.update(
            {"lr": self.optimizer.param_groups[0]["lr"], "seconds": seconds, "images_per_s": images_seen / seconds}
        )
        return row

    def fit(self) -> dict[str, Any]:
        cfg = self.config
        self.maybe_resume()
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            removed = sweep_stale_temp_files(self.out)
            if removed:
                console.print(f"removed {removed} stale temp files from {self.out}")
            record = {**config_to_dict(cfg), "provenance": self.method.provenance(), "signature": self.signature()}
            write_json(record, self.out / "config.json")
            self._announce()
        if self.start_epoch == 0:
            self.method.before_training()
        self.epoch = self.start_epoch

        def save_interrupted() -> Path | None:
            if not self.ctx.is_main:
                return None
            save_checkpoint(self.state_dict(self.epoch), self.out / "interrupted.pt")
            return self.out / "interrupted.pt"

        resume_hint = f"--resume (from {self.out / CHECKPOINT}, the last completed epoch)"
        with interruption_guard(save_interrupted, what=f"training in {self.out}", resume_hint=resume_hint):
            for epoch in range(self.start_epoch, cfg.optim.epochs):
                self.epoch = epoch
                self._end_epoch(epoch, self.train_epoch(epoch))
        summary = self.summary()
        for hook in self.hooks:
            hook.after_run(self, summary)
        if self.ctx.is_main:
            write_json(summary, self.out / "metrics.json")
        if self.ctx.enabled:
            dist.barrier()
        return summary

    def is_last_epoch(self, epoch: int) -> bool:
        return epoch + 1 == self.config.optim.epochs

    def _end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        if self.ctx.is_main:
            for hook in self.hooks:
                hook.extend_row(self, epoch, row)
            self.history.append(row)
            save_checkpoint(self.state_dict(epoch + 1), self.out / CHECKPOINT)
            for hook in self.hooks:
                hook.after_epoch(self, epoch, row)
        if self.ctx.enabled:
            dist.barrier()

    def summary(self) -> dict[str, Any]:
        """The run's result is its final epoch (no target label chooses a checkpoint); earlier evaluations
        stay in ``log.jsonl`` and on the curves, for watching only."""
        final = self.history[-1] if self.history else {}
        return {
            "method": self.config.method,
            **self.method.provenance(),
            "source": self.config.domains.source,
            "target": self.config.domains.target,
            "epochs": self.config.optim.epochs,
            "final": {k: final.get(k) for k in RESULT_KEYS},
            "evaluations": [{k: row[k] for k in RESULT_KEYS} for row in self.history if "rank1" in row],
            "out": str(self.out),
        }

    def _announce(self) -> None:
        where = f" on {self.device}" + (f" x{self.ctx.world_size}" if self.ctx.enabled else "")
        console.print(self.method.describe() + where)
        for notice in self.method.notices():
            console.print(f"[yellow]{notice}")


def train(config: TrainConfig) -> dict[str, Any]:
    """Library entry point behind ``ecnreid train``: the run's summary, or ``{}`` on the other processes of a
    torchrun job (only rank 0 reports)."""
    loop = TwoDomainLoop(config)
    summary = loop.fit()
    return summary if loop.ctx.is_main else {}
