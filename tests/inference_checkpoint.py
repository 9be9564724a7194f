"""A tiny trained checkpoint for the tests of ``ecnreid.inference``: ResNet-18 from random weights, 32x16,
one epoch of ECN (+E+N) on the tiny two-domain trees of ``conftest``; a few seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

from conftest import make_reid_tree

from ecnreid.config import DomainsConfig, ModelConfig, TrainConfig, override
from ecnreid.training import train


def train_tiny_checkpoint(root: Path) -> tuple[Path, Path]:
    """(the run's ``last.pt``, the target's re-ID tree) under ``root``."""
    source = make_reid_tree(root / "source", ids=4, cameras=2, per_camera=2, seed=1)
    target = make_reid_tree(root / "target", ids=4, cameras=3, per_camera=2, seed=2, first_pid=50)
    config = TrainConfig(
        domains=DomainsConfig("synthetic", source, "synthetic", target),
        out=root / "run",
        model=ModelConfig(arch="resnet18", pretrained=False, embedding_dim=64),
    )
    settings = dict(epochs=1, batch_size=8, height=32, width=16, workers=0, seed=0, device="cpu", use_camera=False)
    train(override(config, **settings))
    return root / "run" / "last.pt", target
