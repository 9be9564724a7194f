"""CamStyle speed: StarGAN training it/s, generation images/s, colour-method images/s. Prints ONE JSON line.

Training uses the full-size networks (64 channels, 6 residual blocks, 6-layer critic) at batch 16, for
256x128 and 128x64 inputs; one "iteration" is a critic step plus 1/n_critic of a generator step, as in
training. Images are random textures drawn in a temporary folder (no dataset needed).

    PYTHONPATH=. .venv/bin/python bench/camstyle_speed.py [--device cuda] [--iters 2] [--colour-images 600]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from camstyle.colour import generate_colour_camstyle
from camstyle.generate import generate_camstyle
from camstyle.stargan import ModelSpec
from camstyle.trainer import StarGANConfig, TrainState, critic_step, generator_step
from ecnreid.data.records import ImageRecord


def _images(folder: Path, count: int, cameras: int, size: tuple[int, int] = (64, 128)) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        camera = i % cameras
        pixels = np.clip(rng.normal(60 + 25 * camera, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:04d}_c{camera + 1}_{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        records.append(ImageRecord(str(path), i, camera))
    return records


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_speed(image_size: tuple[int, int], iters: int, device: torch.device, cameras: int = 6) -> dict:
    """Seconds per critic step and per generator step; it/s with one generator step per n_critic."""
    config = StarGANConfig(image_size=image_size, amp=device.type == "cuda")
    spec = config.model_spec(cameras)
    generator, discriminator = spec.build_generator().to(device), spec.build_discriminator().to(device)
    state = TrainState(
        generator=generator,
        discriminator=discriminator,
        opt_g=torch.optim.Adam(generator.parameters(), config.g_lr, (config.beta1, config.beta2)),
        opt_d=torch.optim.Adam(discriminator.parameters(), config.d_lr, (config.beta1, config.beta2)),
        rng=torch.Generator().manual_seed(0),
    )
    x = torch.rand(config.batch_size, 3, *image_size, device=device) * 2 - 1
    c_org = torch.randint(cameras, (config.batch_size,), device=device)
    c_trg = (c_org + 1) % cameras
    critic_step(state, x, c_org, c_trg, config)  # warm-up (allocations, cuDNN autotuning)
    generator_step(state, x, c_org, c_trg, config)
    timings = {}
    for name, step in (("critic", critic_step), ("generator", generator_step)):
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            step(state, x, c_org, c_trg, config)
        _sync(device)
        timings[name] = (time.perf_counter() - start) / iters
    per_iteration = timings["critic"] + timings["generator"] / config.n_critic
    return {
        "critic_step_s": round(timings["critic"], 4),
        "generator_step_s": round(timings["generator"], 4),
        "it_per_s": round(1.0 / per_iteration, 4),
        "hours_for_200k_iters": round(200_000 * per_iteration / 3600, 1),
    }


def generation_speed(folder: Path, images: int, device: torch.device, cameras: int = 6) -> dict:
    records = _images(folder / "gen", images, cameras)
    generator = ModelSpec(num_cameras=cameras).build_generator()
    start = time.perf_counter()
    counts = generate_camstyle(
        generator, records, cameras, folder / "gen_out", device=device, workers=2, progress=False
    )
    seconds = time.perf_counter() - start
    return {"outputs": counts.written, "seconds": round(seconds, 2), "images_per_s": round(counts.written / seconds, 2)}


def colour_speed(folder: Path, images: int, cameras: int = 6) -> dict:
    records = _images(folder / "colour", images, cameras)
    start = time.perf_counter()
    counts, _ = generate_colour_camstyle(records, cameras, folder / "colour_out", workers=2, progress=False)
    seconds = time.perf_counter() - start
    return {
        "source_images": images,
        "outputs": counts.written,
        "seconds": round(seconds, 2),
        "outputs_per_s": round(counts.written / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=1, help="timed steps of each kind per input size")
    parser.add_argument("--gen-images", type=int, default=12, help="source images for the generation timing")
    parser.add_argument("--colour-images", type=int, default=600, help="source images for the colour timing")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    result = {
        "bench": "camstyle_speed",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "batch_size": 16,
        "train_256x128": train_speed((256, 128), args.iters, device),
        "train_128x64": train_speed((128, 64), args.iters, device),
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["generation_256x128"] = generation_speed(Path(tmp), args.gen_images, device)
        result["colour"] = colour_speed(Path(tmp), args.colour_images)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
