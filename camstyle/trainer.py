"""StarGAN training on the target training images, camera id as the domain (ECN's camera-invariance,
Zhong et al., CVPR 2019).

One iteration is one critic (discriminator) step on a batch; every ``n_critic``-th iteration also takes a
generator step, as in StarGAN (Choi et al., CVPR 2018). Losses: WGAN-GP adversarial, camera
classification, cycle reconstruction. The learning rates decay linearly to 0 over the second half.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from camstyle.generate import autocast_for, to_model_input, to_uint8
from camstyle.stargan import Discriminator, Generator, ModelSpec, gradient_penalty
from ecnreid.config import StarGANConfig, config_to_dict
from ecnreid.data.image_dataset import load_image
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError
from ecnreid.io import append_jsonl, atomic_save_image, atomic_torch_save
from ecnreid.progress import console, make_progress
from ecnreid.runstate import check_resume_compatible, interruption_guard, load_torch_file
from ecnreid.runtime import seed_everything

CHECKPOINT_NAME = "checkpoint.pt"
GENERATOR_NAME = "generator.pt"


# The model settings a resumed run must share with its checkpoint: every field of the spec.
STARGAN_RESUME_KEYS = tuple(f.name for f in dataclasses.fields(ModelSpec))


def model_spec(config: StarGANConfig, num_cameras: int) -> ModelSpec:
    """The networks ``config`` describes for ``num_cameras`` cameras (one width for both networks)."""
    return ModelSpec(
        num_cameras=num_cameras,
        image_size=config.image_size,
        g_conv_dim=config.conv_dim,
        g_repeat_num=config.g_repeat_num,
        d_conv_dim=config.conv_dim,
        d_repeat_num=config.d_repeat_num,
        g_residual=config.residual_generator,
        g_camera_norm=config.camera_norm,
    )


@dataclass(frozen=True)
class TrainResult:
    """Where a finished training run stopped and what it left on disk."""

    iteration: int
    checkpoint: Path
    generator: Path
    samples: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def learning_rate(base: float, iteration: int, config: StarGANConfig) -> float:
    """``base`` until ``decay_from * iters``, then linear to 0 at ``iters``."""
    start = int(config.iters * config.decay_from)
    if iteration < start or config.iters <= start:
        return base
    return base * max(0.0, (config.iters - iteration) / (config.iters - start))


class _ResumableShuffle(Sampler[int]):
    """An endless stream of per-epoch permutations that can start at any position (for resume)."""

    def __init__(self, size: int, seed: int, start: int = 0) -> None:
        self.size, self.seed, self.start = size, seed, start

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while True:
            epoch, offset = divmod(position, self.size)
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            yield from order[offset:].tolist()
            position = (epoch + 1) * self.size


class _TrainImages(Dataset):
    """(image (3, h, w) in [-1, 1] after resize, random crop and flip, 0-based camera)."""

    def __init__(self, records: Sequence[ImageRecord], config: StarGANConfig) -> None:
        self.records = list(records)
        self.transform = T.Compose(
            [
                T.Resize(config.load_size, T.InterpolationMode.BICUBIC, antialias=True),
                T.RandomCrop(config.image_size),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            ]
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        record = self.records[index]
        return self.transform(load_image(record.path)), record.camid


def sample_images(records: Sequence[ImageRecord], rows: int, image_size: tuple[int, int]) -> torch.Tensor:
    """(rows, 3, h, w) fixed sample images: the first image of each camera in turn, for the sample grid."""
    by_camera: dict[int, list[ImageRecord]] = {}
    for record in records:
        by_camera.setdefault(record.camid, []).append(record)
    chosen: list[ImageRecord] = []
    depth = 0
    while len(chosen) < min(rows, len(records)):
        for camera in sorted(by_camera):
            if depth < len(by_camera[camera]) and len(chosen) < rows:
                chosen.append(by_camera[camera][depth])
        depth += 1
    return torch.stack([to_model_input(load_image(r.path), image_size) for r in chosen])


@torch.no_grad()
def render_sample_grid(
    generator: Generator, images: torch.Tensor, num_cameras: int, device: torch.device, amp: bool = False
) -> Image.Image:
    """A PNG-ready grid: one row per image; columns are the original, then the image in each camera's style.

    ``amp``: bf16 autocast on CUDA, as the training run it samples.
    """
    rows, _, h, w = images.shape
    was_training = generator.training
    generator.eval()
    inputs = images.repeat_interleave(num_cameras, dim=0).to(device)
    cameras = torch.arange(num_cameras, device=device).repeat(rows)
    with autocast_for(device, amp):
        fakes = generator(inputs, cameras).float().cpu()
    generator.train(was_training)
    tiles = torch.cat([images.unsqueeze(1), fakes.view(rows, num_cameras, 3, h, w)], dim=1)
    pixels = to_uint8(tiles.flatten(0, 1)).view(rows, num_cameras + 1, h, w, 3)
    grid = pixels.permute(0, 2, 1, 3, 4).reshape(rows * h, (num_cameras + 1) * w, 3)
    return Image.fromarray(grid.numpy())


@dataclass
class TrainState:
    """Networks, optimisers, the trainer's own RNG (target cameras, GP mixing) and the iteration count."""

    generator: Generator
    discriminator: Discriminator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    rng: torch.Generator
    iteration: int = 0


def build_train_state(
    spec: ModelSpec, config: StarGANConfig, seed: int, device: str | torch.device = "cpu"
) -> TrainState:
    """Fresh networks on ``device`` in train mode, their Adam optimisers at ``config.lr`` and the trainer's RNG
    seeded with ``seed``: the start of a run, and what a resume loads its checkpoint into.

    The weights are drawn from torch's global RNG (generator first): seed it before for reproducible weights.
    """
    generator, discriminator = spec.build_generator(), spec.build_discriminator()
    generator.to(device).train()
    discriminator.to(device).train()
    betas = (config.beta1, config.beta2)
    return TrainState(
        generator=generator,
        discriminator=discriminator,
        opt_g=torch.optim.Adam(generator.parameters(), config.lr, betas),
        opt_d=torch.optim.Adam(discriminator.parameters(), config.lr, betas),
        rng=torch.Generator().manual_seed(seed),
    )


def _save_checkpoint(path: Path, state: TrainState, spec: ModelSpec, config: StarGANConfig, seed: int) -> None:
    atomic_torch_save(
        {
            "generator": state.generator.state_dict(),
            "discriminator": state.discriminator.state_dict(),
            "opt_g": state.opt_g.state_dict(),
            "opt_d": state.opt_d.state_dict(),
            "iteration": state.iteration,
            "rng": {
                "trainer": state.rng.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "model": spec.to_dict(),
            "config": config_to_dict(config),
            "seed": seed,
        },
        path,
    )


def _save_generator(path: Path, state: TrainState, spec: ModelSpec) -> None:
    atomic_torch_save(
        {"generator": state.generator.state_dict(), "model": spec.to_dict(), "iteration": state.iteration}, path
    )


def _restore(path: Path, state: TrainState, spec: ModelSpec) -> None:
    keys = ("generator", "discriminator", "opt_g", "opt_d", "model", "iteration", "rng")
    saved = load_torch_file(path, "StarGAN training checkpoint", weights_only=False, keys=keys)
    check_resume_compatible(saved["model"], spec.to_dict(), path, STARGAN_RESUME_KEYS)
    state.generator.load_state_dict(saved["generator"])
    state.discriminator.load_state_dict(saved["discriminator"])
    state.opt_g.load_state_dict(saved["opt_g"])
    state.opt_d.load_state_dict(saved["opt_d"])
    state.iteration = int(saved["iteration"])
    state.rng.set_state(saved["rng"]["trainer"])
    torch.set_rng_state(saved["rng"]["torch"])
    if saved["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])


def critic_step(
    state: TrainState, x_real: torch.Tensor, c_org: torch.Tensor, c_trg: torch.Tensor, config: StarGANConfig
) -> dict[str, torch.Tensor]:
    """One discriminator update: WGAN critic on real vs fake, camera classification of real, gradient penalty."""
    device = x_real.device
    g, d = state.generator, state.discriminator
    with autocast_for(device, config.amp):
        out_src, out_cls = d(x_real)
        d_real = -out_src.float().mean()
        d_cls = F.cross_entropy(out_cls.float(), c_org)
        with torch.no_grad():
            x_fake = g(x_real, c_trg).float()
        out_src, _ = d(x_fake)
        d_fake = out_src.float().mean()
    alpha = torch.rand(x_real.shape[0], 1, 1, 1, generator=state.rng).to(device)
    x_hat = (alpha * x_real + (1.0 - alpha) * x_fake).requires_grad_(True)
    with autocast_for(device, config.amp):
        out_src, _ = d(x_hat)
    gp = gradient_penalty(out_src.float(), x_hat)
    loss = d_real + d_fake + config.lambda_cls * d_cls + config.lambda_gp * gp
    state.opt_d.zero_grad(set_to_none=True)
    loss.backward()
    state.opt_d.step()
    return {"d_real": d_real.detach(), "d_fake": d_fake.detach(), "d_cls": d_cls.detach(), "d_gp": gp.detach()}


def generator_step(
    state: TrainState, x_real: torch.Tensor, c_org: torch.Tensor, c_trg: torch.Tensor, config: StarGANConfig
) -> dict[str, torch.Tensor]:
    """One generator update: fool the critic, be classified as the target camera, reconstruct the input."""
    g, d = state.generator, state.discriminator
    d.requires_grad_(False)  # the critic only passes gradients through here
    try:
        with autocast_for(x_real.device, config.amp):
            x_fake = g(x_real, c_trg)
            out_src, out_cls = d(x_fake)
            g_fake = -out_src.float().mean()
            g_cls = F.cross_entropy(out_cls.float(), c_trg)
            x_rec = g(x_fake, c_org)
            g_rec = (x_real - x_rec.float()).abs().mean()
        loss = g_fake + config.lambda_cls * g_cls + config.lambda_rec * g_rec
        state.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        state.opt_g.step()
    finally:
        d.requires_grad_(True)
    return {"g_fake": g_fake.detach(), "g_cls": g_cls.detach(), "g_rec": g_rec.detach()}


def _loss_text(losses: dict[str, float]) -> str:
    return " ".join(f"{key} {value:.3f}" for key, value in losses.items())


def train_stargan(
    records: Sequence[ImageRecord],
    num_cameras: int,
    config: StarGANConfig,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    resume: bool = False,
    *,
    seed: int = 0,
    workers: int = 4,
    progress: bool = True,
) -> TrainResult:
    """Train StarGAN on ``records`` (camera = domain) into ``out_dir``.

    ``out_dir`` receives ``checkpoint.pt`` (G, D, optimisers, iteration, RNG states, config; every
    ``checkpoint_every`` iterations, atomically), ``generator.pt`` (G only) at the end, sample grids in
    ``samples/`` and ``log.jsonl``. ``resume`` continues from ``checkpoint.pt``. ``seed`` fixes the initial
    weights, the batches and the trainer's draws; ``workers`` loader processes read the images.

    A stop (Ctrl-C, SIGTERM under the CLI) saves ``checkpoint.pt``, says so and re-raises
    (``ecnreid.runstate.interruption_guard``); only a finished run writes ``generator.pt``.
    """
    out_dir = Path(out_dir)
    device = torch.device(device)
    if num_cameras < 2:
        raise EcnreidError(f"StarGAN needs at least 2 cameras, the training images have {num_cameras}")
    if len(records) < config.batch_size:
        raise EcnreidError(f"{len(records)} training images, fewer than one batch of {config.batch_size}")
    checkpoint_path, generator_path = out_dir / CHECKPOINT_NAME, out_dir / GENERATOR_NAME
    if checkpoint_path.exists() and not resume:
        raise EcnreidError(f"{checkpoint_path}: a StarGAN run is already here; pass --resume or another folder")
    spec = model_spec(config, num_cameras)
    seed_everything(seed)  # before building, so the initial weights follow the seed
    state = build_train_state(spec, config, seed, device)
    generator = state.generator
    if resume and checkpoint_path.exists():
        _restore(checkpoint_path, state, spec)
        console.print(f"resuming StarGAN from iteration {state.iteration} ({checkpoint_path})")
    out_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    loader = DataLoader(
        _TrainImages(records, config),
        batch_size=config.batch_size,
        sampler=_ResumableShuffle(len(records), seed, start=state.iteration * config.batch_size),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed + state.iteration),
    )
    fixed = sample_images(records, config.sample_rows, config.image_size)
    samples: list[Path] = []
    started = time.perf_counter()
    last: dict[str, float] = {}

    def save_on_interrupt() -> Path:
        _save_checkpoint(checkpoint_path, state, spec, config, seed)
        return checkpoint_path

    guard = interruption_guard(save_on_interrupt, what=f"StarGAN training in {out_dir}", resume_hint="--resume")
    with guard, make_progress() as bar:
        task = bar.add_task(
            "StarGAN", total=config.iters, completed=state.iteration, unit="it", info="", visible=progress
        )
        batches = iter(loader)
        try:
            while state.iteration < config.iters:
                x_real, c_org = next(batches)
                x_real = x_real.to(device, non_blocking=True)
                c_org = c_org.to(device, non_blocking=True)
                # A different camera for every sample: a same-camera target would waste the step.
                shift = torch.randint(1, num_cameras, (x_real.shape[0],), generator=state.rng).to(device)
                c_trg = (c_org + shift) % num_cameras
                rate = learning_rate(config.lr, state.iteration, config)
                for group in (*state.opt_g.param_groups, *state.opt_d.param_groups):
                    group["lr"] = rate
                losses = critic_step(state, x_real, c_org, c_trg, config)
                if (state.iteration + 1) % config.n_critic == 0:
                    losses |= generator_step(state, x_real, c_org, c_trg, config)
                state.iteration += 1
                if state.iteration % config.log_every == 0 or state.iteration == config.iters:
                    last |= {key: float(value) for key, value in losses.items()}
                    bar.update(task, info=_loss_text(last))
                    append_jsonl({"iteration": state.iteration, **last}, out_dir / "log.jsonl")
                bar.update(task, completed=state.iteration)
                if config.checkpoint_every and state.iteration % config.checkpoint_every == 0:
                    _save_checkpoint(checkpoint_path, state, spec, config, seed)
                if config.sample_every and state.iteration % config.sample_every == 0:
                    path = out_dir / "samples" / f"iter_{state.iteration:07d}.png"
                    atomic_save_image(render_sample_grid(generator, fixed, num_cameras, device, config.amp), path)
                    samples.append(path)
        finally:
            del batches  # shut down loader workers before a save
    _save_checkpoint(checkpoint_path, state, spec, config, seed)
    _save_generator(generator_path, state, spec)
    return TrainResult(
        iteration=state.iteration,
        checkpoint=checkpoint_path,
        generator=generator_path,
        samples=samples,
        seconds=time.perf_counter() - started,
    )
