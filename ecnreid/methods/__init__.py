"""Training methods of the two-domain loop, by name. A new method is one module with a ``Method`` subclass
and one entry here (``docs/architecture.md``, "Adding a method")."""

from __future__ import annotations

from ecnreid.config import TrainConfig
from ecnreid.data.two_domains import TwoDomainData
from ecnreid.errors import EcnreidError
from ecnreid.methods.base import LoaderFactory, Method, RunContext, StepOutput
from ecnreid.methods.ecn import ECN
from ecnreid.methods.spcl import SpCL

METHODS: dict[str, type[Method]] = {"ecn": ECN, "spcl": SpCL}


def method_class(name: str, option: str = "--method") -> type[Method]:
    """The method registered as ``name``; an unknown name is a one-line error listing the valid ones."""
    if name not in METHODS:
        raise EcnreidError(f"{option} {name}: unknown; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def resolve_method(config: TrainConfig) -> type[Method]:
    """The class of ``config.method``, after it has checked that it can take ``config``."""
    cls = method_class(config.method)
    cls.check_config(config)
    return cls


def build_method(config: TrainConfig, data: TwoDomainData, run: RunContext) -> Method:
    """The method ``config.method`` names, built for this run."""
    return resolve_method(config)(config, data, run)


__all__ = ["METHODS", "LoaderFactory", "Method", "RunContext", "StepOutput", "build_method", "method_class",
           "resolve_method"]
