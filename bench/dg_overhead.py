"""Training-step cost of the domain-generalisation modules against the plain model; prints one JSON line.

A step is forward + loss + backward + SGD step on a synthetic batch (default 32 images of 128×64, CPU).
Variants, on each backbone (resnet18, mobilenet_v2; random weights, the cost does not depend on them):
- ``plain``: backbone → global average pool → Linear classifier, cross-entropy;
- ``mixstyle``: MixStyle after layer1 and layer2 with p = 1, i.e. the cost of a step where it fires
  (at the default p = 0.5 the expected cost is half of the measured overhead);
- ``snr``: SNR after layer2, layer3 and layer4 (ECN trains from layer3 on, and SNR's own layers are new
  and trainable even after the frozen layer2), plus the dual causality loss (weight 0.1) and probe CE;
- ``rsc``: RSC on the last feature map with the linear head (gradient probe + masked re-check + masked pass);
- ``all``: the three together.
The variants run round-robin, one step each per round, so load from other processes hits them alike;
each reports the median (and the minimum) step time over the timed rounds after the warm-up rounds;
``*_vs_plain`` is the ratio of medians. On a shared machine whole-step times swing more than the ops cost,
so each op is also timed alone (forward + backward on its stage-shaped input, minimum of ``--op-reps``):
``*_op_vs_plain_min`` is that cost over the plain step's minimum.

    PYTHONPATH=. .venv/bin/python bench/dg_overhead.py [--steps 10 --warmup 3 --batch 32 --device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ecnreid.models.backbones import build_backbone
from ecnreid.models.mixstyle import MixStyle
from ecnreid.models.rsc import RSC
from ecnreid.models.snr import (
    SNR,
    attach_snr_classifiers,
    collect_snr_losses,
    probe_of,
    snr_causality_loss,
    snr_classifier_loss,
)

VARIANTS = ("plain", "mixstyle", "snr", "rsc", "all")
ARCHS = ("resnet18", "mobilenet_v2")
NUM_CLASSES = 100
SNR_WEIGHT = 0.1


class Classifier(nn.Module):
    """Global average pool → Linear: [B, C, h, w] → [B, classes]."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.fc(feature_map.mean(dim=(2, 3)))


def make_step(arch: str, variant: str, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """Build one variant's model and optimizer; return its training-step function."""
    backbone = build_backbone(arch)
    if variant in ("mixstyle", "all"):
        for stage in ("layer1", "layer2"):
            backbone.insert_after(stage, MixStyle(p=1.0))
    if variant in ("snr", "all"):
        for stage in ("layer2", "layer3", "layer4"):
            backbone.insert_after(stage, SNR(backbone.stage_channels[stage]))
    classifier = Classifier(backbone.out_channels, NUM_CLASSES)
    model = nn.ModuleDict({"backbone": backbone, "classifier": classifier})
    attach_snr_classifiers(model, NUM_CLASSES)
    model.to(device).train()
    rsc = RSC().train() if variant in ("rsc", "all") else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        feature_map, aux = backbone.forward_with_aux(images)
        if rsc is not None:
            feature_map = rsc(feature_map, labels, classifier, eval_module=classifier)
        loss = F.cross_entropy(classifier(feature_map), labels)
        if variant in ("snr", "all"):
            snr_losses = collect_snr_losses(backbone.aux_modules("snr"), aux["snr"], labels)
            loss = loss + SNR_WEIGHT * snr_losses.causality + snr_losses.classification
        loss.backward()
        optimizer.step()

    return step


def _timed(step: Callable[[torch.Tensor, torch.Tensor], None], images, labels, device: torch.device) -> float:
    start = time.perf_counter()
    step(images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _stage_shapes(arch: str, images: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape of every backbone stage for this input."""
    backbone = build_backbone(arch).to(images.device)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, stage in backbone.stages.items():
        stage.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
    with torch.no_grad():
        backbone(images)
    return shapes


def op_costs(
    arch: str, images: torch.Tensor, labels: torch.Tensor, reps: int, device: torch.device
) -> dict[str, float]:
    """Forward + backward time of the DG ops alone on their stage-shaped inputs, minimum over ``reps``
    (milliseconds per training step, summed over the stages where each op sits).

    Short and repeated many times, so it resists interference better than whole-step times.
    """
    shapes = _stage_shapes(arch, images)

    def mixstyle_op() -> None:
        for stage in ("layer1", "layer2"):
            x = torch.randn(shapes[stage], device=device, requires_grad=True)
            MixStyle(p=1.0).train()(x).sum().backward()

    snrs = {stage: SNR(shapes[stage][1]).to(device).train() for stage in ("layer2", "layer3", "layer4")}
    for module in snrs.values():
        module.attach_classifier(NUM_CLASSES)

    def snr_op() -> None:
        for stage, module in snrs.items():
            x = torch.randn(shapes[stage], device=device, requires_grad=True)
            out, pooled = module.forward_with_aux(x)
            loss = out.sum() + SNR_WEIGHT * snr_causality_loss(pooled, probe_of(module))
            (loss + snr_classifier_loss(pooled, labels, probe_of(module))).backward()

    classifier = Classifier(shapes["layer4"][1], NUM_CLASSES).to(device)
    rsc = RSC().train()

    def rsc_op() -> None:
        # The probe passes only: the caller's own head pass on the masked map replaces the plain one.
        fm = torch.randn(shapes["layer4"], device=device, requires_grad=True)
        (fm * rsc.compute_mask(fm, labels, classifier, eval_module=classifier)).sum().backward()

    costs = {}
    for name, op in (("mixstyle", mixstyle_op), ("snr", snr_op), ("rsc", rsc_op)):
        times = [_timed(lambda _images, _labels, op=op: op(), images, labels, device) for _ in range(reps)]
        costs[f"{name}_op_min_ms"] = round(min(times) * 1000, 2)
    return costs


def bench_arch(arch: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.height, args.width, device=device)
    labels = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)
    ops = op_costs(arch, images, labels, args.op_reps, device)
    steps = {variant: make_step(arch, variant, device) for variant in VARIANTS}
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_index in range(args.warmup + args.steps):
        for variant, step in steps.items():
            elapsed = _timed(step, images, labels, device)
            if round_index >= args.warmup:
                times[variant].append(elapsed)
    medians = {variant: statistics.median(values) * 1000 for variant, values in times.items()}
    # Other processes can only add time, so the minimum shows the cost with the least interference.
    minima = {variant: min(values) * 1000 for variant, values in times.items()}
    result = {f"{variant}_ms": round(ms, 1) for variant, ms in medians.items()}
    result.update({f"{variant}_min_ms": round(ms, 1) for variant, ms in minima.items()})
    for variant in VARIANTS[1:]:
        result[f"{variant}_vs_plain"] = round(medians[variant] / medians["plain"], 3)
    result.update(ops)
    for name in ("mixstyle", "snr", "rsc"):
        result[f"{name}_op_vs_plain_min"] = round(ops[f"{name}_op_min_ms"] / minima["plain"], 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed rounds (one step per variant each)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--op-reps", type=int, default=30, help="repetitions of the isolated op timings")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated backbones")
    args = parser.parse_args()

    device = torch.device(args.device)
    results = {arch: bench_arch(arch, args, device) for arch in args.archs.split(",")}
    record = {
        "bench": "dg_overhead",
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": args.batch,
        "input": [args.height, args.width],
        "warmup": args.warmup,
        "steps": args.steps,
        "setup": "mixstyle p=1 after layer1,layer2; snr after layer2-4 (+causality 0.1, probe CE); "
        "rsc on last map, linear head",
        "results": results,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
