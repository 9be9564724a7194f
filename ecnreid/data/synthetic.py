"""The built-in synthetic dataset: procedurally drawn people in two domains that differ in camera style.

Each domain is a small re-ID dataset in the standard layout (``bounding_box_train/``, ``query/``,
``bounding_box_test/``, files ``{pid:04d}_c{cam}_{n:05d}.jpg`` with 1-based cameras, 128×64 JPEG).
Identities are disjoint between the domains and between train and test. What a domain holds is a
:class:`~ecnreid.config.DomainSpec`: its people's fashion, its cameras' style, its layout.

- A person is drawn with Pillow from identity attributes and a per-image pose (``synthetic_people``).
- Every camera has a style: a scene background, a colour cast, lighting, blur, noise, a typical viewpoint mix
  and framing (``synthetic_cameras``).
- This module plans a domain's images (who, which camera, which split) and writes the dataset layout.
- In the default pair (``DEFAULT_SOURCE``, ``DEFAULT_TARGET``) the source's cameras are mild variations of
  neutral styles on plain backgrounds; the target's cameras have strong, distinct colour casts, lighting, blur
  and noise, and textured backgrounds. Appearance identifies a person within a camera; matching across target
  cameras needs camera invariance, which a model trained on the source alone does not learn. That is the gap
  ECN is meant to close. Measured with a small CNN trained on the source ids (``tests/test_synthetic.py``,
  seeds 0 and 1): source rank-1 ≈ 95%, target rank-1 ≈ 0% (the nearest neighbour is nearly always a
  same-camera stranger), and ≈ 50% once each target camera's colour statistics are normalised: identity
  survives the style.

Output is byte-identical for the same specs and seed (NumPy ``Generator`` streams keyed by seed, domain and
item; Pillow drawing and JPEG encoding are deterministic for a given Pillow build).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ecnreid.config import DEFAULT_SOURCE, DEFAULT_TARGET, CameraStyleSpec, DomainSpec, LayoutSpec
from ecnreid.data.synthetic_cameras import SOURCE_BACKGROUNDS, TARGET_BACKGROUNDS, apply_camera, make_camera, make_scene
from ecnreid.data.synthetic_people import BAGS, BOTTOMS, PATTERNS, VIEWS, draw_person, make_identity
from ecnreid.errors import EcnreidError
from ecnreid.io import write_json

__all__ = [
    "BAGS",
    "BOTTOMS",
    "CAMSTYLE_PREFIX",
    "DEFAULT_SOURCE",
    "DEFAULT_TARGET",
    "FILE_NAME",
    "FIRST_PIDS",
    "FORMAT_VERSION",
    "HEIGHT",
    "JPEG_QUALITY",
    "PATTERNS",
    "SOURCE_BACKGROUNDS",
    "SPLITS",
    "SUPERSAMPLE",
    "TARGET_BACKGROUNDS",
    "VIEWS",
    "WIDTH",
    "CameraStyleSpec",
    "DomainSpec",
    "LayoutSpec",
    "generate_synthetic",
    "render_image",
]

FORMAT_VERSION = 2  # 2: ``params`` holds the seed and each domain's spec
SPLITS = ("bounding_box_train", "query", "bounding_box_test")
FILE_NAME = re.compile(r"^\d{4}_c\d+_\d{5,}\.jpg$")
CAMSTYLE_PREFIX = "bounding_box_train_camstyle"  # derived from the target by `prepare`; stale once regenerated
HEIGHT, WIDTH = 128, 64  # output images
JPEG_QUALITY = 92
SUPERSAMPLE = 2  # people are drawn at 2× and box-filtered down, for anti-aliased edges
FIRST_PIDS = {"source": 1, "target": 5001}  # both written with 4 digits


def _round(value: Any) -> Any:
    """JSON-friendly copy with floats rounded (keeps synthetic.json readable and comparable)."""
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_round(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), 5)
    if isinstance(value, np.integer):
        return int(value)
    return value


def render_image(
    who: dict,
    camera: dict,
    scene: np.ndarray,
    rng: np.random.Generator,
    pose_rng: np.random.Generator | None = None,
) -> Image.Image:
    """One 8-bit RGB image of person ``who`` seen by ``camera`` over ``scene`` (from ``make_scene``: the image
    is as high as the scene and half as wide).

    ``pose_rng`` (default: ``rng``) draws the view and pose; images given generators in the same state show
    the person in the same pose, as the frames of one track do.
    """
    pose_rng = rng if pose_rng is None else pose_rng
    height, width = scene.shape[0], scene.shape[1] // 2
    left = int(rng.integers(0, scene.shape[1] - width + 1))
    background = scene[:, left : left + width]
    big = Image.fromarray((background * 255.0 + 0.5).astype(np.uint8)).resize(
        (width * SUPERSAMPLE, height * SUPERSAMPLE), Image.Resampling.NEAREST
    )
    view = VIEWS[pose_rng.choice(4, p=camera["view_weights"])]
    draw_person(big, who, pose_rng, view, camera["framing"])
    small = big.resize((width, height), Image.Resampling.BOX)
    return apply_camera(np.asarray(small, np.float32) / 255.0, camera, rng)


# --- dataset layout -----------------------------------------------------------------------------------


def _plan_domain(rng: np.random.Generator, first_pid: int, layout: LayoutSpec) -> list[tuple[str, int, int]]:
    """(split, pid, 0-based camera) for every image of one domain, in generation order (see ``LayoutSpec``)."""
    plan = []
    for offset in range(layout.train_ids + layout.test_ids):
        pid = first_pid + offset
        cameras = layout.cameras
        seen_by = sorted(rng.choice(cameras, size=int(rng.integers(2, cameras + 1)), replace=False).tolist())
        for cam in seen_by:
            if offset < layout.train_ids:
                count = int(rng.integers(1, layout.train_images_per_camera + 1))
                plan += [("bounding_box_train", pid, cam)] * count
            else:
                plan += [("query", pid, cam)] + [("bounding_box_test", pid, cam)] * layout.gallery_per_camera
    return plan


def _render_domain(folder: Path, spec: DomainSpec, seed: int, index: int, first_pid: int) -> dict[str, Any]:
    """Write one domain's three splits under ``folder`` and return its description. Its random streams are
    keyed by ``seed``, ``index`` (0 source, 1 target), what they draw, and the camera, person or image."""

    def stream(*key: int) -> np.random.Generator:
        return np.random.default_rng([seed, index, *key])

    layout = spec.layout
    plan = _plan_domain(stream(0), first_pid, layout)
    cast_offset = float(stream(5).random())
    cams = [make_camera(stream(1, c), c, layout.cameras, spec.camera, cast_offset) for c in range(layout.cameras)]
    scenes = [make_scene(cam["background"], stream(2, c), HEIGHT, WIDTH) for c, cam in enumerate(cams)]
    people: dict[int, dict] = {}
    for split in SPLITS:
        (folder / split).mkdir(parents=True, exist_ok=True)
    for n, (split, pid, cam) in enumerate(plan):
        if pid not in people:
            people[pid] = make_identity(stream(3, pid), spec.person.achromatic)
        # Training tracks: a person's images in one camera share view and pose (as the frames of a track do);
        # background crop, exposure flicker and noise still change per image.
        pose_rng = stream(6, pid, cam) if layout.tracks and split == "bounding_box_train" else None
        image = render_image(people[pid], cams[cam], scenes[cam], stream(4, n), pose_rng=pose_rng)
        image.save(folder / split / f"{pid:04d}_c{cam + 1}_{n:05d}.jpg", quality=JPEG_QUALITY)
    first_test = first_pid + layout.train_ids
    return {
        "pids": {"train": [first_pid, first_test - 1], "test": [first_test, first_test + layout.test_ids - 1]},
        "images": {split: sum(1 for s, _, _ in plan if s == split) for split in SPLITS},
        "cameras": _round(cams),
    }


def _check_replaceable(folder: Path) -> None:
    """Refuse to delete ``folder`` unless it only holds what ``generate_synthetic`` writes (and CamStyle
    sets made from it, which a regeneration makes stale)."""
    if not folder.exists():
        return
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        ours = parts[0].startswith(CAMSTYLE_PREFIX) or (
            parts[0] in SPLITS
            and (len(parts) == 1 and path.is_dir() or len(parts) == 2 and FILE_NAME.match(path.name) is not None)
        )
        if not ours:
            raise EcnreidError(f"{path}: not written by the synthetic generator; refusing to replace {folder}")


def generate_synthetic(
    out_dir: str | Path,
    *,
    source: DomainSpec = DEFAULT_SOURCE,
    target: DomainSpec = DEFAULT_TARGET,
    seed: int = 0,
) -> dict:
    """Write the two-domain synthetic dataset under ``out_dir`` and return its description.

    Layout: ``out_dir/source/`` and ``out_dir/target/`` (each ``bounding_box_train/``, ``query/``,
    ``bounding_box_test/``) and ``out_dir/synthetic.json``: ``params`` (the seed and each domain's spec as
    ``dataclasses.asdict``), and per domain its id ranges, image counts and drawn camera styles.
    Nothing is rewritten when ``synthetic.json`` already records the same parameters; folders holding files
    the generator did not write are never replaced. Source person ids start at 1, target ids at 5001; in each
    domain the first ``layout.train_ids`` ids are the training ids and the next ``layout.test_ids`` the
    query/gallery ids. A domain's images depend only on its own spec and the seed.
    """
    out_dir = Path(out_dir)
    domains = {"source": source, "target": target}
    for name, spec in domains.items():
        if not isinstance(spec, DomainSpec):
            raise EcnreidError(f"synthetic {name}: expected a DomainSpec, got {type(spec).__name__}")
    if seed < 0:
        raise EcnreidError(f"--seed: must be non-negative, got {seed}")
    params = json.loads(json.dumps({"seed": seed, **{name: dataclasses.asdict(s) for name, s in domains.items()}}))
    meta_path = out_dir / "synthetic.json"
    if meta_path.is_file():
        try:
            existing = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            existing = {}
        complete = all((out_dir / d / s).is_dir() for d in domains for s in SPLITS)
        if existing.get("format") == FORMAT_VERSION and existing.get("params") == params and complete:
            return existing

    for name in domains:
        _check_replaceable(out_dir / name)
    staging = out_dir / ".synthetic.staging"
    if staging.exists():
        shutil.rmtree(staging)  # a previous run was interrupted; the name is ours
    meta: dict[str, Any] = {"format": FORMAT_VERSION, "params": params, "domains": {}}
    for index, (name, spec) in enumerate(domains.items()):
        meta["domains"][name] = _render_domain(staging / name, spec, seed, index, FIRST_PIDS[name])

    meta_path.unlink(missing_ok=True)  # from here on the folders and the JSON may disagree
    for name in domains:
        final = out_dir / name
        if final.exists():
            shutil.rmtree(final)
        (staging / name).rename(final)
    staging.rmdir()
    write_json(meta, meta_path)
    return json.loads(json.dumps(meta))
