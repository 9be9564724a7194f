"""CamStyle speed: StarGAN training it/s, generation images/s, colour-method images/s. Prints ONE JSON line.

Training uses the full-size networks (64 channels, 6 residual blocks, 6-layer critic) at batch 16, for
256x128 and 128x64 inputs; one "iteration" is a critic step plus 1/n_critic of a generator step, as in
training. Images are random textures drawn in a temporary folder (no dataset needed).

Generation, the colour method and the bare JPEG writer (``ImageWriter``, Market-size 128x64 images) are
each timed twice through the production code: ``durable=True`` (an fsync per image) and ``durable=False``
(rename only, what ``prepare`` uses). ``--dir`` picks the file system written to (the default temporary
folder may be a tmpfs, where fsync costs nothing).

    PYTHONPATH=. .venv/bin/python bench/camstyle_speed.py [--device cuda] [--iters 2] [--colour-images 600]
        [--write-images 2000] [--dir FOLDER] [--no-train]
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
from camstyle.generate import ImageWriter, generate_camstyle
from camstyle.stargan import ModelSpec
from camstyle.trainer import build_train_state, critic_step, generator_step, model_spec
from ecnreid.config import StarGANConfig
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
    state = build_train_state(model_spec(config, cameras), config, seed=0, device=device)
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


def _both_ways(run, repeats: int) -> dict:
    """``run(durable, tag)`` → (outputs, seconds), ``repeats`` times each way in ABBA order (so warm-up and drift
    of a shared machine hit both alike); the best images/s of each way and their ratio."""
    modes = {"no_fsync": False, "fsync": True}
    order = [name for r in range(repeats) for name in (("no_fsync", "fsync") if r % 2 == 0 else ("fsync", "no_fsync"))]
    best: dict[str, dict] = {}
    for k, name in enumerate(order):
        outputs, seconds = run(modes[name], f"{name}_{k}")
        if name not in best or outputs / seconds > best[name]["images_per_s"]:
            best[name] = {"outputs": outputs, "seconds": round(seconds, 2), "images_per_s": round(outputs / seconds, 1)}
    speedup = round(best["no_fsync"]["images_per_s"] / best["fsync"]["images_per_s"], 2)
    return {"repeats": repeats, **best, "speedup_without_fsync": speedup}


def generation_speed(folder: Path, images: int, device: torch.device, repeats: int, cameras: int = 6) -> dict:
    """``generate_camstyle`` (full-size generator, 4 writer threads) into a fresh folder per run."""
    records = _images(folder / "gen", images, cameras)
    generator = ModelSpec(num_cameras=cameras).build_generator()

    def run(durable: bool, tag: str) -> tuple[int, float]:
        start = time.perf_counter()
        counts = generate_camstyle(
            generator,
            records,
            cameras,
            folder / f"gen_{tag}",
            device=device,
            workers=2,
            progress=False,
            durable=durable,
        )
        return counts.written, time.perf_counter() - start

    return {"source_images": images, **_both_ways(run, repeats)}


def colour_speed(folder: Path, images: int, repeats: int, cameras: int = 6) -> dict:
    """``generate_colour_camstyle`` (camera statistics included) into a fresh folder per run."""
    records = _images(folder / "colour", images, cameras)

    def run(durable: bool, tag: str) -> tuple[int, float]:
        start = time.perf_counter()
        counts, _ = generate_colour_camstyle(
            records, cameras, folder / f"colour_{tag}", workers=2, progress=False, durable=durable
        )
        return counts.written, time.perf_counter() - start

    return {"source_images": images, **_both_ways(run, repeats)}


def write_speed(folder: Path, images: int, repeats: int, threads: int, size: tuple[int, int] = (64, 128)) -> dict:
    """The bare write path of every CamStyle image: ``ImageWriter`` (JPEG encode + atomic write)."""
    rng = np.random.default_rng(0)
    # A few distinct frames reused: the encoder's cost depends on content, not on which array it is.
    frames = [np.clip(rng.normal(120, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8) for _ in range(16)]

    def run(durable: bool, tag: str) -> tuple[int, float]:
        out = folder / f"write_{threads}_{tag}"
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with ImageWriter(threads=threads, durable=durable) as writer:
            for i in range(images):
                writer.submit(frames[i % len(frames)], out / f"{i:06d}_c1_{i:05d}_fake_2.jpg")
        return images, time.perf_counter() - start

    return {"image_size": f"{size[1]}x{size[0]}", "threads": threads, **_both_ways(run, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=1, help="timed steps of each kind per input size")
    parser.add_argument("--gen-images", type=int, default=12, help="source images for the generation timing")
    parser.add_argument("--colour-images", type=int, default=600, help="source images for the colour timing")
    parser.add_argument("--write-images", type=int, default=2000, help="images for the bare JPEG-writer timing")
    parser.add_argument("--dir", type=Path, default=None, help="where the timed files are written (a temp folder)")
    parser.add_argument("--repeats", type=int, default=3, help="runs each way (fsync or not) of the write timings")
    parser.add_argument("--gen-repeats", type=int, default=1, help="runs each way of the StarGAN generation timing")
    parser.add_argument("--no-train", action="store_true", help="skip the StarGAN training timings")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    result = {
        "bench": "camstyle_speed",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "batch_size": 16,
    }
    if not args.no_train:
        result["train_256x128"] = train_speed((256, 128), args.iters, device)
        result["train_128x64"] = train_speed((128, 64), args.iters, device)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result["write_dir"] = tmp
        # The production writer (4 threads), then one thread: the per-image cost an fsync adds, unhidden.
        result["jpeg_writer"] = write_speed(Path(tmp), args.write_images, args.repeats, threads=4)
        result["jpeg_writer_1_thread"] = write_speed(Path(tmp), args.write_images // 4, args.repeats, threads=1)
        result["colour"] = colour_speed(Path(tmp), args.colour_images, args.repeats)
        result["generation_256x128"] = generation_speed(Path(tmp), args.gen_images, device, args.gen_repeats)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
