"""SNR: F_out = IN(F) + a⊙R by hand, gate range, dual causality loss signs, gradient routing, and the loss
inputs returned as data (no per-pass state on the module, no order between the source and target passes)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ecnreid.config import SNR_PAPER_STAGES, DGConfig, load_config_file
from ecnreid.errors import EcnreidError
from ecnreid.models.snr import (
    SNR,
    SNRPooled,
    attach_snr_classifiers,
    collect_snr_losses,
    dual_causality_terms,
    prediction_entropy,
    probe_of,
    snr_causality_loss,
    snr_classifier_loss,
    snr_modules,
)

LOG2 = math.log(2.0)


def _entropy(logits: list[float]) -> float:
    z = sum(math.exp(v) for v in logits)
    probs = [math.exp(v) / z for v in logits]
    return -sum(p * math.log(p) for p in probs)


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def _randomise(module: SNR, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


def test_output_is_instance_norm_plus_gated_residual_by_hand():
    torch.manual_seed(0)
    module = SNR(32, reduction=16).train()
    _randomise(module)
    x = torch.randn(3, 32, 6, 4) * 2 + 1

    out, pooled = module.forward_with_aux(x)

    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, correction=0)
    gamma = module.instance_norm.weight.view(1, -1, 1, 1)
    beta = module.instance_norm.bias.view(1, -1, 1, 1)
    normalised = (x - mean) / torch.sqrt(var + module.instance_norm.eps) * gamma + beta
    residual = x - normalised
    fc1, fc2 = module.gate[0], module.gate[2]
    assert fc1.out_features == 2  # 32 // 16
    hidden = torch.relu(residual.mean(dim=(2, 3)) @ fc1.weight.T + fc1.bias)
    gate = torch.sigmoid(hidden @ fc2.weight.T + fc2.bias)
    expected = normalised + gate[:, :, None, None] * residual
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(module(x), out)  # plain forward: the same map, no loss inputs

    assert isinstance(pooled, SNRPooled)
    torch.testing.assert_close(pooled.normalised, normalised.mean(dim=(2, 3)))
    torch.testing.assert_close(pooled.restituted, out.mean(dim=(2, 3)))
    contaminated = normalised + (1 - gate[:, :, None, None]) * residual
    torch.testing.assert_close(pooled.contaminated, contaminated.mean(dim=(2, 3)))

    # Eval: same output (InstanceNorm keeps no running statistics), no loss inputs.
    module.eval()
    torch.testing.assert_close(module(x), expected)
    out, pooled = module.forward_with_aux(x)
    torch.testing.assert_close(out, expected)
    assert pooled is None


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (2, 24, 16, 8), (3, 64, 8, 4), (1, 96, 4, 2), (2, 256, 4, 2)])
def test_gate_strictly_inside_unit_interval_for_several_channel_counts(shape):
    torch.manual_seed(1)
    module = SNR(shape[1]).train()
    gates = []
    module.gate.register_forward_hook(lambda _m, _inp, out: gates.append(out.detach()))
    x = (torch.randn(*shape) * 3).requires_grad_()
    out, pooled = module.forward_with_aux(x)
    assert out.shape == x.shape
    assert pooled is not None and all(v.shape == shape[:2] for v in pooled)
    (gate,) = gates
    assert gate.shape == shape[:2]
    assert torch.all(gate > 0) and torch.all(gate < 1)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _constructed(gate_value: float, in_bias: list[float], channel_means: list[float]) -> tuple[SNR, SNRPooled]:
    """SNR(4) with IN weight 1, IN bias ``in_bias``, a constant gate ``gate_value`` and an identity probe, and
    its pooled vectors of a training forward."""
    module = SNR(4, reduction=2).train()
    classifier = module.attach_classifier(4)
    with torch.no_grad():
        module.instance_norm.weight.fill_(1.0)
        module.instance_norm.bias.copy_(torch.tensor(in_bias))
        module.gate[2].weight.zero_()
        module.gate[2].bias.fill_(math.log(gate_value / (1 - gate_value)))
        classifier.weight.copy_(torch.eye(4))
        classifier.bias.zero_()
    torch.manual_seed(2)
    noise = torch.randn(2, 4, 5, 3)
    x = noise - noise.mean(dim=(2, 3), keepdim=True) + torch.tensor(channel_means).view(1, 4, 1, 1)
    _, pooled = module.forward_with_aux(x)
    return module, pooled


def test_causality_loss_when_restitution_helps():
    # IN bias 0 -> GAP(F̃) = 0: uniform prediction, entropy log 4. GAP(R) = channel means m = (4, 0, 0, 0),
    # so GAP(F̃+R⁺) = 0.9 m (confident) and GAP(F̃+R⁻) = 0.1 m (nearly uniform).
    module, pooled = _constructed(0.9, [0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0])
    h_norm = math.log(4.0)
    h_plus = _entropy([3.6, 0.0, 0.0, 0.0])
    h_minus = _entropy([0.4, 0.0, 0.0, 0.0])
    first, second = _softplus(h_plus - h_norm), _softplus(h_norm - h_minus)
    assert first < LOG2 < second

    assert snr_causality_loss(pooled, probe_of(module)).item() == pytest.approx(first + second, rel=1e-5)
    logits = [pooled.restituted, pooled.normalised, pooled.contaminated]
    restitution, contamination = dual_causality_terms(*logits)  # the probe is the identity
    torch.testing.assert_close(restitution, torch.full((2,), first), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(contamination, torch.full((2,), second), rtol=1e-5, atol=1e-6)


def test_causality_loss_when_restitution_hurts():
    # IN bias b = (4, 0, 0, 0) makes F̃ confident; zero-mean input gives GAP(R) = -b, so
    # GAP(F̃+R⁺) = (1-0.9) b is less confident than F̃ and GAP(F̃+R⁻) = 0.9 b is in between.
    module, pooled = _constructed(0.9, [4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    h_norm = _entropy([4.0, 0.0, 0.0, 0.0])
    h_plus = _entropy([0.4, 0.0, 0.0, 0.0])
    h_minus = _entropy([3.6, 0.0, 0.0, 0.0])
    first, second = _softplus(h_plus - h_norm), _softplus(h_norm - h_minus)
    assert first > LOG2 > second
    assert snr_causality_loss(pooled, probe_of(module)).item() == pytest.approx(first + second, rel=1e-5)


def test_dual_causality_terms_equal_log2_when_entropies_match_and_entropy_values():
    uniform = torch.zeros(3, 5)
    peaked = torch.tensor([[10.0, 0, 0, 0, 0]] * 3)
    restitution, contamination = dual_causality_terms(uniform, uniform, uniform)
    torch.testing.assert_close(restitution, torch.full((3,), LOG2))
    torch.testing.assert_close(contamination, torch.full((3,), LOG2))
    torch.testing.assert_close(prediction_entropy(uniform), torch.full((3,), math.log(5.0)))
    expected_peaked = _entropy([10.0, 0, 0, 0, 0])
    torch.testing.assert_close(prediction_entropy(peaked), torch.full((3,), expected_peaked))
    restitution, contamination = dual_causality_terms(peaked, uniform, uniform)
    assert torch.all(restitution < LOG2)
    # softplus(0) is log 2 to within log1p's accuracy (1 ulp in the vectorised kernels, not correctly rounded).
    torch.testing.assert_close(contamination, torch.full((3,), LOG2))


def test_gradient_routing_probe_vs_backbone():
    torch.manual_seed(3)
    module = SNR(16, reduction=4).train()
    classifier = module.attach_classifier(5)
    x = torch.randn(4, 16, 6, 3).requires_grad_()
    _, pooled = module.forward_with_aux(x)
    labels = torch.tensor([0, 1, 2, 3])

    causality = snr_causality_loss(pooled, classifier)
    grads = torch.autograd.grad(causality, [x, classifier.weight, module.gate[0].weight], allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert grads[1] is None  # the probe is frozen inside the causality loss
    assert grads[2] is not None and grads[2].abs().sum() > 0

    _, pooled = module.forward_with_aux(x)
    ce = snr_classifier_loss(pooled, labels, classifier)
    grads = torch.autograd.grad(ce, [x, classifier.weight, module.gate[0].weight], allow_unused=True)
    assert grads[0] is None and grads[2] is None  # the CE trains the probe only
    assert grads[1] is not None and grads[1].abs().sum() > 0
    expected = nn.functional.cross_entropy(classifier(pooled.restituted.detach()), labels)
    assert ce.item() == pytest.approx(expected.item())


def _two_snr_pass(model: nn.Sequential, x: torch.Tensor) -> dict[str, SNRPooled | None]:
    """Run ``model`` (conv, SNR, conv, SNR) by hand, collecting each SNR's pooled vectors by name."""
    pooled: dict[str, SNRPooled | None] = {}
    x, pooled["first"] = model[1].forward_with_aux(model[0](x))
    _, pooled["second"] = model[3].forward_with_aux(model[2](x))
    return pooled


def test_collect_sums_over_modules_and_reports_misuse():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), SNR(8, 4), nn.Conv2d(8, 16, 3, stride=2), SNR(16, 4))
    modules = {"first": model[1], "second": model[3]}
    labels = torch.tensor([1, 0])
    x = torch.randn(2, 3, 8, 6)

    model.train()
    with pytest.raises(ValueError, match="attach_classifier"):
        collect_snr_losses(modules, _two_snr_pass(model, x), labels)

    probes = attach_snr_classifiers(model, num_classes=3)
    assert [p.in_features for p in probes] == [8, 16]
    pooled = _two_snr_pass(model, x)
    losses = collect_snr_losses(modules, pooled, labels)
    first, second = model[1], model[3]
    expected_causality = snr_causality_loss(pooled["first"], probes[0]) + snr_causality_loss(
        pooled["second"], probes[1]
    )
    expected_ce = snr_classifier_loss(pooled["first"], labels, probes[0]) + snr_classifier_loss(
        pooled["second"], labels, probes[1]
    )
    assert losses.causality.item() == pytest.approx(expected_causality.item())
    assert losses.classification.item() == pytest.approx(expected_ce.item())
    # The loss weights apply to the causality terms only.
    first.loss_weight, second.loss_weight = 0.5, 2.0
    weighted = collect_snr_losses(modules, pooled, labels)
    expected_weighted = 0.5 * snr_causality_loss(pooled["first"], probes[0]) + 2.0 * snr_causality_loss(
        pooled["second"], probes[1]
    )
    assert weighted.causality.item() == pytest.approx(expected_weighted.item())
    assert weighted.classification.item() == pytest.approx(expected_ce.item())
    # The probes are registered submodules, so an optimizer over model.parameters() trains them.
    parameter_ids = {id(p) for p in model.parameters()}
    assert all(id(p.weight) in parameter_ids for p in probes)

    with pytest.raises(ValueError, match="labels of shape"):
        collect_snr_losses(modules, pooled, torch.tensor([0, 1, 2]))
    model.eval()
    with pytest.raises(ValueError, match="training-mode forward"):
        collect_snr_losses(modules, _two_snr_pass(model, x), labels)
    with pytest.raises(ValueError, match="training-mode forward"):
        collect_snr_losses(modules, {"first": pooled["first"]}, labels)
    with pytest.raises(ValueError, match="has no SNR"):
        collect_snr_losses({"first": first}, pooled, labels)
    with pytest.raises(ValueError, match="no SNR module"):
        collect_snr_losses({}, {}, labels)


def test_the_module_keeps_nothing_of_a_pass():
    """Old design: a training forward stored its pooled vectors on the module (``last``) for the loss."""
    torch.manual_seed(6)
    module = SNR(8, 4).train()
    module.attach_classifier(3)
    attributes_before = dict(vars(module))
    state_before = {k: v.clone() for k, v in module.state_dict().items()}

    x = torch.randn(2, 8, 4, 3)
    module(x)
    module.forward_with_aux(x)
    module.eval()(x)
    module.train()

    assert vars(module).keys() == attributes_before.keys()
    for name, value in vars(module).items():
        if name in ("_parameters", "_buffers", "_modules"):
            continue
        assert value is attributes_before[name] or value == attributes_before[name], name
    assert module.state_dict().keys() == state_before.keys()
    assert all(torch.equal(v, state_before[k]) for k, v in module.state_dict().items())
    assert not hasattr(module, "last")

    def tensors_in(value) -> bool:
        if torch.is_tensor(value) and not isinstance(value, nn.Parameter):
            return True
        if isinstance(value, tuple | list):
            return any(tensors_in(v) for v in value)
        return isinstance(value, dict) and any(tensors_in(v) for v in value.values())

    # No submodule holds a tensor outside its parameters and buffers either.
    for sub in module.modules():
        plain = {k: v for k, v in vars(sub).items() if k not in ("_parameters", "_buffers", "_modules")}
        assert not tensors_in(list(plain.values())), type(sub).__name__


def test_paper_setting_is_the_default_weights_after_all_four_stages():
    """Jin et al. (CVPR 2020), Sec. 3.3: an SNR after each of the four stages, λ_b = 0.1, 0.1, 0.5, 0.5."""
    assert SNR_PAPER_STAGES == ("layer1", "layer2", "layer3", "layer4")
    default = DGConfig()
    assert default.snr_stages == ()  # off unless asked for
    assert default.snr_weight is None
    assert [default.snr_loss_weight(stage) for stage in SNR_PAPER_STAGES] == [0.1, 0.1, 0.5, 0.5]
    assert default.snr_loss_weight("stem") == 0.1
    assert [DGConfig(snr_weight=0.3).snr_loss_weight(s) for s in SNR_PAPER_STAGES] == [0.3] * 4


def test_the_paper_setting_builds_four_weighted_snrs_and_their_loss():
    from ecnreid.config import ModelConfig
    from ecnreid.models.dg import dg_source_loss
    from ecnreid.models.factory import build_ecn_model

    torch.manual_seed(5)
    dg = DGConfig(snr_stages=SNR_PAPER_STAGES)
    model = build_ecn_model(ModelConfig(arch="resnet18", pretrained=False, embedding_dim=16), dg, 3).train()
    modules = snr_modules(model)
    assert [m.channels for m in modules] == [64, 128, 256, 512]
    assert [m.loss_weight for m in modules] == [0.1, 0.1, 0.5, 0.5]
    assert [list(model.backbone.inserted[s]) for s in SNR_PAPER_STAGES] == [[m] for m in modules]

    assert model.backbone.aux_modules("snr") == dict(zip(SNR_PAPER_STAGES, modules, strict=True))

    labels = torch.tensor([0, 1, 2, 1])
    out = model(torch.randn(4, 3, 64, 32))
    pooled = out["snr"]
    assert list(pooled) == list(SNR_PAPER_STAGES)
    expected = sum(
        m.loss_weight * snr_causality_loss(pooled[s], m.classifier)
        + snr_classifier_loss(pooled[s], labels, m.classifier)
        for s, m in zip(SNR_PAPER_STAGES, modules, strict=True)
    )
    assert dg_source_loss(model, out, labels, dg).item() == pytest.approx(expected.item(), rel=1e-6)
    assert dg_source_loss(model, out, labels, DGConfig()) == 0.0  # SNR loss off
    with pytest.raises(EcnreidError, match="no SNR vectors"):
        dg_source_loss(model, {k: v for k, v in out.items() if k != "snr"}, labels, dg)


def test_source_loss_does_not_depend_on_which_batch_ran_last():
    """Old design: the loss read the pooled vectors of whichever batch ran last, so running the target after
    the source silently gave the target's vectors (same batch size) to the source labels."""
    from ecnreid.config import ModelConfig
    from ecnreid.models.dg import dg_source_loss
    from ecnreid.models.factory import build_ecn_model

    torch.manual_seed(7)
    dg = DGConfig(snr_stages=SNR_PAPER_STAGES)
    model = build_ecn_model(ModelConfig(arch="resnet18", pretrained=False, embedding_dim=16), dg, 3).train()
    source, target = torch.randn(4, 3, 64, 32), torch.randn(4, 3, 64, 32) * 2 + 1
    labels = torch.tensor([0, 1, 2, 1])

    out_x = model(source)
    model(target)  # runs after the source
    source_then_target = dg_source_loss(model, out_x, labels, dg)
    model(target)
    out_x = model(source)  # runs after the target
    target_then_source = dg_source_loss(model, out_x, labels, dg)
    assert torch.equal(source_then_target, target_then_source)

    # Both batches at once, either order of the arguments' passes: the same source loss again.
    out_x, out_u = model.forward_domains(source, target)
    assert torch.equal(dg_source_loss(model, out_x, labels, dg), source_then_target)
    target_labels = torch.tensor([2, 2, 0, 1])
    out_t, _ = model.forward_domains(target, None)
    torch.testing.assert_close(
        dg_source_loss(model, out_u, target_labels, dg), dg_source_loss(model, out_t, target_labels, dg)
    )
    assert not torch.equal(dg_source_loss(model, out_u, labels, dg), source_then_target)


def test_train_cli_snr_weight_defaults_to_the_paper_and_overrides(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import ecnreid.inference.evaluate
    import ecnreid.training
    from ecnreid.cli import app

    built = []
    monkeypatch.setattr(ecnreid.training, "train", built.append)
    monkeypatch.setattr(ecnreid.inference.evaluate, "render_train_summary", lambda summary: "")
    base = ["train", "--source", "synthetic", "--source-root", str(tmp_path), "--target", "synthetic"]
    base += ["--target-root", str(tmp_path), "--snr", ",".join(SNR_PAPER_STAGES)]
    for extra in ([], ["--snr-weight", "0.25"]):
        result = CliRunner().invoke(app, [*base, *extra])
        assert result.exit_code == 0, result.output
    paper, override = (config.dg for config in built)
    assert paper == DGConfig(snr_stages=SNR_PAPER_STAGES)
    assert [paper.snr_loss_weight(s) for s in SNR_PAPER_STAGES] == [0.1, 0.1, 0.5, 0.5]
    assert override.snr_weight == 0.25


def test_experiments_config_runs_snr_in_the_paper_setting():
    settings = load_config_file(Path(__file__).parents[1] / "configs" / "d2m_cpu_snr.toml")
    # After all four stages, and no snr_weight: the paper's per-stage λ_b.
    assert settings["dg"] == {"snr_stages": list(SNR_PAPER_STAGES)}
