"""The CamStyle file-name rule, both schemes, in one place (used by ``prepare``, ``train`` and ``--check``).

A CamStyle set lives in ``bounding_box_train_camstyle/`` beside ``bounding_box_train/``. Each file is one
target training image rendered in another camera's style (Zhong et al., CVPR 2019, "camera-invariance"):

- StarGAN (one generator for all cameras, what ``ecnreid prepare`` writes): ``{stem}_fake_{c}.jpg``,
  ``c`` the 1-based target camera;
- CycleGAN (one model per camera pair, the sets the ECN authors released for Market and Duke):
  ``{stem}_fake_{a}to{b}.jpg``, from the image's own camera ``a`` to camera ``b``, both 1-based.

Camera numbers may have any number of digits (MSMT17 has 15 cameras). The scheme is read from the files
themselves, never guessed from the dataset's name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, NamedTuple

from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError

Scheme = Literal["stargan", "cyclegan"]
SCHEMES: tuple[Scheme, ...] = ("stargan", "cyclegan")

# Greedy stem: a stem that itself contains "_fake_" still splits at the last marker.
_NAME = re.compile(r"^(?P<stem>.+)_fake_(?:(?P<own>\d+)to)?(?P<target>\d+)\.jpg$")


class CamStyleName(NamedTuple):
    """A parsed CamStyle file name; cameras are 0-based, ``own_cam0`` is None for the StarGAN scheme."""

    stem: str
    own_cam0: int | None
    target_cam0: int
    scheme: Scheme


def stargan_name(stem: str, target_cam0: int) -> str:
    """``{stem}_fake_{c}.jpg`` with ``c`` the 1-based target camera."""
    if target_cam0 < 0:
        raise ValueError(f"camera ids are 0-based and non-negative, got {target_cam0}")
    return f"{stem}_fake_{target_cam0 + 1}.jpg"


def cyclegan_name(stem: str, own_cam0: int, target_cam0: int) -> str:
    """``{stem}_fake_{a}to{b}.jpg`` with ``a`` the image's own and ``b`` the target camera, 1-based."""
    if own_cam0 < 0 or target_cam0 < 0:
        raise ValueError(f"camera ids are 0-based and non-negative, got {own_cam0} and {target_cam0}")
    return f"{stem}_fake_{own_cam0 + 1}to{target_cam0 + 1}.jpg"


def camstyle_name(stem: str, own_cam0: int, target_cam0: int, scheme: Scheme) -> str:
    """The file name of ``stem`` (own camera ``own_cam0``) rendered in ``target_cam0``'s style."""
    if scheme == "stargan":
        return stargan_name(stem, target_cam0)
    if scheme == "cyclegan":
        return cyclegan_name(stem, own_cam0, target_cam0)
    raise ValueError(f"unknown CamStyle scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")


def parse_camstyle_name(filename: str) -> CamStyleName | None:
    """Parse a CamStyle file name (either scheme); None when the name follows neither.

    Camera number 0 cannot occur in a 1-based name, so such a name counts as not following the rule.
    """
    match = _NAME.match(os.path.basename(filename))
    if match is None:
        return None
    target = int(match["target"])
    own = match["own"]
    if target == 0 or (own is not None and int(own) == 0):
        return None
    if own is None:
        return CamStyleName(match["stem"], None, target - 1, "stargan")
    return CamStyleName(match["stem"], int(own) - 1, target - 1, "cyclegan")


def count_schemes(camstyle_dir: str | os.PathLike) -> dict[Scheme, int]:
    """How many files in ``camstyle_dir`` follow each naming scheme."""
    counts: dict[Scheme, int] = {"stargan": 0, "cyclegan": 0}
    with os.scandir(camstyle_dir) as entries:
        for entry in entries:
            parsed = parse_camstyle_name(entry.name)
            if parsed is not None:
                counts[parsed.scheme] += 1
    return counts


def detect_scheme(camstyle_dir: str | os.PathLike) -> Scheme:
    """Read the naming scheme of an existing CamStyle folder from its file names.

    A folder that mixes both schemes, or holds no CamStyle file at all, is an error: either would make
    the camera-invariance input silently fall back to the original images.
    """
    camstyle_dir = Path(camstyle_dir)
    if not camstyle_dir.is_dir():
        raise EcnreidError(f"{camstyle_dir}: CamStyle folder does not exist")
    counts = count_schemes(camstyle_dir)
    if counts["stargan"] and counts["cyclegan"]:
        raise EcnreidError(
            f"{camstyle_dir}: mixes StarGAN ({counts['stargan']} files, *_fake_C.jpg) and CycleGAN "
            f"({counts['cyclegan']} files, *_fake_AtoB.jpg) names; keep one set per folder"
        )
    if counts["cyclegan"]:
        return "cyclegan"
    if counts["stargan"]:
        return "stargan"
    raise EcnreidError(f"{camstyle_dir}: no CamStyle images (*_fake_C.jpg or *_fake_AtoB.jpg) in this folder")


def camstyle_path(camstyle_dir: str | os.PathLike, record: ImageRecord, target_cam0: int, scheme: Scheme) -> Path:
    """Where ``record`` rendered in camera ``target_cam0``'s style lives; its own path for its own camera."""
    if target_cam0 == record.camid:
        return Path(record.path)
    stem = Path(record.path).stem
    return Path(camstyle_dir) / camstyle_name(stem, record.camid, target_cam0, scheme)
