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
