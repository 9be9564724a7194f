"""The built-in synthetic dataset's specs (``ecnreid.data.synthetic`` draws them) and `ecnreid demo`'s config.

What one domain looks like: who is in it, how its cameras see, how many images. A spec's defaults are the
*source* domain's; the named pairs follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecnreid.config.fields import setting
from ecnreid.errors import EcnreidError

MAX_IDS = 4999  # person ids are written with 4 digits; the target's start at 5001


def _require_synthetic(condition: bool, where: str, value: Any, message: str) -> None:
    if not condition:
        raise EcnreidError(f"synthetic {where} {value!r}: {message}")


@dataclass(frozen=True)
class PersonSpec:
    """How the domain's people dress: its fashion."""

    # Share of black, white and grey garments (tops, bottoms, patterns, bags, hats); other garments get any hue.
    achromatic: float = 0.3

    def __post_init__(self) -> None:
        _require_synthetic(0.0 <= self.achromatic <= 1.0, "person.achromatic", self.achromatic, "must lie in [0, 1]")


@dataclass(frozen=True)
class CameraStyleSpec:
    """How the domain's cameras render a scene. Each camera draws its own style within these bounds."""

    # Scales every departure from a neutral camera other than the cast: saturation, hue, exposure, contrast,
    # gamma, vertical shade, blur, sensor noise (0 = neutral).
    strength: float = 0.3
    # Amplitude of each camera's colour cast (white-balance gains up to 1 ± cast, every camera in its own
    # direction of the colour wheel); 0 = no cast.
    cast: float = 0.12
    # Textured scenes (bricks, tiles, stripes, foliage) instead of plain ones (solid, gradient, floor).
    textured: bool = False

    def __post_init__(self) -> None:
        # Beyond 2 a camera's exposure or contrast factor could reach 0 or below.
        _require_synthetic(0.0 <= self.strength <= 2.0, "camera.strength", self.strength, "must lie in [0, 2]")
        # A cast of 1 or more could zero a colour channel.
        _require_synthetic(0.0 <= self.cast < 1.0, "camera.cast", self.cast, "must lie in [0, 1)")


@dataclass(frozen=True)
class LayoutSpec:
    """How many people, cameras and images the domain has.

    Each person is seen by 2..``cameras`` cameras. The first ``train_ids`` people are the training ids, with
    1..``train_images_per_camera`` images per camera that sees them; the next ``test_ids`` are the test ids, with
    one query and ``gallery_per_camera`` gallery images per camera that sees them.
    """

    cameras: int = 4
    train_ids: int = 60
    test_ids: int = 40
    train_images_per_camera: int = 2
    gallery_per_camera: int = 2
    # A person's training images in one camera are frames of one track: same view and pose, as the
    # near-duplicates of real re-ID training sets (background crop, exposure flicker and noise still vary).
    tracks: bool = False

    def __post_init__(self) -> None:
        _require_synthetic(self.cameras >= 2, "layout.cameras", self.cameras, "a domain needs at least 2 cameras")
        for name in ("train_ids", "test_ids", "train_images_per_camera", "gallery_per_camera"):
            value = getattr(self, name)
            _require_synthetic(value >= 1, f"layout.{name}", value, "must be at least 1")
        total = self.train_ids + self.test_ids
        _require_synthetic(total <= MAX_IDS, "layout.train_ids + test_ids", total, f"at most {MAX_IDS} ids per domain")


@dataclass(frozen=True)
class DomainSpec:
    """One domain of the synthetic dataset."""

    person: PersonSpec = field(default_factory=PersonSpec)
    camera: CameraStyleSpec = field(default_factory=CameraStyleSpec)
    layout: LayoutSpec = field(default_factory=LayoutSpec)

    def __post_init__(self) -> None:
        for name, kind in (("person", PersonSpec), ("camera", CameraStyleSpec), ("layout", LayoutSpec)):
            value = getattr(self, name)
            _require_synthetic(isinstance(value, kind), name, value, f"expected a {kind.__name__}")


# The generator's default pair: mild, neutral-ish source cameras over plain scenes; a target with one more
# camera, strong and distinct colour casts, lighting, blur and noise, and textured scenes. Appearance identifies
# a person within a target camera; matching across them needs camera invariance.
DEFAULT_SOURCE = DomainSpec()
DEFAULT_TARGET = DomainSpec(
    camera=CameraStyleSpec(strength=0.8, cast=0.35, textured=True),
    layout=LayoutSpec(cameras=5),
)

# The demo's pair. The domain gap is fashion, as from winter DukeMTMC to summer Market-1501: source people wear
# black, white and grey, target people colours, which a source-trained model never learned to tell apart. The
# target's cameras differ in lighting, contrast, blur and noise but not in colour cast, over plain scenes: with
# camera casts (0.2) and textured scenes, exemplar invariance from random weights learns the camera instead of
# the person (trained alone on the target, λ = 1: rank-1 0.7, against 28.7 with neutral cameras). A target
# person's training images in one camera are 1-4 frames of one track (Market-1501: 4.0 per person and camera on
# average): the near-duplicates that exemplar invariance pushes apart and neighbourhood invariance finds again.
DEMO_SOURCE = DomainSpec(person=PersonSpec(achromatic=1.0))
DEMO_TARGET = DomainSpec(
    person=PersonSpec(achromatic=0.0),
    camera=CameraStyleSpec(strength=0.4, cast=0.0, textured=False),
    layout=LayoutSpec(cameras=5, train_images_per_camera=4, tracks=True),
)


# ---------------------------------------------------------------------------------------------- demo
@dataclass(frozen=True)
class DemoConfig:
    """`ecnreid demo`; the training knobs are scaled down from the published ones for CPU minutes."""

    out: Path = setting(Path("runs/demo"), "Folder for the synthetic data and the runs.")
    seed: int = setting(0, "Seed for the data and the runs.")
    epochs: int = setting(10, "Training epochs per setting.")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    weights: Path | None = setting(
        None,
        "A local torchvision state_dict for the ResNet-18 backbone (e.g. ImageNet weights). With it the runs start "
        "from these weights with conv1..layer2 frozen and lr 0.1; without it, from random weights with only the "
        "stem frozen and lr 0.01.",
    )
    arch: str = "resnet18"
    height: int = 64
    width: int = 32
    batch_size: int = 32
    # From random weights with batch 32, the published 0.1 makes the 4096-d classifier's logits explode.
    lr: float = 0.01
    # 80 steps move a backbone trained at the published 0.1 x lr too little for the target terms to matter.
    backbone_lr_mult: float = 1.0
    # The spec's k = 6 is for Market-1501, where a person has about 16 other training images; here about 8.
    k: int = 3
    workers: int = 0  # tiny images: worker processes cost more than they save
    source: DomainSpec = DEMO_SOURCE
    target: DomainSpec = DEMO_TARGET
