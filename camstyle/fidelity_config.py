"""Settings of ``ecnreid prepare --check DIR --score`` (``camstyle.fidelity``), written once, in the pattern of
``ecnreid.config``: the command line's options are generated from these fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ecnreid.config import ARCHS, WORKERS_HELP, RuntimeConfig, section, setting
from ecnreid.config.fields import flag_of, require, require_one_of
from ecnreid.errors import EcnreidError

FIDELITY_PANEL = "Fidelity (--check DIR --score)"


@dataclass(frozen=True)
class FidelityConfig:
    """What scores a CamStyle set: the frozen networks, how many images, and where the report goes."""

    camstyle: Path = field(metadata={})  # given by --check, not an option of its own
    out: Path | None = setting(
        None, "Folder for fidelity.json and fidelity.png.", unset="the CamStyle folder's name + _fidelity, beside it"
    )
    score_images: int = setting(
        600,
        "Real images scored, from identities the camera probe never saw, each with its fakes in every other camera.",
    )
    probe_images: int = setting(2000, "Real training images (other identities) the camera probe learns from.")
    arch: str = setting(
        "resnet50", "Frozen backbone of the camera probe (and of identity without --checkpoint): " + ", ".join(ARCHS)
    )
    weights: Path | None = setting(
        None, "A local torchvision state_dict for --arch (e.g. ImageNet weights), used instead of the download."
    )
    pretrained: bool = setting(
        True,
        "Use torchvision's ImageNet weights for --arch; --no-pretrained: random weights (a smoke test only).",
    )
    height: int = setting(256, "Input height of the frozen backbone.")
    width: int = setting(128, "Input width of the frozen backbone.")
    checkpoint: Path | None = setting(
        None,
        "An ecnreid training checkpoint (e.g. source only) whose features measure identity kept.",
        unset="the frozen --arch backbone",
    )
    batch_size: int = 64
    workers: int = setting(4, WORKERS_HELP)
    runtime: RuntimeConfig = section(RuntimeConfig, "Runtime")

    def __post_init__(self) -> None:
        require(self, "score_images", self.score_images >= 2, "must be at least 2")
        require(self, "probe_images", self.probe_images >= 2, "must be at least 2")
        require_one_of(self, "arch", ARCHS)
        size = f"{self.height}x{self.width}"
        require(self, ("height", "width"), min(self.height, self.width) > 0, "must be positive", shown=size)
        if self.batch_size < 1:  # not an option: a library caller's mistake
            raise EcnreidError(f"batch_size {self.batch_size}: must be at least 1")
        require(self, "workers", self.workers >= 0, "must not be negative")
        if self.weights is not None and not self.pretrained:
            raise EcnreidError(
                f"{flag_of(FidelityConfig, 'weights')} PATH and {flag_of(FidelityConfig, 'pretrained', negative=True)}"
                " contradict each other: give one of them"
            )
