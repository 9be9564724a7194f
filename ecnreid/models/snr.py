"""SNR: Style Normalization and Restitution (Jin et al., "Style Normalization and Restitution for
Generalizable Person Re-identification", CVPR 2020).

After a stage output F: ``F̃ = IN(F)`` removes style, ``R = F − F̃`` is what IN threw away, a channel gate
``a = σ(W₂ δ(W₁ GAP(R)))`` picks its identity-relevant part ``R⁺ = a⊙R`` (the rest is ``R⁻ = (1−a)⊙R``),
and the stage output becomes ``F̃ + R⁺``. The dual causality loss
``softplus(H(F̃+R⁺) − H(F̃)) + softplus(H(F̃) − H(F̃+R⁻))`` (batch mean, entropies of a per-stage classifier on
pooled features) asks that adding ``R⁺`` makes the identity prediction more certain and adding ``R⁻`` less.
Each SNR weighs its loss by its own ``loss_weight`` (the paper's λ_b).

Per-stage classifiers are probes: a CE on detached features trains them, and the causality loss sees them frozen,
because a classifier trained by that loss (as in the authors' code) can order the entropies by itself.

Usage: a training forward returns the three pooled vectors as data, ``out, pooled = snr.forward_with_aux(x)``
(an :class:`SNRPooled`; ``Backbone`` collects them per stage under :attr:`SNR.aux_name`), and the losses are
pure functions of them: ``collect_snr_losses(modules_by_stage, pooled_by_stage, labels)``. Nothing of a pass is
kept on the module, so the source and target batches may run in any order.
Call ``attach_classifier`` before building the optimizer, so the classifiers are in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call


class SNRPooled(NamedTuple):
    """Globally pooled vectors a training forward returns for the causality loss, each [B, C]."""

    normalised: Tensor  # GAP(F̃)
    restituted: Tensor  # GAP(F̃ + R⁺)
    contaminated: Tensor  # GAP(F̃ + R⁻)


class SNRLosses(NamedTuple):
    """Summed over the SNR modules of a model: the dual causality losses, each times its module's
    ``loss_weight``, and the probe classifiers' CE."""

    causality: Tensor
    classification: Tensor


class SNR(nn.Module):
    """Style normalisation (affine InstanceNorm) and gated restitution of the removed residual.

    [B, C, H, W] in and out. :meth:`forward_with_aux` also returns, in training, the pooled vectors of ``F̃``,
    ``F̃+R⁺``, ``F̃+R⁻`` (an :class:`SNRPooled`; None in eval) that the losses need; the module keeps nothing
    of a pass. ``loss_weight`` is the weight λ_b of this module's dual causality loss in ``collect_snr_losses``.
    """

    # Under this key a Backbone collects the auxiliary outputs of forward_with_aux (see Backbone.insert_after).
    aux_name = "snr"

    def __init__(self, channels: int, reduction: int = 16, loss_weight: float = 1.0) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"SNR channels={channels} and reduction={reduction} must be positive")
        if loss_weight < 0:
            raise ValueError(f"SNR loss_weight={loss_weight} must not be negative")
        self.channels = channels
        self.loss_weight = loss_weight
        self.instance_norm = nn.InstanceNorm2d(channels, affine=True)
        hidden = max(channels // reduction, 1)
        self.gate = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )
        self.classifier: nn.Linear | None = None

    def extra_repr(self) -> str:
        return f"channels={self.channels}, loss_weight={self.loss_weight}"

    def attach_classifier(self, num_classes: int) -> nn.Linear:
        """Give this module its own probe classifier ``Linear(channels, num_classes)`` and return it."""
        if num_classes < 1:
            raise ValueError(f"SNR.attach_classifier num_classes={num_classes} must be positive")
        device = self.instance_norm.weight.device
        self.classifier = nn.Linear(self.channels, num_classes).to(device)
        return self.classifier

    def _restitute(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``F̃ + a⊙R`` and the parts the pooled vectors are made of: ``F̃``, ``GAP(R)`` [B, C], ``a`` [B, C]."""
        normalised = self.instance_norm(x)
        residual = x - normalised
        pooled_residual = residual.mean(dim=(2, 3))  # [B, C]
        attention = self.gate(pooled_residual)  # [B, C], in (0, 1)
        out = normalised + attention[:, :, None, None] * residual
        return out, normalised, pooled_residual, attention

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> ``F̃ + R⁺`` [B, C, H, W]; no loss inputs (see :meth:`forward_with_aux`)."""
        return self._restitute(x)[0]

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, SNRPooled | None]:
        """The output of :meth:`forward` and, in training, the pooled vectors the losses need (None in eval)."""
        out, normalised, pooled_residual, attention = self._restitute(x)
        if not self.training:
            return out, None
        # GAP is linear and the gate is per channel, so GAP(F̃ + a⊙R) = GAP(F̃) + a⊙GAP(R):
        # no extra pass over the feature map for the loss's three vectors.
        pooled_normalised = normalised.mean(dim=(2, 3))
        pooled = SNRPooled(
            normalised=pooled_normalised,
            restituted=pooled_normalised + attention * pooled_residual,
            contaminated=pooled_normalised + (1 - attention) * pooled_residual,
        )
        return out, pooled


def prediction_entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) per row, in nats: [B, K] -> [B]."""
    log_probs = F.log_softmax(logits, dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1)


def dual_causality_terms(
    logits_restituted: Tensor, logits_normalised: Tensor, logits_contaminated: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-sample terms ``softplus(H(F̃+R⁺) − H(F̃))`` and ``softplus(H(F̃) − H(F̃+R⁻))``, each [B].

    Each term is below log 2 when its ordering holds and above log 2 when it is violated.
    """
    entropy_normalised = prediction_entropy(logits_normalised)
    restitution = F.softplus(prediction_entropy(logits_restituted) - entropy_normalised)
    contamination = F.softplus(entropy_normalised - prediction_entropy(logits_contaminated))
    return restitution, contamination


def _frozen_call(classifier: nn.Module, x: Tensor) -> Tensor:
    """classifier(x) with its parameters detached: gradients reach x only."""
    params = {name: p.detach() for name, p in classifier.named_parameters()}
    return functional_call(classifier, params, (x,))


def probe_of(module: SNR) -> nn.Linear:
    """The probe classifier attached to ``module``; an error if there is none yet."""
    if module.classifier is None:
        raise ValueError("SNR loss: no classifier; call SNR.attach_classifier(num_classes) before training")
    return module.classifier


def snr_causality_loss(pooled: SNRPooled, classifier: nn.Module) -> Tensor:
    """Dual causality loss of one SNR module's training forward (its ``pooled`` vectors), averaged over the
    batch (scalar).

    ``classifier`` maps [B, C] to logits, normally the module's probe (:func:`probe_of`). Its weights are used
    frozen (see the module docstring). Unweighted: ``collect_snr_losses`` applies ``loss_weight``.
    """
    # One classifier call over the three stacked vectors instead of three calls.
    stacked = torch.cat([pooled.restituted, pooled.normalised, pooled.contaminated])
    logits = _frozen_call(classifier, stacked).chunk(3)
    restitution, contamination = dual_causality_terms(*logits)
    return (restitution + contamination).mean()


def snr_classifier_loss(pooled: SNRPooled, labels: Tensor, classifier: nn.Module) -> Tensor:
    """Cross-entropy of the probe ``classifier`` on detached pooled ``F̃ + R⁺`` against source labels [B]."""
    if labels.shape != pooled.restituted.shape[:1]:
        raise ValueError(
            f"SNR loss: labels of shape {tuple(labels.shape)} for a batch of "
            f"{pooled.restituted.shape[0]}; use the pooled vectors of the labelled source batch"
        )
    return F.cross_entropy(classifier(pooled.restituted.detach()), labels)


def snr_modules(model: nn.Module) -> list[SNR]:
    """Every SNR module inside ``model``, in definition order."""
    return [m for m in model.modules() if isinstance(m, SNR)]


def attach_snr_classifiers(model: nn.Module, num_classes: int) -> list[nn.Linear]:
    """Attach a probe classifier to every SNR in ``model`` (before building the optimizer)."""
    return [module.attach_classifier(num_classes) for module in snr_modules(model)]


def collect_snr_losses(modules: Mapping[str, SNR], pooled: Mapping[str, SNRPooled | None], labels: Tensor) -> SNRLosses:
    """Σ_b λ_b·(causality loss of SNR b) and the sum of probe CE losses over the SNR modules ``modules``
    (keyed by the stage each follows, e.g. ``Backbone.aux_modules("snr")``), from ``pooled``, the vectors
    one training forward of the labelled source batch returned for each of them under the same keys
    (e.g. its ECN output's ``"snr"`` entry); ``labels`` [B] are that batch's."""
    if not modules:
        raise ValueError("SNR loss: the model has no SNR module; insert one or leave the SNR loss off")
    missing = [key for key in modules if pooled.get(key) is None]
    if missing:
        raise ValueError(
            f"SNR loss: no pooled vectors for the SNR after {', '.join(missing)}; "
            "pass the outputs of a training-mode forward of this model"
        )
    unknown = [key for key in pooled if key not in modules]
    if unknown:
        raise ValueError(f"SNR loss: pooled vectors for {', '.join(unknown)}, where the model has no SNR")
    pairs = [(module, pooled[key]) for key, module in modules.items()]
    causality = torch.stack([m.loss_weight * snr_causality_loss(p, probe_of(m)) for m, p in pairs]).sum()
    classification = torch.stack([snr_classifier_loss(p, labels, probe_of(m)) for m, p in pairs]).sum()
    return SNRLosses(causality=causality, classification=classification)
