"""Training step throughput of ECN: ``TwoDomainLoop.train_step``, the step `ecnreid train` runs (the ECN method's
source + target forward and losses with any DG loss, backward, SGD with weight decay, then its memory update).

Images per second and peak memory per step for mobilenet_v2 at 128x64 and resnet50 at 256x128 (CUDA with
AMP on and off when a GPU is present), plus the kNN comparison of bench/knn_speed.py. Inputs are random
tensors fed to the step, so this measures the model and the losses, not JPEG decoding. ``memory`` times ECN's
memory part of a step (``ECN.target_loss`` forward and backward, then ``ExemplarMemory.update``) at Market-1501
and MSMT17 sizes with fp32 and fp16 memory, and its share of the mobilenet_v2 step. Prints one JSON line.

    python bench/train_speed.py [--steps 5] [--batch 32] [--skip-knn]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecnreid.config import DomainsConfig, ModelConfig, TrainConfig, override  # noqa: E402
from ecnreid.data.batches import LabelledBatch, UnlabelledBatch  # noqa: E402
from ecnreid.data.records import ImageRecord, ReidDataset  # noqa: E402
from ecnreid.data.two_domains import TwoDomainData  # noqa: E402
from ecnreid.engine.loop import TwoDomainLoop  # noqa: E402
from ecnreid.training import build_loop  # noqa: E402

MARKET_SLOTS, MARKET_CAMERAS, DUKE_IDS = 12_936, 6, 702
MSMT17_SLOTS = 32_621


def duke_to_market_records() -> TwoDomainData:
    """Records of Duke→Market's shape (702 source ids, 12,936 target slots); the step never opens them."""
    source = [ImageRecord(f"duke/{i}.jpg", i % DUKE_IDS, i % 8) for i in range(16_522)]
    target = [ImageRecord(f"market/{i}.jpg", -1, i % MARKET_CAMERAS) for i in range(MARKET_SLOTS)]
    return TwoDomainData(
        source_train=source, target=ReidDataset("market1501", Path("market"), target), target_train=target
    )


def measure(arch: str, height: int, width: int, batch: int, steps: int, device: torch.device, amp: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            domains=DomainsConfig("dukemtmc", Path("duke"), "market1501", Path("market")),
            model=ModelConfig(arch=arch, pretrained=False),  # speed does not depend on the weights' values
            out=Path(out),
        )
        config = override(
            config, batch_size=batch, height=height, width=width, device=device.type, amp=amp, use_camera=False
        )
        loop = build_loop(config, data=duke_to_market_records(), hooks=[])
        loop.network.train()
        generator = torch.Generator().manual_seed(0)
        cameras = torch.zeros(batch, dtype=torch.long)
        x = LabelledBatch(
            torch.randn(batch, 3, height, width, generator=generator),
            torch.randint(0, DUKE_IDS, (batch,), generator=generator),
            cameras,
            torch.arange(batch),
        )
        u = UnlabelledBatch(
            torch.randn(batch, 3, height, width, generator=generator),
            cameras,
            torch.randperm(MARKET_SLOTS, generator=generator)[:batch],
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def step() -> None:
            # Epoch 5: neighbourhood invariance on, as for most of a published run.
            loop.train_step(x, u, epoch=5)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        step()  # warm-up
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {
        "arch": arch,
        "input": f"{height}x{width}",
        "device": device.type,
        "amp": amp,
        "batch_per_domain": batch,
        "step_s": round(median, 4),
        "images_per_s": round(2 * batch / median, 1),
    }
    if device.type == "cuda":
        result["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    else:
        result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def measure_memory(
    loop: TwoDomainLoop, slots: int, dtype: str, batch: int, steps: int, step_s: float, market_cost_s: float | None
) -> dict:
    """The memory part of one step: logits, neighbourhood loss (epoch 5: top-k neighbours on), its backward,
    and the memory update, on a memory of ``slots`` random unit rows."""
    from ecnreid.memory import ExemplarMemory
    from ecnreid.methods.ecn import MEMORY_DTYPES

    ecn = loop.method
    device = loop.device
    generator = torch.Generator().manual_seed(1)
    memory = ExemplarMemory(slots, ecn.memory.dim, dtype=MEMORY_DTYPES[dtype]).to(device)
    memory.features.copy_(torch.nn.functional.normalize(torch.randn(slots, memory.dim, generator=generator), dim=1))
    saved, ecn.memory = ecn.memory, memory
    features = torch.nn.functional.normalize(torch.randn(batch, memory.dim, generator=generator), dim=1).to(device)
    indices = torch.randperm(slots, generator=generator)[:batch].to(device)
    times = []
    for repeat in range(steps + 1):
        start = time.perf_counter()
        leaf = features.clone().requires_grad_()
        ecn.target_loss(leaf, indices, epoch=5).backward()
        memory.update(leaf.detach(), indices, alpha=0.05)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if repeat:
            times.append(time.perf_counter() - start)
    ecn.memory = saved
    cost = statistics.median(times)
    # The step was timed with a Market-sized memory: another size replaces that part of it.
    whole = step_s - (market_cost_s if market_cost_s is not None else cost) + cost
    return {"slots": slots, "memory_dtype": dtype, "ms": round(1000 * cost, 1), "share_of_step": round(cost / whole, 3)}


def memory_share(batch: int, steps: int) -> list[dict]:
    """ECN's memory cost per step on the CPU, against the mobilenet_v2 128x64 step of the same batch."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            domains=DomainsConfig("dukemtmc", Path("duke"), "market1501", Path("market")),
            model=ModelConfig(arch="mobilenet_v2", pretrained=False),
            out=Path(out),
        )
        config = override(config, batch_size=batch, height=128, width=64, device="cpu", use_camera=False)
        loop = build_loop(config, data=duke_to_market_records(), hooks=[])
    step = measure("mobilenet_v2", 128, 64, batch, steps, torch.device("cpu"), amp=False)["step_s"]
    rows = []
    for dtype in ("fp32", "fp16"):
        market = measure_memory(loop, MARKET_SLOTS, dtype, batch, steps, step, None)
        rows.append(market)
        rows.append(measure_memory(loop, MSMT17_SLOTS, dtype, batch, steps, step, market["ms"] / 1000))
    return [{"step_s": step, **row} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32, help="images per domain per step on CPU")
    parser.add_argument("--skip-knn", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="only the memory part of the step")
    args = parser.parse_args()
    if args.memory_only:
        print(
            json.dumps(
                {
                    "bench": "train_speed",
                    "torch_threads": torch.get_num_threads(),
                    "memory": memory_share(args.batch, args.steps),
                }
            )
        )
        return
    runs = []
    cpu = torch.device("cpu")
    runs.append(measure("mobilenet_v2", 128, 64, args.batch, args.steps, cpu, amp=False))
    runs.append(measure("resnet50", 256, 128, args.batch, max(2, args.steps // 2), cpu, amp=False))
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        for amp in (False, True):
            runs.append(measure("mobilenet_v2", 128, 64, 128, args.steps, gpu, amp))
            runs.append(measure("resnet50", 256, 128, 128, args.steps, gpu, amp))
    report: dict = {"bench": "train_speed", "torch_threads": torch.get_num_threads(), "runs": runs}
    report["memory"] = memory_share(args.batch, args.steps)
    if not args.skip_knn:
        from knn_speed import run as knn_run

        report["knn"] = knn_run(repeats=3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
