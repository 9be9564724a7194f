"""Where a run executes: device choice, seeding and the torch.distributed context (torchrun)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from ecnreid.errors import EcnreidError


def is_interruption(exc: BaseException) -> bool:
    """Ctrl-C / SIGTERM, also when it reaches a DataLoader worker first: a stop signal sent to the whole process
    group (`timeout`, `kill -- -PGID`, job schedulers) can kill a worker before the main process handles its
    own, and torch then reports the same stop as a ``RuntimeError`` about the worker."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and "DataLoader worker" in message and "killed by signal" in message


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EcnreidError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise EcnreidError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class DistributedContext:
    """Rank information; ``world_size == 1`` when not launched by torchrun."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class RunContext:
    """Where a training method runs: its device and the distributed ranks."""

    device: torch.device
    dist: DistributedContext = field(default_factory=DistributedContext)


def init_distributed(device_name: str) -> tuple[DistributedContext, torch.device]:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); a no-op for a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(), resolve_device(device_name)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size), device


def all_gather_cat(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Concatenate a tensor (same shape on every rank) from all ranks, rank order; identity for one process."""
    if not ctx.enabled:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
