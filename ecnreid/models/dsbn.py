"""Domain-specific BatchNorm: every BatchNorm of a network split into a source and a target copy, so each
domain's batches are normalised with their own statistics and have their own affine parameters (as SpCL
trains, Ge et al., NeurIPS 2020). In eval mode the target copy normalises everything: the model is tested on
the target.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

DOMAINS = ("source", "target")


class DomainBatchNorm(nn.Module):
    """A source and a target copy of one BatchNorm; :attr:`domain` picks the copy a training forward uses."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.source = copy.deepcopy(norm)
        self.target = copy.deepcopy(norm)
        self.domain = "target"

    def extra_repr(self) -> str:
        return f"domain={self.domain}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.domain == "target":
            return self.target(x)
        return self.source(x)


def convert_to_domain_batchnorm(module: nn.Module) -> int:
    """Replace every BatchNorm under ``module`` (its parameters, statistics and frozen flags copied into both
    domains) by a :class:`DomainBatchNorm`, in place; returns how many were replaced.

    A BatchNorm shared by several parents is replaced in each of them by the same new module.
    """
    replaced: dict[int, DomainBatchNorm] = {}
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                if id(child) not in replaced:
                    replaced[id(child)] = DomainBatchNorm(child)
                setattr(parent, name, replaced[id(child)])
    return len(replaced)


@contextlib.contextmanager
def batchnorm_domain(module: nn.Module, domain: str) -> Iterator[None]:
    """Training forwards inside the block normalise with ``domain``'s BatchNorms; the target's afterwards."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid: {', '.join(DOMAINS)}")
    norms = [m for m in module.modules() if isinstance(m, DomainBatchNorm)]
    for norm in norms:
        norm.domain = domain
    try:
        yield
    finally:
        for norm in norms:
            norm.domain = "target"
