"""StarGAN for camera style transfer: one generator for every camera (Choi et al., CVPR 2018).

ECN (Zhong et al., CVPR 2019) trains StarGAN on the target training images with the camera id as the
domain label. Inputs are person-shaped (256x128 by default), so the discriminator's classification head
uses a rectangular kernel covering the whole final feature map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    # Affine, but without running statistics: official StarGAN tracks them, which makes eval mode
    # (generation) normalise with averages that never matched any single image.
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


class CameraInstanceNorm(nn.Module):
    """InstanceNorm whose scale and shift are looked up per target camera (conditional instance norm,
    Dumoulin et al., 2017); starts as the plain norm (scale 1, shift 0).

    Why: StarGAN feeds the camera as constant input channels, and the first InstanceNorm subtracts every
    channel's spatial mean, so the camera survives only through the zero-padded borders; a camera's colour
    and brightness then take many thousands of iterations to learn. Here every norm layer sees it directly.
    """

    def __init__(self, channels: int, num_cameras: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
        self.scale = nn.Embedding(num_cameras, channels)
        self.shift = nn.Embedding(num_cameras, channels)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        scale = self.scale(cameras).to(x.dtype)[:, :, None, None]
        shift = self.shift(cameras).to(x.dtype)[:, :, None, None]
        return self.norm(x) * scale + shift


def inverse_tanh(images: torch.Tensor) -> torch.Tensor:
    """atanh of ``images`` clamped to [-0.999, 0.999], in fp32 with autocast off, whatever the input dtype.

    In bf16 the clamp bound 0.999 rounds to 1.0 and atanh(1) is inf, which pins those output pixels at ±1;
    in fp32 the skip stays within ±3.8.
    """
    with torch.autocast(device_type=images.device.type, enabled=False):
        return torch.atanh(images.float().clamp(-0.999, 0.999))


def _run(layers: nn.Sequential, x: torch.Tensor, cameras: torch.Tensor | None) -> torch.Tensor:
    """``layers`` in order, handing the target cameras to the layers that are conditioned on them."""
    for layer in layers:
        x = layer(x, cameras) if isinstance(layer, (CameraInstanceNorm, ResidualBlock)) else layer(x)
    return x


class ResidualBlock(nn.Module):
    """conv3x3 - IN - ReLU - conv3x3 - IN, plus the identity."""

    def __init__(self, channels: int, norm: Callable[[int], nn.Module] = _instance_norm) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            norm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            norm(channels),
        )

    def forward(self, x: torch.Tensor, cameras: torch.Tensor | None = None) -> torch.Tensor:
        return x + _run(self.body, x, cameras)


class Generator(nn.Module):
    """Image (N, 3, H, W) in [-1, 1] + target camera (N,) → image (N, 3, H, W) in that camera's style.

    The one-hot camera is tiled over the image as ``num_cameras`` extra input channels. Two stride-2
    convolutions down, ``repeat_num`` residual blocks, two transposed convolutions up, tanh; H and W must
    be divisible by 4.

    ``residual=True`` (not in StarGAN; for short CPU budgets) adds the input before the tanh, in its
    pre-tanh scale, and zeroes the last convolution, so the generator starts as the identity and only has
    to learn the change of style: a plain generator spends its first thousands of iterations learning to
    reproduce a person at all.

    ``camera_norm=True`` (not in StarGAN) makes every InstanceNorm camera-conditioned (``CameraInstanceNorm``).
    """

    def __init__(
        self,
        num_cameras: int,
        conv_dim: int = 64,
        repeat_num: int = 6,
        residual: bool = False,
        camera_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_cameras < 1:
            raise ValueError(f"num_cameras must be at least 1, got {num_cameras}")
        self.num_cameras = num_cameras
        self.residual = residual
        self.camera_norm = camera_norm

        def norm(channels: int) -> nn.Module:
            return CameraInstanceNorm(channels, num_cameras) if camera_norm else _instance_norm(channels)

        layers: list[nn.Module] = [
            nn.Conv2d(3 + num_cameras, conv_dim, 7, 1, 3, bias=False),
            norm(conv_dim),
            nn.ReLU(inplace=True),
        ]
        channels = conv_dim
        for _ in range(2):
            layers += [
                nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False),
                norm(channels * 2),
                nn.ReLU(inplace=True),
            ]
            channels *= 2
        layers += [ResidualBlock(channels, norm) for _ in range(repeat_num)]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                norm(channels // 2),
                nn.ReLU(inplace=True),
            ]
            channels //= 2
        layers.append(nn.Conv2d(channels, 3, 7, 1, 3, bias=False))
        if residual:
            nn.init.zeros_(layers[-1].weight)
        self.main = nn.Sequential(*layers)  # the tanh is applied in forward, after the optional skip

    def forward(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        if h % 4 or w % 4:
            raise ValueError(f"generator input {h}x{w}: height and width must be divisible by 4")
        onehot = F.one_hot(cameras.long(), self.num_cameras).to(images.dtype)
        tiled = onehot.view(n, self.num_cameras, 1, 1).expand(n, self.num_cameras, h, w)
        out = _run(self.main, torch.cat([images, tiled], dim=1), cameras.long())
        if self.residual:
            out = out.float() + inverse_tanh(images)
        return torch.tanh(out)


class Discriminator(nn.Module):
    """PatchGAN critic with a camera-classification head.

    ``repeat_num`` stride-2 convolutions (LeakyReLU 0.01) reduce (N, 3, H, W) to a map of
    (H / 2^r, W / 2^r); from it a 3x3 convolution gives the real/fake patch scores (N, 1, H/2^r, W/2^r) and a
    convolution whose kernel covers the whole map gives camera logits (N, num_cameras).
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        num_cameras: int,
        conv_dim: int = 64,
        repeat_num: int = 6,
    ) -> None:
        super().__init__()
        h, w = image_size
        scale = 2**repeat_num
        if h % scale or w % scale:
            raise ValueError(
                f"discriminator input {h}x{w}: height and width must be divisible by 2^{repeat_num} = {scale}"
            )
        layers: list[nn.Module] = [nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01)]
        channels = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(channels, channels * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
            channels *= 2
        self.main = nn.Sequential(*layers)
        self.image_size = (h, w)
        self.src = nn.Conv2d(channels, 1, 3, 1, 1, bias=False)
        self.cls = nn.Conv2d(channels, num_cameras, (h // scale, w // scale), bias=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"discriminator built for {self.image_size[0]}x{self.image_size[1]} inputs, got "
                f"{images.shape[-2]}x{images.shape[-1]}"
            )
        features = self.main(images)
        return self.src(features), self.cls(features).flatten(1)


def gradient_penalty(discriminator_out: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """WGAN-GP term mean_i((‖∇_x D(x_i)‖₂ − 1)²) (Gulrajani et al., 2017).

    ``discriminator_out`` (N, ...) must be computed from ``inputs`` (N, ...), which requires grad; the
    gradient of the summed output gives each sample's own gradient because samples do not interact.
    The graph is kept so the penalty can be back-propagated into the critic.
    """
    (grad,) = torch.autograd.grad(
        outputs=discriminator_out,
        inputs=inputs,
        grad_outputs=torch.ones_like(discriminator_out),
        create_graph=True,
    )
    norms = grad.float().flatten(1).norm(dim=1)
    return ((norms - 1.0) ** 2).mean()


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the two networks; saved in every checkpoint."""

    num_cameras: int
    image_size: tuple[int, int] = (256, 128)
    g_conv_dim: int = 64
    g_repeat_num: int = 6
    d_conv_dim: int = 64
    d_repeat_num: int = 6
    g_residual: bool = False
    g_camera_norm: bool = False

    def build_generator(self) -> Generator:
        return Generator(
            self.num_cameras,
            self.g_conv_dim,
            self.g_repeat_num,
            residual=self.g_residual,
            camera_norm=self.g_camera_norm,
        )

    def build_discriminator(self) -> Discriminator:
        return Discriminator(self.image_size, self.num_cameras, self.d_conv_dim, self.d_repeat_num)

    def to_dict(self) -> dict[str, int | bool | list[int]]:
        return {
            "num_cameras": self.num_cameras,
            "image_size": list(self.image_size),
            "g_conv_dim": self.g_conv_dim,
            "g_repeat_num": self.g_repeat_num,
            "d_conv_dim": self.d_conv_dim,
            "d_repeat_num": self.d_repeat_num,
            "g_residual": self.g_residual,
            "g_camera_norm": self.g_camera_norm,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        return cls(**{**data, "image_size": tuple(data["image_size"])})
