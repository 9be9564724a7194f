"""Training and test transforms (Zhong et al., CVPR 2019, implementation details, and its official code).

Train: random sized rectangle crop → horizontal flip → tensor → ImageNet normalisation → random erasing.
Test: bicubic resize → tensor → ImageNet normalisation.
All randomness is drawn from torch's global RNG, so ``torch.manual_seed`` (and the DataLoader's per-worker
seeding) makes it reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def _randint(low: int, high: int) -> int:
    """An integer in [low, high] inclusive, from torch's RNG."""
    return int(torch.randint(low, high + 1, ()))


def _random_rectangle(
    img_h: int,
    img_w: int,
    area: tuple[float, float],
    aspect: tuple[float, float],
    tries: int,
    *,
    may_fill: bool,
) -> tuple[int, int, int, int] | None:
    """(top, left, h, w) of a rectangle with a random area fraction and aspect h/w, or None after ``tries``.

    ``may_fill`` allows a side as long as the image's (a crop may keep a whole side; erasing may not).
    """
    for _ in range(tries):
        target_area = _uniform(*area) * img_h * img_w
        ratio = _uniform(*aspect)
        h = round(math.sqrt(target_area * ratio))
        w = round(math.sqrt(target_area / ratio))
        fits = (h <= img_h and w <= img_w) if may_fill else (h < img_h and w < img_w)
        if h > 0 and w > 0 and fits:
            return _randint(0, img_h - h), _randint(0, img_w - w), h, w
    return None


def _size(img: Image.Image | Tensor) -> tuple[int, int]:
    """(height, width) of a PIL image or a (..., H, W) tensor."""
    if isinstance(img, Tensor):
        return int(img.shape[-2]), int(img.shape[-1])
    return img.height, img.width


class RandomSizedRectCrop:
    """Crop a random rectangle of area fraction ``area`` and aspect ``h/w`` in ``aspect``, then resize.

    Zhong et al.'s re-ID crop (official ECN code): up to 10 tries to fit the rectangle inside the image,
    then a plain resize to ``height × width``. Works on PIL images and (..., H, W) tensors.
    """

    def __init__(
        self,
        height: int,
        width: int,
        area: tuple[float, float] = (0.64, 1.0),
        aspect: tuple[float, float] = (2.0, 3.0),
        interpolation: T.InterpolationMode = T.InterpolationMode.BILINEAR,
        tries: int = 10,
    ) -> None:
        self.height, self.width = height, width
        self.area, self.aspect = area, aspect
        self.interpolation = interpolation
        self.tries = tries

    def params(self, img: Image.Image | Tensor) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the crop; the whole image when no rectangle fits in ``tries`` tries."""
        img_h, img_w = _size(img)
        box = _random_rectangle(img_h, img_w, self.area, self.aspect, self.tries, may_fill=True)
        return box if box is not None else (0, 0, img_h, img_w)

    def __call__(self, img: Image.Image | Tensor) -> Image.Image | Tensor:
        top, left, h, w = self.params(img)
        return F.resized_crop(img, top, left, h, w, [self.height, self.width], self.interpolation, antialias=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.height}x{self.width}, area={self.area}, aspect={self.aspect})"


class RandomErasing:
    """Random erasing (Zhong et al., AAAI 2020) on a normalised (C, H, W) tensor.

    With probability ``p``, a rectangle of area fraction ``area`` and aspect ``h/w`` drawn uniformly in
    ``aspect`` (up to 100 tries to fit) is filled with the colour ``fill``.
    Convention: ``fill`` is given in pixel terms ([0, 1], before normalisation) and is normalised with
    ``mean``/``std`` (the normalisation the tensor went through). With the defaults the erased pixels
    are the ImageNet mean colour, i.e. exactly 0 in the normalised tensor. (The reference erasing code
    writes the mean values straight into the normalised tensor instead.)
    """

    def __init__(
        self,
        p: float = 0.5,
        area: tuple[float, float] = (0.02, 0.2),
        aspect: tuple[float, float] = (0.3, 3.0),
        fill: Sequence[float] = IMAGENET_MEAN,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        tries: int = 100,
    ) -> None:
        self.p, self.area, self.aspect, self.tries = p, area, aspect, tries
        self.fill = tuple(fill)
        self.value = (torch.tensor(fill) - torch.tensor(mean)) / torch.tensor(std)  # (C,) normalised fill

    def params(self, img: Tensor) -> tuple[int, int, int, int] | None:
        """(top, left, h, w) of the erased rectangle, or None when nothing is erased."""
        if _uniform(0.0, 1.0) >= self.p:
            return None
        img_h, img_w = _size(img)
        return _random_rectangle(img_h, img_w, self.area, self.aspect, self.tries, may_fill=False)

    def __call__(self, img: Tensor) -> Tensor:
        box = self.params(img)
        if box is None:
            return img
        top, left, h, w = box
        img = img.clone()
        img[..., top : top + h, left : left + w] = self.value.to(img)[:, None, None]
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, area={self.area}, aspect={self.aspect}, fill={self.fill})"


def build_train_transform(height: int = 256, width: int = 128) -> Callable[[Image.Image], Tensor]:
    """PIL image → normalised (3, height, width) tensor with ECN's training augmentation."""
    return T.Compose(
        [
            RandomSizedRectCrop(height, width),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            RandomErasing(),
        ]
    )


def build_test_transform(
    height: int = 256,
    width: int = 128,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable[[Image.Image], Tensor]:
    """PIL image → normalised (3, height, width) tensor: bicubic resize, no randomness."""
    return T.Compose(
        [
            T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )
