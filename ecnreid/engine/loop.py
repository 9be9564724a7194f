"""The two-domain training loop: labelled source batches (``x``) and unlabelled target batches (``u``).

It owns epochs and iterations, AMP, DDP, checkpoints and exact resume, the stop on an interruption or a
non-finite loss, and the hooks (evaluation, logging, curves, console; per epoch and per step). It knows nothing
of the method it trains and never imports ``ecnreid.methods``: the caller (``ecnreid.training``) hands it a
method class, which gives the model, the losses, its own state, the optimiser and scheduler, the loaders, its
resume keys and its model card.

One epoch is one pass over the source loader; the target loader restarts whenever it runs out. Every epoch's
randomness is re-seeded from ``(seed, epoch)`` so that a resumed run continues exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ecnreid.config import TrainConfig, config_to_dict
from ecnreid.data.batches import LabelledBatch, UnlabelledBatch
from ecnreid.data.loaders import LoaderFactory
from ecnreid.data.samplers import EpochLoader
from ecnreid.data.transforms import build_train_transform
from ecnreid.data.two_domains import TwoDomainData, load_two_domains
from ecnreid.engine.hooks import Hook, default_hooks
from ecnreid.errors import EcnreidError
from ecnreid.io import ensure_output_dir, sweep_stale_temp_files, write_json
from ecnreid.progress import console, make_progress
from ecnreid.runstate import check_resume_compatible, interruption_guard, load_checkpoint, save_checkpoint
from ecnreid.runtime import RunContext, init_distributed, seed_everything

if TYPE_CHECKING:
    from torch import nn

    from ecnreid.methods.base import Method

    #: what builds the method of a run: a ``Method`` subclass, or any callable with its constructor's signature
    MethodFactory = Callable[[TrainConfig, TwoDomainData, RunContext], Method]

# What must match between a checkpoint and a run that resumes it; the method adds its own keys.
RESUME_KEYS = ("method", "source", "target", "num_source_classes", "arch")
# What `metrics.json` reports of the run's result: the final epoch's target scores (for watching, never selection).
RESULT_KEYS = ("epoch", "rank1", "rank5", "rank10", "mAP", "mINP")
CHECKPOINT = "last.pt"
# What a checkpoint's scheduler state contributes on resume: where the schedule is, not how it is set.
SCHEDULER_PROGRESS = ("base_lrs", "last_epoch", "_step_count", "_last_lr")


class TwoDomainLoop:
    """Trains the method ``method`` builds, as configured; :meth:`fit` returns the final summary (also
    ``metrics.json``).

    ``data`` replaces reading the datasets (benchmarks feed batches to :meth:`train_step` directly);
    ``hooks`` replaces the default evaluation, logging, curves and console hooks; ``extra_hooks`` come after
    them.
    """

    def __init__(
        self,
        config: TrainConfig,
        method: MethodFactory,
        data: TwoDomainData | None = None,
        hooks: list[Hook] | None = None,
        extra_hooks: list[Hook] | None = None,
    ) -> None:
        self.config = config
        self.ctx, self.device = init_distributed(config.runtime.device)
        self.out = Path(config.out)
        if self.ctx.is_main:
            ensure_output_dir(self.out, "--out")
        seed_everything(config.runtime.seed)
        self.data = data if data is not None else load_two_domains(config, announce=self.ctx.is_main)
        self.method = method(config, self.data, RunContext(self.device, self.ctx))
        self.optimizer, self.scheduler = self.method.build_optimizer()
        self.use_amp = config.optim.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.network = self.method.network
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = DistributedDataParallel(
                self.network, device_ids=ids, find_unused_parameters=self.method.ddp_find_unused_parameters()
            )
        self.hooks = [*(hooks if hooks is not None else default_hooks(self)), *(extra_hooks or [])]
        self.start_epoch = 0
        self.epoch = 0
        self.iters_per_epoch = 0
        self.history: list[dict[str, Any]] = []
        self._loaders: tuple[EpochLoader, EpochLoader | None] | None = None

    @property
    def model(self) -> nn.Module:
        """The trained model (what checkpoints hold and evaluation scores)."""
        return self.method.model

    # ----------------------------------------------------------------- state
    def signature(self) -> dict[str, Any]:
        """What must match between a checkpoint and a run that resumes it."""
        cfg = self.config
        return {
            "method": cfg.method,
            "source": f"{cfg.domains.source}:{len(self.data.source_train)}",
            "target": f"{cfg.domains.target}:{len(self.data.target_train)}",
            "num_source_classes": self.data.num_source_classes,
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
            "card": self.method.card(self.history, epoch),
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
        # The checkpoint gives the schedule's progress; its settings (milestones, gamma, ...) are this run's,
        # whatever scheduler the method builds (a checkpoint of the single-step schedule holds other settings).
        saved = state["scheduler"]
        progress = {k: saved[k] for k in SCHEDULER_PROGRESS if k in saved}
        self.scheduler.load_state_dict({**self.scheduler.state_dict(), **progress})
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.start_epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        if self.ctx.is_main:
            console.print(f"resumed {last} at epoch {self.start_epoch}")

    # ----------------------------------------------------------------- data
    def loaders(self) -> tuple[EpochLoader, EpochLoader | None]:
        """The method's source and target loaders, built once; ``set_epoch`` re-seeds them for each epoch."""
        if self._loaders is None:
            cfg = self.config
            factory = LoaderFactory(
                seed=cfg.runtime.seed * 10_007,
                workers=cfg.input.workers,
                transform=build_train_transform(cfg.input.height, cfg.input.width),
                rank=self.ctx.rank,
                world_size=self.ctx.world_size,
            )
            self._loaders = self.method.build_loaders(factory)
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
        self.method.before_epoch(epoch)  # first: labels it assigns order this epoch's batches
        source.set_epoch(epoch)
        if target is not None:
            target.set_epoch(epoch)
        iters = self.iters_per_epoch = cfg.optim.iters_per_epoch or len(source)
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
                if self.ctx.is_main:
                    for hook in self.hooks:
                        hook.after_step(self, epoch, step, losses)
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
        row.update(self.method.epoch_statistics())
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

