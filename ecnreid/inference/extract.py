"""`ecnreid extract`: the adapted model's features of many images, written to a feature folder
(``ecnreid.inference.store``) so that a kill loses nothing.

``features.npy`` is preallocated and memory-mapped; after each batch its rows are flushed and then
``extract.json`` records the new count of finished rows, atomically. A rerun with the same options continues
from that count with the same batch boundaries, so the finished file is byte for byte the one an
uninterrupted run writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from rich.table import Table

from ecnreid.config import ExtractConfig
from ecnreid.errors import EcnreidError
from ecnreid.inference.adapted import AdaptedModel, iter_features, load_adapted_model
from ecnreid.inference.card import ecnreid_version, write_card_json
from ecnreid.inference.images import ImageEntry, dataset_images, decodable, list_images
from ecnreid.inference.messages import say
from ecnreid.inference.store import (
    CARD,
    DTYPES,
    FEATURES,
    INDEX,
    META,
    list_sha256,
    read_index,
    read_meta,
    write_index,
)
from ecnreid.io import ensure_output_dir, sweep_stale_temp_files, write_json
from ecnreid.progress import console, make_progress
from ecnreid.runstate import interruption_guard
from ecnreid.runtime import resolve_device

FORMAT = "ecnreid-features"
# What must match for a rerun to continue an extraction instead of refusing it.
RESUME_KEYS = ("listing_sha256", "checkpoint_sha256", "dim", "dtype", "flip", "skip_bad_images")


def _fresh_meta(
    adapted: AdaptedModel, listing: list[ImageEntry], source: dict[str, Any], dtype: str, flip: bool, skip: bool
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": 1,
        "source": source,
        "listing_sha256": list_sha256(listing),
        "checkpoint": str(Path(adapted.checkpoint).resolve()),
        "checkpoint_sha256": adapted.checkpoint_sha256,
        "dim": adapted.card.feature_dim,
        "dtype": dtype,
        "flip": flip,
        "skip_bad_images": skip,
        "input_size": [adapted.card.input_height, adapted.card.input_width],
        "ecnreid_version": ecnreid_version(),
    }


def _differing_key(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    return next((key for key in RESUME_KEYS if saved.get(key) != current.get(key)), None)


def _difference(key: str, saved: dict[str, Any], current: dict[str, Any]) -> str:
    """How an existing extraction differs from the one asked for, in words."""
    if key == "listing_sha256":
        return f"of other images ({saved.get('source')})"
    if key == "checkpoint_sha256":
        return f"by another checkpoint ({saved.get('checkpoint')})"
    return f"with {key} {saved.get(key)!r} (this one: {current[key]!r})"


def _start(
    out: Path, adapted: AdaptedModel, listing: list[ImageEntry], meta: dict[str, Any], workers: int
) -> tuple[dict[str, Any], list[ImageEntry]]:
    """A new extraction: the image list (bad images dropped when asked), index, card and the record of
    progress; ``features.npy`` is allocated after them, so a kill in between leaves a record that says 0 done."""
    entries, skipped = listing, []
    if meta["skip_bad_images"]:
        entries, skipped = decodable(listing, workers)
        if skipped:
            say(f"skipping {len(skipped)} undecodable images (listed in {out / META})", warn=True)
        if not entries:
            raise EcnreidError(f"{meta['source']}: none of the {len(listing)} images decodes")
    write_index(entries, out / INDEX)
    write_card_json(adapted.card, out / CARD)
    meta = {**meta, "count": len(entries), "skipped": skipped, "done": 0, "complete": False, "seconds": 0.0}
    write_json(meta, out / META)
    return meta, entries


def _features_file(out: Path, meta: dict[str, Any]) -> np.memmap:
    """The preallocated ``features.npy`` (created when no row is done yet), memory-mapped for writing."""
    path, shape, dtype = out / FEATURES, (meta["count"], meta["dim"]), DTYPES[meta["dtype"]]
    if meta["done"] == 0:
        return open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    try:
        features = open_memmap(path, mode="r+")
    except (OSError, ValueError) as exc:
        raise EcnreidError(f"{path}: cannot continue the extraction (not a readable .npy array: "
                           f"{getattr(exc, 'strerror', None) or exc}); delete {out} and extract again") from None
    if features.shape != shape or features.dtype != dtype:
        raise EcnreidError(f"{path}: holds {features.dtype} {features.shape}, but {out / META} expects "
                           f"{np.dtype(dtype)} {shape}; delete {out} and extract again")
    return features


def extract_to_folder(
    adapted: AdaptedModel,
    listing: list[ImageEntry],
    out: Path,
    *,
    source: dict[str, Any],
    dtype: str = "float32",
    flip: bool = False,
    device: torch.device | None = None,
    batch_size: int = 128,
    workers: int = 2,
    skip_bad_images: bool = False,
    restart_stale: bool = False,
    option: str = "--out",
) -> dict[str, Any]:
    """Extract the features of ``listing`` into the feature folder ``out``, or continue an extraction there
    that was stopped; returns the finished ``extract.json`` record.

    An existing extraction of other images, by another checkpoint or with other settings is refused (one
    line naming the difference), unless ``restart_stale`` (a cache that `search` owns): then it starts over.
    """
    device = device or torch.device("cpu")
    out = ensure_output_dir(out, option)
    sweep_stale_temp_files(out)
    current = _fresh_meta(adapted, listing, source, dtype, flip, skip_bad_images)
    saved = read_meta(out)
    if saved is None and (out / FEATURES).exists() and not restart_stale:
        raise EcnreidError(f"{option} {out}: holds a {FEATURES} that `ecnreid extract` did not write; choose "
                           "another folder")
    differing = _differing_key(saved, current) if saved is not None else None
    # --skip-bad-images after a stop at a bad image changes the image list: that extraction starts over.
    restart = restart_stale or (differing == "skip_bad_images" and saved is not None and not saved.get("complete"))
    if differing is not None and restart:
        say(f"{out}: starting the extraction over ({differing} changed)", warn=True)
    if differing is not None and not restart:
        raise EcnreidError(
            f"{option} {out}: holds an extraction {_difference(differing, saved, current)}; delete the folder or "
            f"choose another {option}"
        )
    if saved is not None and differing is None and saved.get("complete"):
        say(f"{out}: already extracted ({saved['count']} images)")
        return saved
    if saved is not None and differing is None:
        meta, entries = saved, read_index(out / INDEX)
        if len(entries) != meta.get("count"):
            raise EcnreidError(f"{out / INDEX}: {len(entries)} rows, but {out / META} counts {meta.get('count')}; "
                               f"delete {out} and extract again")
        if meta["done"]:
            say(f"resuming the extraction into {out} at image {meta['done'] + 1} of {meta['count']}")
    else:
        meta, entries = _start(out, adapted, listing, current, workers)
    features = _features_file(out, meta)
    adapted.to(device)
    start_time, seconds_before = time.perf_counter(), float(meta.get("seconds", 0.0))
    what = f"feature extraction into {out}"
    progress = make_progress(transient=False)
    with interruption_guard(None, what=what, resume_hint="the same command"), progress:
        task = progress.add_task("features", total=meta["count"], completed=meta["done"], unit="img", info="")
        records = [entry.record() for entry in entries[meta["done"] :]]
        done = meta["done"]
        batches = iter_features(adapted, records, device=device, batch_size=batch_size, workers=workers, flip=flip)
        try:
            for batch in batches:
                features[done : done + len(batch)] = batch.numpy().astype(features.dtype)
                features.flush()  # the rows reach the file before the count that covers them
                done += len(batch)
                meta = {**meta, "done": done, "seconds": seconds_before + time.perf_counter() - start_time}
                write_json(meta, out / META)
                progress.update(task, advance=len(batch))
        except EcnreidError as exc:
            if skip_bad_images:
                raise
            raise EcnreidError(
                f"{exc}; replace the file and rerun to resume, or rerun with --skip-bad-images (which starts over)"
            ) from None
    meta = {**meta, "complete": True}
    write_json(meta, out / META)
    del features
    return meta


def source_images(config: ExtractConfig) -> tuple[list[ImageEntry], dict[str, Any]]:
    """The images ``config`` names and a description of where they came from, for ``extract.json``."""
    if config.images is not None:
        return list_images(config.images, "--images"), {"images": str(Path(config.images).resolve())}
    assert config.dataset is not None and config.root is not None  # ExtractConfig's validation
    entries = dataset_images(config.dataset, config.root, config.split)
    if not entries:
        raise EcnreidError(f"--dataset {config.dataset} --root {config.root}: the {config.split} split has no images")
    return entries, {"dataset": config.dataset, "root": str(Path(config.root).resolve()), "split": config.split}


def render_extract_table(meta: dict[str, Any], out: Path) -> Table:
    table = Table(title=f"features of {meta['count']} images")
    for column in ("folder", "images", "dim", "dtype", "flip", "skipped", "seconds"):
        # A long folder wraps onto more lines instead of being cut with "…" (80 columns off a terminal).
        folder = column == "folder"
        table.add_column(column, justify="left" if folder else "right", overflow="fold" if folder else "ellipsis")
    table.add_row(
        str(out),
        str(meta["count"]),
        str(meta["dim"]),
        meta["dtype"],
        "yes" if meta["flip"] else "no",
        str(len(meta.get("skipped", []))),
        f"{meta.get('seconds', 0.0):.1f}",
    )
    return table


def run_extract(config: ExtractConfig) -> dict[str, Any]:
    """Library call behind ``ecnreid extract``."""
    run = config.features
    device = resolve_device(run.device)
    adapted = load_adapted_model(config.checkpoint)
    listing, source = source_images(config)
    meta = extract_to_folder(
        adapted,
        listing,
        config.out,
        source=source,
        dtype=run.dtype,
        flip=run.flip,
        device=device,
        batch_size=run.batch_size,
        workers=run.workers,
        skip_bad_images=run.skip_bad_images,
    )
    console.print(render_extract_table(meta, Path(config.out)))
    return meta
