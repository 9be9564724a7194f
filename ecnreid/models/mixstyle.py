"""MixStyle: mix per-channel feature statistics between samples (Zhou et al., "Domain Generalization
with MixStyle", ICLR 2021).

Insert it after early stages only (after layer1 and layer2), where channel statistics carry style;
never near the last layer, where they carry identity. It is active in training only, and can be switched
off at run time with ``set_activation_status`` or the ``run_without_mixstyle`` context manager.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ecnreid.errors import EcnreidError

# Draws one mixing weight per sample: (batch size, device, dtype) -> Tensor[B] with values in [0, 1].
LambdaSampler = Callable[[int, torch.device, torch.dtype], Tensor]


def _random_permutation(batch_size: int) -> Tensor:
    """Each sample is paired with a random sample of the whole batch (possibly itself)."""
    return torch.randperm(batch_size)


def _crossdomain_permutation(batch_size: int) -> Tensor:
    """The batch is domain A's half then domain B's half; every sample is paired with one of the other half."""
    if batch_size % 2:
        raise EcnreidError(
            f"MixStyle(mix='crossdomain') needs an even batch (domain A half, then domain B half), got {batch_size}"
        )
    half = batch_size // 2
    # First half takes partners from the second half and vice versa, shuffled within each half.
    return torch.cat([half + torch.randperm(half), torch.randperm(half)])


_PERMUTATIONS: dict[str, Callable[[int], Tensor]] = {
    "random": _random_permutation,
    "crossdomain": _crossdomain_permutation,
}


def _check_mix(mix: str) -> str:
    if mix not in _PERMUTATIONS:
        raise EcnreidError(f"MixStyle mix={mix!r} is unknown; valid: {', '.join(sorted(_PERMUTATIONS))}")
    return mix


class MixStyle(nn.Module):
    """Re-style each sample with statistics mixed between it and a partner sample.

    With probability ``p`` per forward call (training mode, activation status on): per-sample, per-channel
    mean μ and std σ over H, W are taken (detached; the unbiased variance, as the authors' code, so H·W > 1),
    ``x̂ = (x − μ)/σ``, ``λ ~ Beta(α, α)`` per sample, and the output is
    ``x̂·(λσ + (1−λ)σ_partner) + (λμ + (1−λ)μ_partner)``. Shape [B, C, H, W] in and out.

    Partners: ``random`` draws them from the same batch; ``crossdomain`` from the other domain. The trainer
    runs source and target as separate batches, so it calls :meth:`forward_domains`, where a source sample's
    partner is a target sample and the other way round.

    ``lambda_sampler`` replaces the Beta draw (tests use it to fix λ).
    """

    def __init__(
        self,
        p: float = 0.5,
        alpha: float = 0.1,
        eps: float = 1e-6,
        mix: str = "random",
        lambda_sampler: LambdaSampler | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise EcnreidError(f"MixStyle p={p} must lie in [0, 1]")
        if alpha <= 0.0:
            raise EcnreidError(f"MixStyle alpha={alpha} must be positive")
        self.p = p
        self.alpha = alpha
        self.eps = eps
        self.mix = _check_mix(mix)
        self.lambda_sampler = lambda_sampler
        self.activated = True

    def extra_repr(self) -> str:
        return f"p={self.p}, alpha={self.alpha}, eps={self.eps}, mix={self.mix!r}, activated={self.activated}"

    def set_activation_status(self, active: bool = True) -> None:
        """Switch mixing on or off without leaving training mode."""
        self.activated = active

    def set_mix(self, mix: str) -> None:
        """Choose how partners are drawn: ``random`` or ``crossdomain``."""
        self.mix = _check_mix(mix)

    def sample_lambda(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Per-sample mixing weights, Tensor[B]."""
        if self.lambda_sampler is not None:
            return self.lambda_sampler(batch_size, device, dtype)
        concentration = torch.tensor(self.alpha, dtype=torch.float32)
        beta = torch.distributions.Beta(concentration, concentration)
        return beta.sample((batch_size,)).to(device=device, dtype=dtype)

    def _statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Detached per-sample, per-channel mean and std over H, W: [B, C, 1, 1] each.

        σ = sqrt(unbiased variance + eps), the authors' ``x.var(dim=[2, 3])`` (torch's default correction=1).
        """
        if x.shape[2] * x.shape[3] < 2:
            raise EcnreidError(
                f"MixStyle needs feature maps of at least 2 positions for the unbiased variance, got "
                f"{tuple(x.shape[2:])}; insert it after an earlier stage"
            )
        mean = x.mean(dim=(2, 3), keepdim=True).detach()
        std = (x.var(dim=(2, 3), keepdim=True, correction=1) + self.eps).sqrt().detach()
        return mean, std

    def _restyle(self, x: Tensor, mean: Tensor, std: Tensor, partner_mean: Tensor, partner_std: Tensor) -> Tensor:
        """``x̂·(λσ + (1−λ)σ_partner) + (λμ + (1−λ)μ_partner)`` with one λ per sample."""
        lam = self.sample_lambda(x.size(0), x.device, x.dtype).view(-1, 1, 1, 1)
        normalised = (x - mean) / std
        return normalised * (lam * std + (1 - lam) * partner_std) + (lam * mean + (1 - lam) * partner_mean)

    def _fires(self) -> bool:
        # rand() lies in [0, 1): p=0 never mixes, p=1 always does.
        return self.training and self.activated and torch.rand(()).item() < self.p

    def forward(self, x: Tensor) -> Tensor:
        """One batch; with ``mix='crossdomain'`` it must be domain A's half followed by domain B's."""
        if not self._fires():
            return x
        mean, std = self._statistics(x)
        partner = _PERMUTATIONS[self.mix](x.size(0)).to(x.device)
        return self._restyle(x, mean, std, mean[partner], std[partner])

    def forward_domains(self, batches: list[Tensor]) -> list[Tensor]:
        """Each domain's batch, run through the network separately (BatchNorm statistics per domain).

        ``random`` mixes within each batch, as ``forward`` does. ``crossdomain`` takes two batches (source
        and target) and gives every sample of one the statistics of a sample of the other, mixed in.
        """
        if self.mix != "crossdomain":
            return [self(x) for x in batches]
        if len(batches) != 2:
            raise EcnreidError(
                f"MixStyle(mix='crossdomain') mixes a source and a target batch, got {len(batches)} batch(es): "
                "it needs target images (not --source-only or --no-target)"
            )
        if not self._fires():
            return list(batches)
        stats = [self._statistics(x) for x in batches]
        mixed = []
        for own, other in ((0, 1), (1, 0)):
            x, (mean, std), (other_mean, other_std) = batches[own], stats[own], stats[other]
            partner = _partners_from(batches[other].size(0), x.size(0)).to(x.device)
            mixed.append(self._restyle(x, mean, std, other_mean[partner], other_std[partner]))
        return mixed


def _partners_from(pool: int, count: int) -> Tensor:
    """``count`` partner indices into a batch of ``pool``: a shuffle when the sizes match, else uniform draws."""
    return torch.randperm(pool) if pool == count else torch.randint(pool, (count,))


def _mixstyle_modules(model: nn.Module) -> list[MixStyle]:
    return [m for m in model.modules() if isinstance(m, MixStyle)]


def activate_mixstyle(model: nn.Module) -> None:
    """Turn on every MixStyle module inside ``model``."""
    for module in _mixstyle_modules(model):
        module.set_activation_status(True)


def deactivate_mixstyle(model: nn.Module) -> None:
    """Turn off every MixStyle module inside ``model`` (they pass features through unchanged)."""
    for module in _mixstyle_modules(model):
        module.set_activation_status(False)


@contextmanager
def run_without_mixstyle(model: nn.Module) -> Iterator[None]:
    """Within the block every MixStyle in ``model`` is off; previous statuses come back afterwards."""
    modules = _mixstyle_modules(model)
    saved = [m.activated for m in modules]
    try:
        for module in modules:
            module.set_activation_status(False)
        yield
    finally:
        for module, status in zip(modules, saved, strict=True):
            module.set_activation_status(status)


@contextmanager
def run_with_mixstyle(model: nn.Module, mix: str | None = None) -> Iterator[None]:
    """Within the block every MixStyle in ``model`` is on (with ``mix`` if given); previous
    statuses and mix modes come back afterwards."""
    if mix is not None:
        _check_mix(mix)
    modules = _mixstyle_modules(model)
    saved = [(m.activated, m.mix) for m in modules]
    try:
        for module in modules:
            module.set_activation_status(True)
            if mix is not None:
                module.set_mix(mix)
        yield
    finally:
        for module, (status, old_mix) in zip(modules, saved, strict=True):
            module.set_activation_status(status)
            module.mix = old_mix
