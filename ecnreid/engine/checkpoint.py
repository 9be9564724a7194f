"""Checkpoints: atomic saves, loads with one-line errors, and the resume compatibility check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ecnreid.errors import EcnreidError
from ecnreid.io import atomic_torch_save


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write a checkpoint atomically (temp file + rename): a kill never corrupts the previous one."""
    atomic_torch_save(state, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``; a missing or unreadable file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise EcnreidError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise EcnreidError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise EcnreidError(f"{path}: not an ecnreid checkpoint (expected 'model' and 'config' entries)")
    return state


# Settings that must match for a resume to continue the same run.
RESUME_KEYS = ("source", "target", "memory_slots", "num_source_classes", "embedding_dim", "arch", "memory_dtype")


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume a run whose dataset, memory size or model differs from the checkpoint's."""
    for key in RESUME_KEYS:
        if saved.get(key) != current.get(key):
            raise EcnreidError(
                f"{path}: cannot resume: checkpoint has {key}={saved.get(key)!r} but this run has "
                f"{key}={current.get(key)!r}"
            )
