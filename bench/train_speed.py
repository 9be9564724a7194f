"""Training step throughput of ECN (source + target forward, losses, backward, SGD step, memory update).

Images per second and peak memory per step for mobilenet_v2 at 128x64 and resnet50 at 256x128 (CUDA with
AMP on and off when a GPU is present), plus the kNN comparison of bench/knn_speed.py. Inputs are random
tensors, so this measures the model and the losses, not JPEG decoding. Prints one JSON line.

    python bench/train_speed.py [--steps 5] [--batch 32] [--skip-knn]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecnreid.config import DGConfig, ModelConfig  # noqa: E402
from ecnreid.losses import ecn_total_loss, source_loss, target_invariance_loss  # noqa: E402
from ecnreid.memory import ExemplarMemory  # noqa: E402
from ecnreid.models.factory import build_ecn_model  # noqa: E402

MARKET_SLOTS, DUKE_IDS = 12_936, 702


def measure(arch: str, height: int, width: int, batch: int, steps: int, device: torch.device, amp: bool) -> dict:
    torch.manual_seed(0)
    model = build_ecn_model(ModelConfig(arch=arch), DGConfig(), DUKE_IDS).to(device).train()
    memory = ExemplarMemory(MARKET_SLOTS, 4096).to(device)
    optimizer = torch.optim.SGD(model.parameter_groups(0.1), lr=0.1, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    images_x = torch.randn(batch, 3, height, width, device=device)
    images_u = torch.randn(batch, 3, height, width, device=device)
    labels = torch.randint(0, DUKE_IDS, (batch,), device=device)
    indices = torch.randint(0, MARKET_SLOTS, (batch,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out_u = model(images_u)
            out_x = model(images_x)
            logits = memory.logits(out_u["target_embedding"].float(), 0.05)
            loss = ecn_total_loss(
                source_loss(out_x["source_logits"], labels), target_invariance_loss(logits, indices, epoch=5), 0.3
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        memory.update(out_u["target_embedding"].detach().float(), indices, 0.05)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32, help="images per domain per step on CPU")
    parser.add_argument("--skip-knn", action="store_true")
    args = parser.parse_args()
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
    if not args.skip_knn:
        from knn_speed import run as knn_run

        report["knn"] = knn_run(repeats=3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
