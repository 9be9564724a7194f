"""RSC: Representation Self-Challenging (Huang et al., "Self-Challenging Improves Cross-Domain
Generalization", ECCV 2020).

On the labelled source batch, RSC zeroes the most label-predictive part of the last feature map for the
samples where that hurts most, so the head has to learn from the remaining evidence. Positions are ranked by
their Grad-CAM score ``Σ_c F[c, h, w] · mean_hw(∂y/∂F)[c]`` (y the true-class logit), channels by their
spatial-mean gradient ``mean_hw(∂y/∂F)[c]``. The caller runs its head again on the masked map::

    feature_map = rsc(feature_map, labels, lambda fm: model.forward_head(fm)["source_logits"])
    logits = model.forward_head(feature_map)["source_logits"]

Counts are exact: ``ceil(fraction × size)`` positions and channels are masked (at least one), as the official
code rounds them up; of the ``ceil(batch_fraction × B)`` samples whose confidence drops most, only those whose
drop exceeds ``MIN_CONFIDENCE_DROP`` are challenged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ecnreid.errors import EcnreidError

Head = Callable[[Tensor], Tensor]

# The official code challenges a sample only if its true-class confidence fell by more than this under its mask:
# a sample the mask does not hurt has nothing to be challenged on.
MIN_CONFIDENCE_DROP = 1e-4


def masked_count(fraction: float, size: int) -> int:
    """How many of ``size`` items a ``fraction`` masks: ceil(fraction × size), clipped to [1, size]."""
    # Subtracting a hair before ceil keeps exact products such as (1/3)·3 from rounding up to 2.
    return min(size, max(1, math.ceil(fraction * size - 1e-9)))


def _zero_top(scores: Tensor, count: int) -> Tensor:
    """A {0, 1} mask [B, N] with zeros at each row's ``count`` highest scores."""
    top = scores.topk(count, dim=1).indices
    return torch.ones_like(scores).scatter_(1, top, 0.0)


def _true_class_confidence(logits: Tensor, labels: Tensor) -> Tensor:
    return logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1)


@contextmanager
def _eval_mode(module: nn.Module | None) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own flag (frozen BatchNorms stay frozen)."""
    if module is None:
        yield
        return
    saved = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        yield
    finally:
        for m, flag in saved:
            m.training = flag


class RSC(nn.Module):
    """Mask the top-scoring spatial positions or channels of a feature map [B, C, H, W].

    In training (and while ``enabled``): with probability ``spatial_prob`` the positions with the largest
    Grad-CAM score are masked (``spatial_fraction`` of H·W), otherwise the channels with the largest
    spatial-mean gradient (``channel_fraction`` of C); only the ``batch_fraction`` of samples whose
    true-class softmax confidence drops most under their mask keep it, and only if it dropped by more than
    ``MIN_CONFIDENCE_DROP``. Eval: the input comes back as is.
    """

    def __init__(
        self,
        spatial_fraction: float = 1 / 3,
        channel_fraction: float = 1 / 3.2,
        batch_fraction: float = 1 / 3,
        spatial_prob: float = 0.5,
    ) -> None:
        super().__init__()
        for name, value in [
            ("spatial_fraction", spatial_fraction),
            ("channel_fraction", channel_fraction),
            ("batch_fraction", batch_fraction),
        ]:
            if not 0.0 < value <= 1.0:
                raise EcnreidError(f"RSC {name}={value} must lie in (0, 1]")
        if not 0.0 <= spatial_prob <= 1.0:
            raise EcnreidError(f"RSC spatial_prob={spatial_prob} must lie in [0, 1]")
        self.spatial_fraction = spatial_fraction
        self.channel_fraction = channel_fraction
        self.batch_fraction = batch_fraction
        self.spatial_prob = spatial_prob
        self.enabled = True

    def extra_repr(self) -> str:
        return (
            f"spatial_fraction={self.spatial_fraction:.4g}, channel_fraction={self.channel_fraction:.4g}, "
            f"batch_fraction={self.batch_fraction:.4g}, spatial_prob={self.spatial_prob}, enabled={self.enabled}"
        )

    def compute_mask(
        self, feature_map: Tensor, labels: Tensor, head: Head, eval_module: nn.Module | None = None
    ) -> Tensor:
        """The {0, 1} mask, [B, 1, H, W] (spatial) or [B, C, 1, 1] (channel), broadcastable to the map.

        ``eval_module`` (e.g. the whole model) is put in eval mode while the head is probed, so its
        BatchNorm statistics and dropout do not see the probe passes, as in the official RSC code.
        """
        if labels.shape != feature_map.shape[:1]:
            raise EcnreidError(
                f"RSC: labels of shape {tuple(labels.shape)} for a feature map of shape {tuple(feature_map.shape)}"
            )
        batch, channels, height, width = feature_map.shape
        with _eval_mode(eval_module):
            with torch.enable_grad():
                # A leaf copy: the gradient stops here and no graph is kept into the backbone.
                probe = feature_map.detach().requires_grad_()
                logits = head(probe)
                (grad,) = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), probe)

            with torch.no_grad():
                channel_grad = grad.mean(dim=(2, 3))  # [B, C]
                if torch.rand(()).item() < self.spatial_prob:
                    # Grad-CAM: a head that starts with global pooling gets the same gradient at every
                    # position, so positions are told apart by the activation each channel's gradient weighs.
                    scores = (probe.detach() * channel_grad[:, :, None, None]).sum(dim=1).flatten(1)  # [B, H*W]
                    count = masked_count(self.spatial_fraction, height * width)
                    mask = _zero_top(scores, count).view(batch, 1, height, width)
                else:
                    count = masked_count(self.channel_fraction, channels)
                    mask = _zero_top(channel_grad, count).view(batch, channels, 1, 1)
                mask = mask.to(feature_map.dtype)

                before = _true_class_confidence(logits.detach(), labels)
                after = _true_class_confidence(head(feature_map.detach() * mask), labels)
                drop = before - after
                chosen = drop.topk(masked_count(self.batch_fraction, batch)).indices
                challenged = torch.zeros(batch, dtype=torch.bool, device=feature_map.device)
                challenged[chosen] = True
                challenged &= drop > MIN_CONFIDENCE_DROP
                return torch.where(challenged.view(batch, 1, 1, 1), mask, torch.ones_like(mask))

    def forward(self, feature_map: Tensor, labels: Tensor, head: Head, eval_module: nn.Module | None = None) -> Tensor:
        """``feature_map * mask`` in training; ``feature_map`` itself in eval or when disabled."""
        if not self.training or not self.enabled:
            return feature_map
        return feature_map * self.compute_mask(feature_map, labels, head, eval_module)
