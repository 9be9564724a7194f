"""The exemplar memory of ECN (Zhong et al., CVPR 2019): one unit-norm feature slot per target image.

The memory is state, not a parameter: a registered buffer (so it is saved with checkpoints) that is
read to make logits and written under ``torch.no_grad()`` after each step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Memory elements upcast at once by a float16 memory's product: 64 MB of float32, whatever the memory's size.
_UPCAST_ELEMENTS = 1 << 24


class _HalfMemoryProduct(torch.autograd.Function):
    """``f · Mᵀ`` in float32 for a float16 memory, upcast in row blocks in forward and backward.

    A whole-memory ``.float()`` would hold a float32 copy (saved for backward, too), more than the float32
    memory that ``fp16`` exists to avoid; here only one block is ever float32.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(memory)
        rows = max(1, _UPCAST_ELEMENTS // memory.shape[1])
        out = features.new_empty(features.shape[0], memory.shape[0])
        for start in range(0, memory.shape[0], rows):
            out[:, start : start + rows] = features @ memory[start : start + rows].float().t()
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        (memory,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None
        rows = max(1, _UPCAST_ELEMENTS // memory.shape[1])
        grad_features = grad.new_zeros(grad.shape[0], memory.shape[1])
        for start in range(0, memory.shape[0], rows):
            grad_features.addmm_(grad[:, start : start + rows], memory[start : start + rows].float())
        return grad_features, None


class ExemplarMemory(nn.Module):
    """Memory ``M`` [num_slots, dim], zero at the start; ``dtype=torch.float16`` halves its size."""

    features: torch.Tensor

    def __init__(self, num_slots: int, dim: int = 4096, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if num_slots < 1 or dim < 1:
            raise ValueError(f"memory needs at least one slot and one dimension, got {num_slots} x {dim}")
        self.num_slots = num_slots
        self.dim = dim
        self.register_buffer("features", torch.zeros(num_slots, dim, dtype=dtype))

    def extra_repr(self) -> str:
        return f"num_slots={self.num_slots}, dim={self.dim}, dtype={self.features.dtype}"

    def logits(self, features: torch.Tensor, beta: float = 0.05) -> torch.Tensor:
        """``z = f · Mᵀ / β`` in float32: [B, dim] -> [B, num_slots], differentiable in ``features`` only.

        Autocast is switched off here, as published: an fp16 product rounds the logits by about 0.02 at
        β = 0.05 and ties more slots in the neighbour top-k. A float16 memory (``--memory-dtype fp16``) only
        halves storage; it is upcast block by block for the product.
        """
        with torch.autocast(features.device.type, enabled=False):
            if self.features.dtype == torch.float32:
                return features.float() @ self.features.t() / beta
            return _HalfMemoryProduct.apply(features.float(), self.features) / beta

    @torch.no_grad()
    def update(self, features: torch.Tensor, indices: torch.Tensor, alpha: float) -> None:
        """``M[i] ← α·M[i] + (1−α)·f_i``, then ``M[i] ← M[i] / ‖M[i]‖`` for the batch [B, dim], indices [B].

        Duplicate indices in one batch are first averaged into one feature, so each slot gets exactly
        one update per call and the result does not depend on the order within the batch.
        """
        if features.dim() != 2 or features.shape[1] != self.dim or features.shape[0] != indices.numel():
            raise ValueError(
                f"update expects features [B, {self.dim}] and indices [B], "
                f"got {tuple(features.shape)} and {tuple(indices.shape)}"
            )
        indices = indices.reshape(-1).to(self.features.device)
        with torch.autocast(self.features.device.type, enabled=False):  # the update is fp32 under AMP too
            features = features.detach().to(device=self.features.device, dtype=torch.float32)
            slots, inverse, counts = torch.unique(indices, return_inverse=True, return_counts=True)
            mean = torch.zeros(slots.numel(), self.dim, device=features.device).index_add_(0, inverse, features)
            mean /= counts.unsqueeze(1)
            updated = alpha * self.features[slots].float() + (1.0 - alpha) * mean
            self.features[slots] = F.normalize(updated, dim=1).to(self.features.dtype)


def occurrence_ranks(indices: torch.Tensor) -> torch.Tensor:
    """Per entry of ``indices`` [B], how many earlier entries hold the same index (0 for its first)."""
    order = torch.argsort(indices, stable=True)
    _, counts = torch.unique_consecutive(indices[order], return_counts=True)
    group_start = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    ranks = torch.empty_like(indices)
    ranks[order] = torch.arange(len(indices), device=indices.device) - group_start
    return ranks


class HybridMemory(ExemplarMemory):
    """SpCL's hybrid memory (Ge et al., NeurIPS 2020): ``num_source_classes`` source class centroids, then one
    slot per target image, all unit-norm; ``labels[slot]`` is the class of each slot: source slot ``c`` is class
    ``c``, a target slot is ``num_source_classes`` + its pseudo-label (:meth:`set_target_labels`).
    """

    labels: torch.Tensor

    def __init__(self, num_source_classes: int, num_target: int, dim: int) -> None:
        super().__init__(num_source_classes + num_target, dim)
        self.num_source_classes = num_source_classes
        self.num_target = num_target
        # Until the first clustering every target image is a class of its own.
        self.register_buffer("labels", torch.arange(num_source_classes + num_target))

    def set_target_labels(self, target_labels: torch.Tensor) -> None:
        """Target slot ``i`` joins class ``num_source_classes + target_labels[i]``."""
        if target_labels.shape != (self.num_target,):
            raise ValueError(f"expected {self.num_target} target labels, got {tuple(target_labels.shape)}")
        self.labels[self.num_source_classes :] = target_labels.to(self.labels) + self.num_source_classes

    def loss(self, features: torch.Tensor, slots: torch.Tensor, temperature: float) -> torch.Tensor:
        """The hybrid contrastive loss of unit features [B, dim] whose own slots are ``slots`` [B].

        The similarity to a class is the mean of the temperature-scaled similarities to its slots (a cluster's
        centroid, by linearity); a softmax over all non-empty classes, with the authors' two 1e-6 guards,
        against the class of each feature's slot.
        """
        logits = self.logits(features, temperature)  # [B, slots]
        num_classes = int(self.labels.max()) + 1
        class_sums = logits.new_zeros(num_classes, logits.shape[0]).index_add_(0, self.labels, logits.t())
        sizes = torch.bincount(self.labels, minlength=num_classes).to(logits.dtype)
        present = sizes > 0
        class_logits = (class_sums / torch.where(present, sizes, 1.0).unsqueeze(1)).t()
        exps = class_logits.exp() * present
        probabilities = exps / (exps.sum(dim=1, keepdim=True) + 1e-6)
        targets = self.labels[slots.to(self.labels.device)]
        return F.nll_loss(torch.log(probabilities + 1e-6), targets)

    @torch.no_grad()
    def update_in_order(self, features: torch.Tensor, slots: torch.Tensor, momentum: float) -> None:
        """``M[s] ← momentum·M[s] + (1−momentum)·f``, renormalised, for each feature in batch order: a slot
        that appears ``K`` times in the batch (a source class in a P x K batch) takes ``K`` successive steps.

        One vectorised update per occurrence rank: within a rank every slot appears at most once.
        """
        slots = slots.reshape(-1).to(self.features.device)
        ranks = occurrence_ranks(slots)
        for rank in range(int(ranks.max()) + 1 if len(ranks) else 0):
            chosen = ranks == rank
            self.update(features[chosen.to(features.device)], slots[chosen], momentum)
