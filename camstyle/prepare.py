"""``ecnreid prepare``: make the CamStyle set of a target dataset, or check an existing one.

``run_prepare`` reads the target's training images, optionally groups them into pseudo cameras, then either
trains (or reuses) a StarGAN generator and renders every image in every other camera's style, or does the
same with a training-free method: colour statistics, or camera matching (``camstyle.matching``). The summary
is returned and written as ``prepare.json`` into the output folder. ``run_check`` and ``render_check_table`` are
re-exported for ``--check``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from camstyle.check import PREPARE_FILE, CheckReport, render_check_table, run_check
from camstyle.colour import generate_colour_camstyle
from camstyle.generate import GenerationCounts, generate_camstyle, load_generator
from camstyle.matching import generate_matched_camstyle
from camstyle.pseudo_cameras import adjusted_rand_index, assign_pseudo_cameras, cluster_purity, write_pseudo_cameras
from camstyle.stargan import Generator, ModelSpec
from camstyle.trainer import GENERATOR_NAME, train_stargan
from ecnreid.config import PrepareConfig, config_to_dict
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
from ecnreid.runstate import interruption_guard
from ecnreid.runtime import resolve_device

__all__ = ["CheckReport", "render_check_table", "render_prepare_summary", "run_check", "run_prepare"]


def _validate(config: PrepareConfig) -> None:
    """What the config cannot check by itself: the paths it names (the config validates its values)."""
    root = Path(config.root)
    if root.exists() and not root.is_dir():
        raise EcnreidError(f"--root {root}: is a file; expected the dataset folder")
    if config.method == "stargan" and config.generator is not None:
        require_file(config.generator, "--generator", "StarGAN checkpoint file")


def _pseudo_cameras(
    config: PrepareConfig, records: list[ImageRecord], out: Path, progress: bool
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
            records, config.pseudo_cameras, seed=config.runtime.seed, workers=config.workers, progress=progress
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
    if config.stargan.sample_every:
        # The trainer writes sample grids here; a file in the way would otherwise fail 1000 iterations in.
        _sweep(ensure_output_dir(work_dir / "samples", "--work-dir"))


def _trained_generator(
    path: Path, label: str, num_cameras: int, device: torch.device, summary: dict[str, Any], advice: str = ""
) -> tuple[Generator, ModelSpec]:
    """The generator saved at ``path``; one trained for another number of cameras than this set's is a user
    error naming ``label`` (the option and path it came from)."""
    generator, spec = load_generator(path, device)
    if spec.num_cameras != num_cameras:
        raise EcnreidError(
            f"{label}: trained for {spec.num_cameras} cameras but the {summary['dataset']} training images at "
            f"{summary['root']} have {num_cameras}{advice}"
        )
    return generator, spec


def _stargan_set(
    config: PrepareConfig,
    records: list[ImageRecord],
    num_cameras: int,
    out: Path,
    device: torch.device,
    summary: dict[str, Any],
    progress: bool,
) -> GenerationCounts:
    """Train (or load) the generator, then render the set."""
    work_dir = _work_dir(config, out)
    if config.generator is not None:
        summary["paths"]["generator"] = str(config.generator)
        label = f"--generator {config.generator}"
        generator, spec = _trained_generator(Path(config.generator), label, num_cameras, device, summary)
    elif not config.runtime.resume and (work_dir / GENERATOR_NAME).is_file():
        # A finished training run (e.g. generation was interrupted): reuse it rather than refuse to overwrite.
        path = work_dir / GENERATOR_NAME
        console.print(f"reusing the trained generator {path} (pass --resume to train further)")
        advice = "; choose another --work-dir"
        generator, spec = _trained_generator(path, str(path), num_cameras, device, summary, advice)
        summary["paths"] |= {"work_dir": str(work_dir), "generator": str(path)}
    else:
        summary["paths"]["work_dir"] = str(work_dir)
        result = train_stargan(
            records,
            num_cameras,
            config.stargan,
            work_dir,
            device,
            config.runtime.resume,
            seed=config.runtime.seed,
            workers=config.workers,
            progress=progress,
        )
        summary["paths"]["checkpoint"] = str(result.checkpoint)
        summary["iterations"] = result.iteration
        generator, spec = load_generator(result.generator, device)
        summary["paths"]["generator"] = str(result.generator)
    summary["image_size"] = list(spec.image_size)
    return generate_camstyle(
        generator,
        records,
        num_cameras,
        out,
        image_size=spec.image_size,
        batch_size=config.stargan.generate_batch_size,
        device=device,
        workers=config.workers,
        progress=progress,
    )


def run_prepare(config: PrepareConfig, *, progress: bool = True) -> dict[str, Any]:
    """Make the CamStyle set described by ``config``; returns the summary also written to ``prepare.json``.

    A stop (Ctrl-C, SIGTERM under the CLI) re-raises after one yellow line on how to continue
    (``ecnreid.runstate.interruption_guard``): StarGAN training saves its checkpoint first (continue with
    ``--resume``); the CamStyle images already written are complete and a rerun skips them. ``progress``
    shows progress bars.
    """
    started = time.perf_counter()
    _validate(config)
    device = resolve_device(config.runtime.device)
    dataset = read_dataset(config.dataset, config.root, require_test=False)
    out = Path(config.out) if config.out is not None else Path(dataset.root) / CAMSTYLE_FOLDER
    ensure_output_dir(out, "--out")
    if count_schemes(out)["cyclegan"]:
        raise EcnreidError(f"--out {out}: already holds a CycleGAN-named set; choose another --out")
    _sweep(out)
    if config.method == "stargan" and config.generator is None:
        _prepare_work_dir(_work_dir(config, out), config)
    records, pseudo = _pseudo_cameras(config, list(dataset.train), out, progress)
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

    # Nothing to save on a stop: every file already written is complete (atomic writes) and a rerun skips it.
    # A stop in StarGAN training is reported by the trainer's own guard (where its checkpoint is, --resume).
    what = f"prepare of {out} (the CamStyle images written so far are complete and kept)"
    with interruption_guard(None, what=what, resume_hint="the same options"):
        if config.method == "colour":
            counts, styles = generate_colour_camstyle(
                records, num_cameras, out, workers=config.workers, progress=progress
            )
            summary["colour_styles"] = styles.to_dict()
        elif config.method == "capture":
            counts, profiles = generate_matched_camstyle(
                records, num_cameras, out, seed=config.runtime.seed, workers=config.workers, progress=progress
            )
            summary["camera_profiles"] = profiles.to_dict()
        else:
            counts = _stargan_set(config, records, num_cameras, out, device, summary, progress)
    summary |= {"written": counts.written, "skipped": counts.skipped}
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["config"] = config_to_dict(config)
    write_json(summary, out / PREPARE_FILE)
    return summary


def render_prepare_summary(summary: dict[str, Any]) -> Table:
    """What ``run_prepare`` made, in a few rows (everything else is in ``prepare.json``)."""
    out = Path(summary["paths"]["out"])
    table = Table(title=f"CamStyle set of {summary['dataset']} ({summary['method']})", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # paths whole, never cut with an ellipsis
    cameras = summary["cameras"]
    rows = [
        ("images", f"{summary['images']:,} training images x {cameras - 1} other cameras"),
        ("written", f"{summary['written']:,} ({summary['skipped']:,} already there)"),
        ("folder", str(out)),
    ]
    if "pseudo_cameras" in summary:
        rows.append(("cameras", f"{cameras} pseudo cameras (style clusters)"))
    if "generator" in summary["paths"]:
        rows.append(("generator", summary["paths"]["generator"]))
    rows += [("time", f"{summary['seconds']:.1f} s on {summary['device']}"), ("details", str(out / PREPARE_FILE))]
    for name, value in rows:
        table.add_row(name, value)
    return table
