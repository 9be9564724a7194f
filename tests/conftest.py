"""Shared fixtures: tiny re-ID image trees drawn with Pillow, and the path of the real data (if any)."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

# Tests use tiny tensors: one thread avoids thread-pool stalls on a shared 2-core machine.
torch.set_num_threads(1)



@pytest.fixture(autouse=True)
def _no_weight_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never download ImageNet weights: a test that forgets --no-pretrained fails here, online or not."""

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("tests do not download weights")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)


# The real datasets and the MobileNetV2 ImageNet weights: the documented variables, else the project's
# data folder beside the checkout; tests that need them skip when they are absent.
_BESIDE = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = Path(os.environ.get("ECNREID_DATA", _BESIDE / "data"))
MOBILENET_WEIGHTS = Path(os.environ.get("ECNREID_WEIGHTS", _BESIDE / "weights" / "mobilenet_v2_imagenet_features.pth"))


def make_reid_tree(
    root: Path,
    *,
    ids: int = 4,
    cameras: int = 2,
    per_camera: int = 2,
    test_ids: int = 3,
    size: tuple[int, int] = (32, 16),
    seed: int = 0,
    first_pid: int = 1,
) -> Path:
    """A Market-style tree (bounding_box_train, query, bounding_box_test) of flat-coloured people.

    Each identity has its own colour; each camera adds its own brightness shift. Files are
    ``{pid:04d}_c{cam}_{n:05d}.jpg`` with 1-based cameras.
    """
    rng = np.random.default_rng(seed)
    height, width = size

    def draw(pid: int, cam: int) -> Image.Image:
        colour = np.array([(pid * 67) % 256, (pid * 131) % 256, (pid * 29) % 256], dtype=np.float32)
        pixels = colour + 25.0 * cam + rng.normal(0, 8, (height, width, 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    def write(folder: str, pids: range, per: int) -> None:
        out = root / folder
        out.mkdir(parents=True, exist_ok=True)
        n = 0
        for pid in pids:
            for cam in range(1, cameras + 1):
                for _ in range(per):
                    draw(pid, cam).save(out / f"{pid:04d}_c{cam}_{n:05d}.jpg")
                    n += 1

    write("bounding_box_train", range(first_pid, first_pid + ids), per_camera)
    test_pids = range(first_pid + ids, first_pid + ids + test_ids)
    write("query", test_pids, 1)
    write("bounding_box_test", test_pids, 2)
    return root


@pytest.fixture()
def two_domains(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny labelled source and unlabelled target (different identities and camera counts)."""
    source = make_reid_tree(tmp_path / "source", ids=4, cameras=2, per_camera=2, seed=1)
    target = make_reid_tree(tmp_path / "target", ids=4, cameras=3, per_camera=2, seed=2, first_pid=50)
    return source, target
