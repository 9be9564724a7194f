"""Training methods of the two-domain loop, by name. A new method is one module with a ``Method`` subclass
and one entry here (``docs/architecture.md``, "Adding a method")."""

from __future__ import annotations

from ecnreid.config import TrainConfig
from ecnreid.engine.data import TwoDomainData
from ecnreid.errors import EcnreidError
from ecnreid.methods.base import Method, RunContext, StepOutput
from ecnreid.methods.ecn import ECN

METHODS: dict[str, type[Method]] = {"ecn": ECN}


def build_method(config: TrainConfig, data: TwoDomainData, run: RunContext) -> Method:
    """The method ``config.method`` names, built for this run."""
    if config.method not in METHODS:
        raise EcnreidError(f"--method {config.method}: unknown; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[config.method](config, data, run)


__all__ = ["METHODS", "Method", "RunContext", "StepOutput", "build_method"]
