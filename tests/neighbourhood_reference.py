"""The dense soft targets of ECN's official code: the oracle ``ecnreid.losses.neighbourhood_loss`` (which gathers
k + 1 weights instead of spreading them over all N slots) is held to. Not shipped."""

from __future__ import annotations

import torch

from ecnreid.losses import nearest_slots


def neighbourhood_targets(
    logits: torch.Tensor,
    indices: torch.Tensor,
    k: int = 6,
    neighbours: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft targets [B, N]: 1/k on the k nearest slots, then 1 on the image's own slot (overwriting, also when
    it is among the k), not renormalised. ``neighbours`` [B, k] may be given; by default the top-k of the logits."""
    if neighbours is None:
        neighbours = nearest_slots(logits, k)
    targets = torch.zeros_like(logits, dtype=torch.float32)
    targets.scatter_(1, neighbours, 1.0 / k)
    targets.scatter_(1, indices.reshape(-1, 1).long(), 1.0)
    return targets
