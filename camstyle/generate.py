"""Batched CamStyle generation with a trained StarGAN generator (docs/stargan_cpu.md, data/README.md).

Every target training image is rendered in every other camera's style and written as
``{stem}_fake_{c}.jpg`` (c 1-based) at the image's original size. Existing files are skipped, so a killed
run picks up where it stopped; writes are atomic, so a file that exists is complete. The images are not
fsynced (``durable=False``): the rename alone keeps a killed process from leaving a half-written file, and
an fsync per image is a disk flush each. Only a power loss or kernel crash can then leave an empty image,
which ``prepare --check`` lists as corrupt (delete those and rerun).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from camstyle.stargan import Generator, ModelSpec
from ecnreid.data.camstyle_names import stargan_name
from ecnreid.data.image_dataset import load_image
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError
from ecnreid.io import atomic_save_image
from ecnreid.progress import make_progress
from ecnreid.runstate import load_torch_file

JPEG_QUALITY = 95


@dataclass(frozen=True)
class GenerationCounts:
    """Files written by this call and files that already existed (and were left alone)."""

    written: int
    skipped: int


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] → (N, H, W, 3) uint8, on the same device."""
    scaled = (images.float().clamp(-1.0, 1.0) + 1.0) * 127.5
    return scaled.round().to(torch.uint8).permute(0, 2, 3, 1)


def to_model_input(image: Image.Image, image_size: tuple[int, int]) -> torch.Tensor:
    """A PIL image resized (bicubic) to ``image_size`` (h, w) as a (3, h, w) tensor in [-1, 1]."""
    image = TF.resize(image, list(image_size), TF.InterpolationMode.BICUBIC, antialias=True)
    return TF.to_tensor(image) * 2.0 - 1.0


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no loss scaling needed), a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Generator, ModelSpec]:
    """The generator of a StarGAN checkpoint written by ``train_stargan`` (full or generator-only)."""
    path = Path(path)
    state = load_torch_file(path, "StarGAN generator checkpoint", weights_only=False, keys=("generator", "model"))
    try:
        spec = ModelSpec.from_dict(state["model"])
        generator = spec.build_generator()
        generator.load_state_dict(state["generator"])
    except (TypeError, KeyError, ValueError, RuntimeError) as exc:
        raise EcnreidError(
            f"{path}: its generator weights do not match its model entry; expected a StarGAN checkpoint written by "
            "`ecnreid prepare` (generator.pt in its --work-dir)"
        ) from exc
    return generator.to(device).eval(), spec


class ImageWriter:
    """Encodes and writes JPEGs on a thread pool (Pillow releases the GIL while encoding).

    At most ``max_pending`` images wait in memory; ``close`` waits for all and re-raises the first error.
    ``durable`` fsyncs every file (see ``ecnreid.io.atomic_write_bytes``); off by default for bulk sets.
    """

    def __init__(
        self, threads: int = 4, quality: int = JPEG_QUALITY, max_pending: int = 512, durable: bool = False
    ) -> None:
        self.quality = quality
        self.max_pending = max_pending
        self.durable = durable
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads))
        self._pending: deque[Future] = deque()

    def _write(self, pixels: np.ndarray, path: Path, size: tuple[int, int] | None, quality: int) -> None:
        image = Image.fromarray(pixels)
        if size is not None and image.size != size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        # Full-resolution chroma (4:4:4): a camera's style is largely its colour, which 4:2:0 would blur.
        atomic_save_image(image, path, durable=self.durable, quality=quality, subsampling=0)

    def submit(
        self, pixels: np.ndarray, path: Path, size: tuple[int, int] | None = None, quality: int | None = None
    ) -> None:
        """Queue (H, W, 3) uint8 ``pixels`` for ``path``, resized to ``size`` = (width, height) if given, at JPEG
        ``quality`` (default: the writer's)."""
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()
        chosen = self.quality if quality is None else quality
        self._pending.append(self._pool.submit(self._write, pixels, path, size, chosen))

    def close(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def missing_outputs(records: Sequence[ImageRecord], num_cameras: int, out_dir: Path) -> tuple[torch.Tensor, int]:
    """A (N, num_cameras) bool mask of StarGAN-named outputs still to write, and how many already exist.

    The own camera is never an output. One directory listing replaces N x C ``stat`` calls.
    """
    existing = set(os.listdir(out_dir)) if out_dir.is_dir() else set()
    todo = torch.zeros(len(records), num_cameras, dtype=torch.bool)
    skipped = 0
    for i, record in enumerate(records):
        stem = Path(record.path).stem
        for camera in range(num_cameras):
            if camera == record.camid:
                continue
            if stargan_name(stem, camera) in existing:
                skipped += 1
            else:
                todo[i, camera] = True
    return todo, skipped


class _SourceImages(Dataset):
    """Item ``k`` is (image (3, h, w) in [-1, 1], record index, original width, original height)."""

    def __init__(self, records: Sequence[ImageRecord], indices: Sequence[int], image_size: tuple[int, int]):
        self.records = records
        self.indices = list(indices)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, int, int]:
        index = self.indices[k]
        image = load_image(self.records[index].path)
        return to_model_input(image, self.image_size), index, image.width, image.height


@torch.inference_mode()
def generate_camstyle(
    generator: Generator,
    records: Sequence[ImageRecord],
    num_cameras: int,
    out_dir: str | os.PathLike,
    image_size: tuple[int, int] = (256, 128),
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    workers: int = 2,
    writer_threads: int = 4,
    progress: bool = True,
    durable: bool = False,
) -> GenerationCounts:
    """Write ``{stem}_fake_{c}.jpg`` for every record x every other camera; skip files that exist.

    The generator runs on batches of ``batch_size`` (image, target camera) pairs at ``image_size``; each
    output is resized back to its source image's size. ``durable`` fsyncs each image (slower; see the module).
    """
    out_dir = Path(out_dir)
    device = torch.device(device)
    if generator.num_cameras != num_cameras:  # callers check this against the user's files first
        raise ValueError(f"generator was trained for {generator.num_cameras} cameras but the dataset has {num_cameras}")
    out_dir.mkdir(parents=True, exist_ok=True)
    todo, skipped = missing_outputs(records, num_cameras, out_dir)
    total = int(todo.sum())
    if total == 0:
        return GenerationCounts(written=0, skipped=skipped)
    pending_images = todo.any(dim=1).nonzero().flatten().tolist()
    # About ``batch_size`` pairs per loaded batch of images, each image having up to C-1 targets.
    images_per_batch = max(1, batch_size // max(1, num_cameras - 1))
    loader = DataLoader(
        _SourceImages(records, pending_images, image_size),
        batch_size=images_per_batch,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    stems = [Path(r.path).stem for r in records]
    generator = generator.to(device).eval()
    written = 0
    with make_progress() as bar, ImageWriter(threads=writer_threads, durable=durable) as writer:
        task = bar.add_task("generate CamStyle", total=total, unit="img", info="", visible=progress)
        for images, indices, widths, heights in loader:
            rows, cameras = todo[indices].nonzero(as_tuple=True)
            for start in range(0, len(rows), batch_size):
                chunk_rows, chunk_cams = rows[start : start + batch_size], cameras[start : start + batch_size]
                batch = images[chunk_rows].to(device, non_blocking=True)
                with autocast_for(device):
                    fakes = generator(batch, chunk_cams.to(device))
                pixels = to_uint8(fakes).cpu().numpy()
                for k, (row, camera) in enumerate(zip(chunk_rows.tolist(), chunk_cams.tolist(), strict=True)):
                    index = int(indices[row])
                    size = (int(widths[row]), int(heights[row]))
                    writer.submit(pixels[k], out_dir / stargan_name(stems[index], camera), size)
                written += len(chunk_rows)
                bar.update(task, advance=len(chunk_rows))
    return GenerationCounts(written=written, skipped=skipped)
