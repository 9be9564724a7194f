"""A torch ``Dataset`` over ``ImageRecord``s, and a pre-scan that finds images that do not decode.

Bad images: ``ImageDataset`` raises a one-line ``EcnreidError`` for an image that cannot be read.
A Dataset cannot drop items mid-epoch without breaking indices (a target image's index is its
exemplar-memory slot), so skipping bad images is a step *before* building datasets: callers run
``verify_images`` on the records (for ``--skip-bad-images``) and build every dataset from the good ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from PIL import Image

from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError

# The remedy every undecodable-image error names (prepare has no skip: its set must be complete).
BAD_IMAGE_REMEDY = "replace or delete it, or skip such images with --skip-bad-images (train, eval, extract, search)"


def load_image(path: str) -> Image.Image:
    """Open ``path`` with Pillow as RGB, fully decoded; one-line ``EcnreidError`` when that fails."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as exc:
        raise EcnreidError(f"{path}: image file not found") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # Pillow reports broken files as OSError (truncated), UnidentifiedImageError (an OSError) or SyntaxError.
        raise EcnreidError(f"{path}: cannot decode image ({_why_undecodable(exc)}); {BAD_IMAGE_REMEDY}") from exc


def _why_undecodable(exc: BaseException) -> str:
    """Pillow's reason in a few words (its unidentified-image message repeats the path)."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image format Pillow reads"
    if isinstance(exc, Image.DecompressionBombError):
        return "too many pixels"
    text = " ".join(str(exc).split())
    return text or "damaged file"


class ImageDataset(torch.utils.data.Dataset):
    """Images of ``records``; item ``i`` is ``(transform(image), pid, camid, i)``.

    ``i`` is the index in ``records``: for the unlabelled target it is the exemplar-memory slot.
    With ``transform=None`` the image is returned as a PIL RGB image.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable[[Image.Image], Any] | None) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, int, int, int]:
        record = self.records[index]
        image = load_image(record.path)
        if self.transform is not None:
            image = self.transform(image)
        return image, record.pid, record.camid, index


def decodes_fully(path: str | os.PathLike) -> bool:
    """Whether the image at ``path`` decodes completely (False for missing, unidentifiable, truncated files).

    A draft (reduced-scale) JPEG decode still reads the whole entropy-coded stream, so a truncated file
    fails, at a fraction of a full decode's cost."""
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
        return True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def verify_images(
    records: Sequence[ImageRecord], progress: bool = True, workers: int = 4
) -> tuple[list[ImageRecord], list[str]]:
    """Decode every image once; return (records that decode, paths that do not), both in input order.

    Catches missing, unidentifiable and truncated files. Run it before building datasets when bad
    images should be skipped rather than stop the run.
    """
    records = list(records)
    paths = [r.path for r in records]
    # Pillow releases the GIL while decoding, so threads overlap the I/O and decode work.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(decodes_fully, paths, chunksize=64)
        if progress:
            from ecnreid.progress import make_progress

            ok = []
            with make_progress(transient=True) as bar:
                task = bar.add_task("verify images", total=len(paths), unit="img", info="")
                for good in results:
                    ok.append(good)
                    bar.update(task, advance=1)
        else:
            ok = list(results)
    good_records = [r for r, good in zip(records, ok, strict=True) if good]
    bad_paths = [p for p, good in zip(paths, ok, strict=True) if not good]
    return good_records, bad_paths
