"""``ecnreid prepare``: make the CamStyle set of a target dataset, or check an existing one.

``run_prepare`` reads the target's training images, optionally groups them into pseudo cameras, then either
trains (or reuses) a StarGAN generator and renders every image in every other camera's style, or does the
same with the colour-statistics method. The summary is returned and written as ``prepare.json`` into the
output folder. ``run_check`` and ``render_check_table`` are re-exported for ``--check``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from camstyle.check import PREPARE_FILE, CheckReport, render_check_table, run_check
from camstyle.colour import generate_colour_camstyle
from camstyle.generate import GenerationCounts, generate_camstyle, load_generator
from camstyle.pseudo_cameras import adjusted_rand_index, assign_pseudo_cameras, cluster_purity, write_pseudo_cameras
from camstyle.trainer import GENERATOR_NAME, StarGANConfig, train_stargan
from ecnreid.config import config_to_dict
from ecnreid.data.camstyle_dataset import (
    CAMSTYLE_FOLDER,
    PSEUDO_CAMERAS_FILE,
    apply_pseudo_cameras,
    load_pseudo_cameras,
)
from ecnreid.data.camstyle_names import count_schemes
from ecnreid.data.datasets import read_dataset
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError
from ecnreid.io import ensure_output_dir, require_file, sweep_stale_temp_files, write_json
from ecnreid.progress import console
from ecnreid.runtime import is_interruption, resolve_device

__all__ = ["CheckReport", "PrepareConfig", "render_check_table", "run_check", "run_prepare"]

METHODS = {
    "stargan": "StarGAN, one generator for all cameras (ECN paper)",
    "colour": "per-camera colour statistics in Lab (fast, no training)",
}


@dataclass(frozen=True)
class PrepareConfig:
    """`ecnreid prepare`: the CamStyle set of ``dataset`` at ``root`` (defaults are ECN's StarGAN setting)."""

    dataset: str
    root: Path
    method: str = "stargan"
    iters: int = 200_000
    image_size: tuple[int, int] = (256, 128)
    generator: Path | None = None
    out: Path | None = None
    work_dir: Path | None = None
    device: str = "auto"
    batch_size: int = 16
    seed: int = 0
    pseudo_cameras: int | None = None
    sample_every: int = 1000
    checkpoint_every: int = 1000
    resume: bool = False
    workers: int = 4
    generate_batch_size: int = 64
    conv_dim: int = 64
    g_repeat_num: int = 6
    d_repeat_num: int = 6
    residual_generator: bool = False
    camera_norm: bool = False
    n_critic: int = 5  # critic steps per generator step (StarGAN: 5)
    lr: float = 1e-4  # Adam learning rate of both networks (StarGAN: 1e-4)
    lambda_rec: float = 10.0  # weight of the cycle reconstruction (StarGAN: 10)
    amp: bool = False  # bf16 autocast for StarGAN training on CUDA (StarGAN: fp32)
    progress: bool = True

    def stargan_config(self) -> StarGANConfig:
        return StarGANConfig(
            iters=self.iters,
            batch_size=self.batch_size,
            image_size=self.image_size,
            g_conv_dim=self.conv_dim,
            g_repeat_num=self.g_repeat_num,
            d_conv_dim=self.conv_dim,
            d_repeat_num=self.d_repeat_num,
            g_residual=self.residual_generator,
            g_camera_norm=self.camera_norm,
            n_critic=self.n_critic,
            g_lr=self.lr,
            d_lr=self.lr,
            lambda_rec=self.lambda_rec,
            amp=self.amp,
            seed=self.seed,
            workers=self.workers,
            sample_every=self.sample_every,
            checkpoint_every=self.checkpoint_every,
            progress=self.progress,
        )


def _validate(config: PrepareConfig) -> None:
    if config.method not in METHODS:
        raise EcnreidError(f"--method {config.method}: unknown; valid methods: {', '.join(METHODS)}")
    root = Path(config.root)
    if root.exists() and not root.is_dir():
        raise EcnreidError(f"--root {root}: is a file; expected the dataset folder")
    if config.method == "stargan" and config.generator is not None:
        require_file(config.generator, "--generator", "StarGAN checkpoint file")
    if config.pseudo_cameras is not None and config.pseudo_cameras < 2:
        raise EcnreidError(f"--pseudo-cameras {config.pseudo_cameras}: needs at least 2 style clusters")
    if config.method != "stargan" or config.generator is not None:
        return
    if config.iters < 1:
        raise EcnreidError(f"--iters {config.iters}: must be at least 1")
    if config.batch_size < 1:
        raise EcnreidError(f"--batch-size {config.batch_size}: must be at least 1")
    if config.lambda_rec < 0:
        raise EcnreidError(f"--lambda-rec {config.lambda_rec}: must not be negative")
    if not config.lr > 0:
        raise EcnreidError(f"--lr {config.lr}: must be positive")
    if config.n_critic < 1:
        raise EcnreidError(f"--n-critic {config.n_critic}: must be at least 1")
    h, w = config.image_size
    scale = 2**config.d_repeat_num
    if h % scale or w % scale:
        raise EcnreidError(
            f"--image-size {h}x{w}: height and width must be multiples of {scale} "
            f"(the discriminator halves them {config.d_repeat_num} times)"
        )


def _pseudo_cameras(
    config: PrepareConfig, records: list[ImageRecord], out: Path
) -> tuple[list[ImageRecord], dict[str, Any] | None]:
    """Records with pseudo cameras (reusing the folder's mapping when there is one), and a summary."""
    mapping = load_pseudo_cameras(out)
    if config.pseudo_cameras is None:
        if mapping is not None:
            raise EcnreidError(
                f"{out / PSEUDO_CAMERAS_FILE}: this folder was made with --pseudo-cameras; "
                "pass --pseudo-cameras again or choose another --out"
            )
        return records, None
    if mapping is not None:
        found = len(set(mapping.values()))
        if found != config.pseudo_cameras:
            raise EcnreidError(
                f"{out / PSEUDO_CAMERAS_FILE}: holds {found} pseudo cameras, not {config.pseudo_cameras}; "
                "delete the folder or choose another --out"
            )
        grouped = apply_pseudo_cameras(records, mapping)
    else:
        cameras = assign_pseudo_cameras(
            records, config.pseudo_cameras, seed=config.seed, workers=config.workers, progress=config.progress
        )
        write_pseudo_cameras(out, records, cameras)
        grouped = [ImageRecord(r.path, r.pid, c) for r, c in zip(records, cameras, strict=True)]
    sizes = [0] * config.pseudo_cameras
    for record in grouped:
        sizes[record.camid] += 1
    info: dict[str, Any] = {
        "k": config.pseudo_cameras,
        "images_per_camera": sizes,
        "file": str(out / PSEUDO_CAMERAS_FILE),
    }
    if len({r.camid for r in records}) > 1:
        # The dataset does have camera ids: report how well the clusters recover them.
        truth, found = [r.camid for r in records], [r.camid for r in grouped]
        info["purity_vs_cameras"] = cluster_purity(found, truth)
        info["ari_vs_cameras"] = adjusted_rand_index(found, truth)
    return grouped, info


def _sweep(folder: Path) -> None:
    """Remove what killed runs left in ``folder`` (hidden temp files of atomic writes), saying so if any."""
    removed = sweep_stale_temp_files(folder)
    if removed:
        plural = "s" if removed != 1 else ""
        console.print(f"removed {removed} stale temp file{plural} from {folder}", soft_wrap=True, highlight=False)


def _work_dir(config: PrepareConfig, out: Path) -> Path:
    """Where StarGAN trains (checkpoints, samples): ``--work-dir``, else beside the CamStyle folder."""
    return Path(config.work_dir) if config.work_dir is not None else out.parent / f"{out.name}_stargan"


def _prepare_work_dir(work_dir: Path, config: PrepareConfig) -> None:
    """Create and sweep the StarGAN work folder before the (long) run, so a file in the way fails at once."""
    ensure_output_dir(work_dir, "--work-dir")
    _sweep(work_dir)
    if config.sample_every:
        # The trainer writes sample grids here; a file in the way would otherwise fail 1000 iterations in.
        _sweep(ensure_output_dir(work_dir / "samples", "--work-dir"))


def _stargan_set(
    config: PrepareConfig,
    records: list[ImageRecord],
    num_cameras: int,
    out: Path,
    device: torch.device,
    summary: dict[str, Any],
) -> GenerationCounts | None:
    """Train (or load) the generator, then render the set; None when training was interrupted."""
    work_dir = _work_dir(config, out)
    if config.generator is not None:
        generator, spec = load_generator(config.generator, device)
        summary["paths"]["generator"] = str(config.generator)
        if spec.num_cameras != num_cameras:
            raise EcnreidError(
                f"--generator {config.generator}: trained for {spec.num_cameras} cameras but the "
                f"{summary['dataset']} training images at {summary['root']} have {num_cameras}"
            )
    elif not config.resume and (work_dir / GENERATOR_NAME).is_file():
        # A finished training run (e.g. generation was interrupted): reuse it rather than refuse to overwrite.
        console.print(f"reusing the trained generator {work_dir / GENERATOR_NAME} (pass --resume to train further)")
        generator, spec = load_generator(work_dir / GENERATOR_NAME, device)
        summary["paths"] |= {"work_dir": str(work_dir), "generator": str(work_dir / GENERATOR_NAME)}
    else:
        result = train_stargan(records, num_cameras, config.stargan_config(), work_dir, device, config.resume)
        summary["paths"] |= {"work_dir": str(work_dir), "checkpoint": str(result.checkpoint)}
        summary["iterations"] = result.iteration
        if result.interrupted:
            return None
        generator, spec = load_generator(result.generator, device)
        summary["paths"]["generator"] = str(result.generator)
    summary["image_size"] = list(spec.image_size)
    return generate_camstyle(
        generator,
        records,
        num_cameras,
        out,
        image_size=spec.image_size,
        batch_size=config.generate_batch_size,
        device=device,
        workers=config.workers,
        progress=config.progress,
    )


def interrupted_message(config: PrepareConfig, summary: dict[str, Any]) -> str:
    """What to run after an interruption: ``--resume`` only helps when StarGAN training itself was cut short
    (generation skips the files already written whether or not it is given)."""
    message = "prepare interrupted; rerun the same command to continue"
    training_cut = "iterations" in summary and summary["iterations"] < config.iters
    if training_cut and not config.resume:
        message += " (add --resume to continue StarGAN training)"
    return message


def run_prepare(config: PrepareConfig) -> dict[str, Any]:
    """Make the CamStyle set described by ``config``; returns the summary also written to ``prepare.json``."""
    started = time.perf_counter()
    _validate(config)
    device = resolve_device(config.device)
    dataset = read_dataset(config.dataset, config.root, require_test=False)
    out = Path(config.out) if config.out is not None else Path(dataset.root) / CAMSTYLE_FOLDER
    ensure_output_dir(out, "--out")
    if count_schemes(out)["cyclegan"]:
        raise EcnreidError(f"--out {out}: already holds a CycleGAN-named set; choose another --out")
    _sweep(out)
    if config.method == "stargan" and config.generator is None:
        _prepare_work_dir(_work_dir(config, out), config)
    records, pseudo = _pseudo_cameras(config, list(dataset.train), out)
    num_cameras = max(r.camid for r in records) + 1
    if num_cameras < 2:
        raise EcnreidError(
            f"{dataset.root}: all {len(records)} training images are in one camera; CamStyle needs at least two "
            "(use --pseudo-cameras K to group them by style)"
        )
    summary: dict[str, Any] = {
        "dataset": dataset.name,
        "root": str(dataset.root),
        "method": config.method,
        "scheme": "stargan",
        "images": len(records),
        "cameras": num_cameras,
        "device": str(device),
        "paths": {"out": str(out)},
    }
    if pseudo is not None:
        summary["pseudo_cameras"] = pseudo

    try:
        if config.method == "colour":
            counts, styles = generate_colour_camstyle(
                records, num_cameras, out, workers=config.workers, progress=config.progress
            )
            summary["colour_styles"] = styles.to_dict()
        else:
            counts = _stargan_set(config, records, num_cameras, out, device, summary)
    except (KeyboardInterrupt, RuntimeError) as exc:
        if not is_interruption(exc):
            raise
        counts = None  # every file already written is complete (atomic writes); a rerun skips them
    if counts is None:
        summary |= {"interrupted": True, "seconds": round(time.perf_counter() - started, 3)}
        summary["config"] = config_to_dict(config)
        console.print(f"[yellow]{interrupted_message(config, summary)}")
        return summary
    summary |= {"written": counts.written, "skipped": counts.skipped}
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["config"] = config_to_dict(config)
    write_json(summary, out / PREPARE_FILE)
    console.print(
        f"CamStyle ({config.method}): {counts.written} written, {counts.skipped} already there, "
        f"{len(records)} images x {num_cameras - 1} other cameras in {out}"
    )
    return summary
