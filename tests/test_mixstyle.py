"""MixStyle: identity when off, statistics interpolation, cross-domain pairing, detached statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ecnreid.errors import EcnreidError
from ecnreid.models.mixstyle import (
    MixStyle,
    activate_mixstyle,
    deactivate_mixstyle,
    run_with_mixstyle,
    run_without_mixstyle,
)


def _fixed_lambda(value: float):
    def sampler(batch_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.full((batch_size,), value, device=device, dtype=dtype)

    return sampler


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and population std over H, W: [B, C] each (the module's unbiased std is
    a common factor sqrt(n/(n-1)) larger for every sample of one map size, so mixing is the same)."""
    return x.mean(dim=(2, 3)), x.var(dim=(2, 3), correction=0).sqrt()


def _partners(x: torch.Tensor, y: torch.Tensor, lam: float) -> list[int]:
    """Recover which sample each output took its mixed mean from (means are made distinct by the caller)."""
    mean_x, _ = _stats(x)
    mean_y, _ = _stats(y)
    # mean_y[i] = lam*mean_x[i] + (1-lam)*mean_x[j]  =>  mean_x[j] = (mean_y[i] - lam*mean_x[i]) / (1-lam)
    implied = (mean_y - lam * mean_x) / (1 - lam)
    distances = torch.cdist(implied, mean_x)
    assert torch.all(distances.min(dim=1).values < 1e-4)
    return distances.argmin(dim=1).tolist()


def _distinct_batch(batch_size: int, channels: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    offsets = torch.arange(batch_size, dtype=torch.float32).view(-1, 1, 1, 1) * 10.0
    scales = torch.linspace(0.5, 3.0, batch_size).view(-1, 1, 1, 1)
    return torch.randn(batch_size, channels, 4, 5) * scales + offsets


def test_identity_in_eval_switched_off_and_p_zero():
    x = torch.randn(4, 3, 5, 6)
    eval_module = MixStyle(p=1.0).eval()
    assert eval_module(x) is x

    off = MixStyle(p=1.0).train()
    off.set_activation_status(False)
    assert off(x) is x

    never = MixStyle(p=0.0).train()
    for _ in range(20):
        assert never(x) is x


def test_p_one_interpolates_statistics_by_hand():
    # Two samples, one channel, 2x2 maps: means 2 and 10, population stds 1 and 3.
    x = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]]], [[[7.0, 13.0], [7.0, 13.0]]]])
    lam = 0.25
    module = MixStyle(p=1.0, eps=0.0, lambda_sampler=_fixed_lambda(lam)).train()
    means, stds = torch.tensor([2.0, 10.0]), torch.tensor([1.0, 3.0])
    # Pick a draw where the two samples swap styles (a random permutation may also keep each in place).
    for seed in range(20):
        torch.manual_seed(seed)
        y = module(x)
        pairs = _partners(x, y, lam)
        if pairs == [1, 0]:
            break
    assert pairs == [1, 0]
    mean_y, std_y = _stats(y)
    # Sample 0: mean 0.25*2 + 0.75*10 = 8, std 0.25*1 + 0.75*3 = 2.5; sample 1: mean 4, std 1.5.
    torch.testing.assert_close(mean_y[:, 0], torch.tensor([8.0, 4.0]))
    torch.testing.assert_close(std_y[:, 0], torch.tensor([2.5, 1.5]))
    for i, j in enumerate(pairs):
        assert mean_y[i, 0].item() == pytest.approx(lam * means[i].item() + (1 - lam) * means[j].item())
        assert std_y[i, 0].item() == pytest.approx(lam * stds[i].item() + (1 - lam) * stds[j].item())
    # The normalised pattern survives: sample 0 is (-1, +1) columns scaled by its mixed std.
    j = pairs[0]
    mixed_std = lam * 1.0 + (1 - lam) * stds[j].item()
    mixed_mean = lam * 2.0 + (1 - lam) * means[j].item()
    expected = torch.tensor([[mixed_mean - mixed_std, mixed_mean + mixed_std]] * 2)
    torch.testing.assert_close(y[0, 0], expected)


def test_random_mix_matches_formula_on_larger_batch():
    x = _distinct_batch(6, channels=4)
    lam = 0.3
    module = MixStyle(p=1.0, lambda_sampler=_fixed_lambda(lam)).train()
    torch.manual_seed(3)
    y = module(x)
    mean_x, std_x = _stats(x)
    mean_y, std_y = _stats(y)
    pairs = torch.tensor(_partners(x, y, lam))
    torch.testing.assert_close(mean_y, lam * mean_x + (1 - lam) * mean_x[pairs], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(std_y, lam * std_x + (1 - lam) * std_x[pairs], atol=1e-4, rtol=1e-4)


def test_crossdomain_pairs_across_halves_only():
    batch_size = 8
    x = _distinct_batch(batch_size)
    lam = 0.4
    module = MixStyle(p=1.0, mix="crossdomain", lambda_sampler=_fixed_lambda(lam)).train()
    seen = set()
    for seed in range(10):
        torch.manual_seed(seed)
        pairs = _partners(x, module(x), lam)
        for i, j in enumerate(pairs):
            assert (i < batch_size // 2) != (j < batch_size // 2), (i, j)
        assert sorted(pairs) == list(range(batch_size))  # a permutation, not sampling with replacement
        seen.update(zip(range(batch_size), pairs, strict=True))
    # Shuffled within halves: more than the fixed "mirror" pairing shows up over several draws.
    assert len(seen) > batch_size


def test_crossdomain_rejects_odd_batch_and_unknown_mix_lists_valid():
    module = MixStyle(p=1.0, mix="crossdomain").train()
    with pytest.raises(EcnreidError, match="even batch"):
        module(torch.randn(5, 2, 3, 3))
    with pytest.raises(EcnreidError, match="crossdomain, random"):
        MixStyle(mix="shuffle")
    with pytest.raises(EcnreidError, match="crossdomain, random"):
        MixStyle().set_mix("halves")


def test_statistics_are_detached():
    x = _distinct_batch(4).requires_grad_()
    lam = 0.2
    module = MixStyle(p=1.0, lambda_sampler=_fixed_lambda(lam)).train()
    for seed in range(20):
        torch.manual_seed(seed)
        y = module(x)
        pairs = _partners(x.detach(), y.detach(), lam)
        if pairs[0] != 0:
            break
    assert pairs[0] != 0

    # Only sample 0's output: with detached statistics the gradient is sigma_mix / sigma on sample 0 and
    # exactly zero on every other sample, its partner included.
    (grad,) = torch.autograd.grad(y[0].sum(), x)
    mean_x, std_x = _stats(x.detach())
    std_eps = (std_x**2 + module.eps).sqrt()
    partner = pairs[0]
    expected = (lam * std_eps[0] + (1 - lam) * std_eps[partner]) / std_eps[0]
    torch.testing.assert_close(grad[0], expected.view(-1, 1, 1).expand_as(grad[0]))
    assert torch.count_nonzero(grad[1:]) == 0


def test_switches_and_context_managers_restore_status():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), MixStyle(p=1.0), nn.ReLU(), MixStyle(p=1.0, mix="crossdomain"))
    first, second = model[1], model[3]
    second.set_activation_status(False)

    with run_without_mixstyle(model):
        assert not first.activated and not second.activated
    assert first.activated and not second.activated

    with run_with_mixstyle(model, mix="random"):
        assert first.activated and second.activated
        assert first.mix == "random" and second.mix == "random"
    assert first.activated and not second.activated
    assert second.mix == "crossdomain"

    # Restored even when the block raises.
    with pytest.raises(ValueError), run_without_mixstyle(model):
        raise ValueError("boom")
    assert first.activated

    deactivate_mixstyle(model)
    assert not first.activated and not second.activated
    x = torch.randn(2, 3, 4, 4)
    model.train()
    torch.testing.assert_close(model(x), torch.relu(model[0](x)))
    activate_mixstyle(model)
    assert first.activated and second.activated


def test_beta_sampler_stays_in_unit_interval_and_is_seeded():
    module = MixStyle(alpha=0.1)
    torch.manual_seed(7)
    a = module.sample_lambda(1000, torch.device("cpu"), torch.float32)
    torch.manual_seed(7)
    b = module.sample_lambda(1000, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(a, b)
    assert torch.all((a >= 0) & (a <= 1))
    # Beta(0.1, 0.1) is U-shaped: most draws sit near 0 or 1.
    assert ((a < 0.1) | (a > 0.9)).float().mean() > 0.6


def test_crossdomain_gives_source_samples_target_statistics():
    """Two domains as separate batches (as the trainer runs them): every source sample's mixed statistics
    come from a target sample, and every target sample's from a source sample."""
    lam = 0.5
    source = _distinct_batch(6)  # sample means 0, 10, ..., 50
    target = _distinct_batch(6) + 1000.0  # far from every source mean
    module = MixStyle(p=1.0, mix="crossdomain", lambda_sampler=_fixed_lambda(lam)).train()
    torch.manual_seed(0)
    mixed_target, mixed_source = module.forward_domains([target, source])
    for own, other, out in ((source, target, mixed_source), (target, source, mixed_target)):
        mean_own, _ = _stats(own)
        mean_other, _ = _stats(other)
        implied = (_stats(out)[0] - lam * mean_own) / (1 - lam)
        distances = torch.cdist(implied, mean_other)
        assert torch.all(distances.min(dim=1).values < 1e-2)  # an exact partner in the other domain...
        assert torch.all(torch.cdist(implied, mean_own).min(dim=1).values > 100)  # ...never one of its own


def test_crossdomain_reaches_the_source_branch_of_the_ecn_model():
    from ecnreid.config import DGConfig, ModelConfig
    from ecnreid.models.factory import build_ecn_model

    dg = DGConfig(mixstyle_stages=("layer1",), mixstyle_p=1.0, mixstyle_mix="crossdomain")
    model = build_ecn_model(ModelConfig(arch="resnet18", pretrained=False, embedding_dim=16), dg, 4).train()
    seen: dict[str, torch.Tensor] = {}
    mixstyle = next(m for m in model.modules() if isinstance(m, MixStyle))
    mixstyle.lambda_sampler = _fixed_lambda(0.0)  # the partner's statistics alone
    layer2 = model.backbone.stages["layer2"]
    layer2.register_forward_pre_hook(lambda module, args: seen.setdefault(f"call{len(seen)}", args[0].detach()))
    torch.manual_seed(0)
    source, target = torch.randn(4, 3, 32, 16), torch.randn(4, 3, 32, 16) * 5 + 3
    model.forward_domains(source, target)
    mixed_target, mixed_source = seen["call0"], seen["call1"]
    # With λ = 0 each output carries its partner's mean: the source batch now has the target batch's means.
    target_means = mixed_target.mean(dim=(2, 3))
    source_means = mixed_source.mean(dim=(2, 3))
    with torch.no_grad():
        plain_target = model.backbone.stages["layer1"](model.backbone.stages["stem"](target)).mean(dim=(2, 3))
    assert torch.cdist(source_means, plain_target).min(dim=1).values.max() < 1e-3
    assert torch.cdist(target_means, plain_target).min(dim=1).values.max() > 1e-3


def test_crossdomain_then_snr_at_one_stage_gives_each_domain_the_vectors_of_its_mixed_map():
    """MixStyle (inserted first) mixes the two domains, then SNR runs on each mixed batch and its pooled vectors
    come back in that domain's output dict; batch sizes may differ."""
    from ecnreid.config import DGConfig, ModelConfig
    from ecnreid.models.factory import build_ecn_model
    from ecnreid.models.snr import SNR

    dg = DGConfig(mixstyle_stages=("layer1",), mixstyle_p=1.0, mixstyle_mix="crossdomain", snr_stages=("layer1",))
    model = build_ecn_model(ModelConfig(arch="resnet18", pretrained=False, embedding_dim=16), dg, 4).train()
    mixstyle, snr = model.backbone.inserted["layer1"]
    assert isinstance(mixstyle, MixStyle) and isinstance(snr, SNR)
    source, target = torch.randn(4, 3, 32, 16), torch.randn(6, 3, 32, 16) * 5 + 3
    torch.manual_seed(0)
    out_x, out_u = model.forward_domains(source, target)

    stages = model.backbone.stages
    torch.manual_seed(0)  # the same draws: nothing random runs before the layer1 MixStyle
    mixed_target, mixed_source = mixstyle.forward_domains(
        [stages["layer1"](stages["stem"](x)) for x in (target, source)]
    )
    for out, mixed in ((out_x, mixed_source), (out_u, mixed_target)):
        assert list(out["snr"]) == ["layer1"]
        _, expected = snr.forward_with_aux(mixed)
        for got, want in zip(out["snr"]["layer1"], expected, strict=True):
            assert got.shape == (mixed.shape[0], 64)
            torch.testing.assert_close(got, want)
    unmixed = snr.forward_with_aux(stages["layer1"](stages["stem"](source)))[1]
    assert not torch.allclose(unmixed.normalised, out_x["snr"]["layer1"].normalised)  # the mixing mattered


def test_crossdomain_refuses_a_single_domain():
    module = MixStyle(p=1.0, mix="crossdomain").train()
    with pytest.raises(EcnreidError, match="needs target images"):
        module.forward_domains([torch.randn(4, 2, 3, 3)])


def test_statistics_use_the_unbiased_variance_plus_eps():
    """σ = sqrt(var + eps) with the unbiased variance (the authors' ``x.var(dim=[2, 3])``), eps 1e-6."""
    module = MixStyle()
    assert module.eps == 1e-6
    # One channel, values 1, 3, 1, 3: mean 2, unbiased variance 4/3 (population variance would be 1).
    x = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]]]], dtype=torch.float64)
    mean, std = module._statistics(x)
    assert mean.item() == pytest.approx(2.0)
    assert std.item() == pytest.approx(math.sqrt(4 / 3 + 1e-6), rel=1e-12)


def test_restyling_matches_the_formula_with_unbiased_statistics_on_tiny_variances():
    # Variances near eps, where biased and unbiased statistics give visibly different outputs.
    torch.manual_seed(4)
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64) * torch.tensor([1e-3, 4e-3]).view(-1, 1, 1, 1)
    lam = 0.3
    # Two samples, one per half: crossdomain pairs them with each other.
    module = MixStyle(p=1.0, mix="crossdomain", lambda_sampler=_fixed_lambda(lam)).train()
    y = module(x)
    partner = torch.tensor([1, 0])
    mu = x.mean(dim=(2, 3), keepdim=True)
    sig = (x.var(dim=(2, 3), keepdim=True) + 1e-6).sqrt()
    expected = (x - mu) / sig * (lam * sig + (1 - lam) * sig[partner]) + lam * mu + (1 - lam) * mu[partner]
    torch.testing.assert_close(y, expected, rtol=1e-9, atol=1e-12)


def test_a_single_position_map_has_no_unbiased_variance():
    module = MixStyle(p=1.0).train()
    with pytest.raises(EcnreidError, match="at least 2 positions"):
        module(torch.randn(4, 3, 1, 1))
