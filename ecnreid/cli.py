"""The `ecnreid` command line: each command builds one frozen config and makes one library call."""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ecnreid.config import DGConfig, EvalConfig, ModelConfig, TrainConfig
from ecnreid.errors import EcnreidError
from ecnreid.progress import console
from ecnreid.runtime import is_interruption

app = typer.Typer(
    name="ecnreid",
    help="Unsupervised domain-adaptive person re-identification (ECN, CamStyle, MixStyle/SNR/RSC).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's preemption, ``kill``, torchrun stopping its workers) behaves like Ctrl-C, so that
    long jobs save their state the same way; background jobs ignore SIGINT, which leaves SIGTERM as their stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def user_errors(command: F) -> F:
    """Turn an ``EcnreidError`` into one red line on stderr and exit code 2 (never a traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with terminate_as_interrupt():
                return command(*args, **kwargs)
        except EcnreidError as exc:
            console.print(f"[bold red]error:[/] {one_line(exc)}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except (KeyboardInterrupt, RuntimeError) as exc:
            if not is_interruption(exc):
                raise
            console.print("[yellow]interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def one_line(exc: EcnreidError) -> str:
    """The user's line of an error; one raised in a DataLoader worker arrives wrapped in the worker's
    traceback, whose last line is ``ecnreid.errors.EcnreidError: <message>``."""
    message = str(exc).strip()
    if "Traceback" in message:
        message = message.splitlines()[-1].split("EcnreidError: ", 1)[-1]
    return message


def parse_size(value: str, option: str) -> tuple[int, int]:
    """``256x128`` → (256, 128) (height x width)."""
    try:
        height, width = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise EcnreidError(f"{option} {value}: expected HEIGHTxWIDTH, e.g. 256x128") from None
    if height <= 0 or width <= 0:
        raise EcnreidError(f"{option} {value}: sizes must be positive")
    return height, width


def parse_stages(value: str | None) -> tuple[str, ...]:
    """``layer1,layer2`` → ("layer1", "layer2"); empty → ()."""
    return tuple(part.strip() for part in value.split(",") if part.strip()) if value else ()


# ---------------------------------------------------------------------------------------------- options
Arch = Annotated[str, typer.Option(help="Backbone: resnet18, resnet34, resnet50, resnet101, mobilenet_v2.")]
Weights = Annotated[
    Path | None,
    typer.Option(help="A local torchvision state_dict for the backbone (e.g. ImageNet weights), used instead of"
                 " the download."),
]
Pretrained = Annotated[
    bool,
    typer.Option(
        "--pretrained/--no-pretrained",
        help="Start from torchvision's ImageNet weights (downloaded once into torch's cache), as published;"
        " --no-pretrained starts from random weights.",
    ),
]
LastStride = Annotated[int, typer.Option(help="Stride of the last stage (1 doubles the final map).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Height = Annotated[int, typer.Option(help="Input height.")]
Width = Annotated[int, typer.Option(help="Input width.")]
Workers = Annotated[int, typer.Option(help="DataLoader worker processes.")]


@app.command("eval")
@user_errors
def eval_command(
    dataset: Annotated[str, typer.Option(help="market1501, dukemtmc, msmt17, custom or synthetic.")],
    root: Annotated[Path, typer.Option(help="Dataset folder (or its parent).")],
    arch: Arch = "resnet50",
    weights: Weights = None,
    pretrained: Pretrained = True,
    checkpoint: Annotated[Path | None, typer.Option(help="An ecnreid training checkpoint (last.pt/best.pt).")] = None,
    rerank: Annotated[bool, typer.Option(help="Also score with k-reciprocal re-ranking (k1 20, k2 6, λ 0.3).")] = False,
    flip: Annotated[bool, typer.Option(help="Average features of the image and its mirror.")] = False,
    metric: Annotated[str, typer.Option(help="cosine or euclidean.")] = "cosine",
    device: Device = "auto",
    out: Annotated[Path, typer.Option(help="Folder for metrics.json and pictures.")] = Path("runs/eval"),
    height: Height = 256,
    width: Width = 128,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 128,
    workers: Workers = 2,
    last_stride: LastStride = 2,
    save_ranks: Annotated[int, typer.Option(help="Write rank-list PNGs for this many queries.")] = 0,
    skip_bad_images: Annotated[bool, typer.Option(help="Skip and count undecodable images.")] = False,
) -> None:
    """Extract features and score query against gallery: CMC, mAP, mINP (optionally re-ranked)."""
    if checkpoint is not None and weights is not None:
        raise EcnreidError("--checkpoint already holds the weights; leave out --weights")
    config = EvalConfig(
        dataset=dataset,
        root=root,
        model=ModelConfig(arch=arch, weights=weights, pretrained=pretrained, last_stride=last_stride),
        checkpoint=checkpoint,
        rerank=rerank,
        flip=flip,
        metric=metric,
        device=device,
        out=out,
        height=height,
        width=width,
        batch_size=batch_size,
        workers=workers,
        save_ranks=save_ranks,
        skip_bad_images=skip_bad_images,
    )
    from ecnreid.evaluation.runner import run_eval

    run_eval(config)


@app.command("train")
@user_errors
def train_command(
    source: Annotated[str, typer.Option(help="Labelled source dataset name.")],
    source_root: Annotated[Path, typer.Option(help="Source dataset folder.")],
    target: Annotated[str, typer.Option(help="Unlabelled target dataset name.")],
    target_root: Annotated[Path, typer.Option(help="Target dataset folder.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, log.jsonl, curves.png, metrics.json.")] = Path(
        "runs/train"
    ),
    arch: Arch = "resnet50",
    weights: Weights = None,
    pretrained: Pretrained = True,
    last_stride: LastStride = 2,
    frozen_stages: Annotated[int, typer.Option(help="Stages frozen from the input (3 = conv1..layer2).")] = 3,
    epochs: Annotated[int, typer.Option(help="Epochs (one pass over the source loader each).")] = 60,
    iters_per_epoch: Annotated[int | None, typer.Option(help="Cap iterations per epoch (budget runs).")] = None,
    batch_size: Annotated[int, typer.Option(help="Source batch (the target batch is the same unless set).")] = 128,
    target_batch_size: Annotated[int | None, typer.Option(help="Target batch size.")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate of new layers (backbone gets 0.1x).")] = 0.1,
    backbone_lr_mult: Annotated[
        float, typer.Option(help="Learning rate of the trainable backbone stages as a multiple of --lr.")
    ] = 0.1,
    lr_step: Annotated[int, typer.Option(help="Epoch at which the learning rate drops 10x.")] = 40,
    lam: Annotated[float, typer.Option("--lambda", help="Target loss weight λ: (1-λ) source + λ target.")] = 0.3,
    beta: Annotated[float, typer.Option(help="Memory softmax temperature β.")] = 0.05,
    k: Annotated[int, typer.Option(help="Neighbours for neighbourhood invariance.")] = 6,
    alpha: Annotated[float, typer.Option(help="Memory momentum per epoch: α = alpha × epoch.")] = 0.01,
    neighbour_start: Annotated[int, typer.Option(help="0-based epoch from which neighbourhood invariance runs.")] = 5,
    memory_dtype: Annotated[str, typer.Option(help="fp32 or fp16 exemplar memory.")] = "fp32",
    memory_init: Annotated[
        str, typer.Option(help="zeros (published) or features: fill the memory from one pass over the target.")
    ] = "zeros",
    knn: Annotated[str, typer.Option(help="Nearest memory slots by topk (of the logits) or faiss.")] = "topk",
    camera: Annotated[bool, typer.Option(help="Camera invariance (needs a CamStyle set).")] = True,
    neighbour: Annotated[bool, typer.Option(help="Neighbourhood invariance.")] = True,
    source_only: Annotated[bool, typer.Option(help="Train on the source only (the ablation baseline).")] = False,
    no_target: Annotated[bool, typer.Option(help="Domain generalisation: never read target train images.")] = False,
    camstyle_dir: Annotated[Path | None, typer.Option(help="CamStyle folder (default: beside the target).")] = None,
    height: Height = 256,
    width: Width = 128,
    workers: Workers = 4,
    eval_every: Annotated[int, typer.Option(help="Evaluate on the target every N epochs (0: only at the end).")] = 5,
    flip_eval: Annotated[bool, typer.Option(help="Flip-averaged features in evaluation.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed (runs are deterministic on CPU).")] = 0,
    device: Device = "auto",
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA.")] = True,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from last.pt.")] = False,
    skip_bad_images: Annotated[bool, typer.Option(help="Skip and count undecodable images.")] = False,
    mixstyle: Annotated[str | None, typer.Option(help="MixStyle after these stages, e.g. layer1,layer2.")] = None,
    mixstyle_p: Annotated[float, typer.Option(help="MixStyle probability.")] = 0.5,
    mixstyle_alpha: Annotated[float, typer.Option(help="MixStyle Beta(α, α).")] = 0.1,
    mixstyle_mix: Annotated[str, typer.Option(help="random or crossdomain.")] = "random",
    snr: Annotated[
        str | None,
        typer.Option(help="SNR after these stages; the paper's re-ID placement is layer1,layer2,layer3,layer4."),
    ] = None,
    snr_weight: Annotated[
        float | None,
        typer.Option(
            help="One weight for every SNR's dual causality loss (default: the paper's, 0.1 after layer1 and"
            " layer2, 0.5 after layer3 and layer4)."
        ),
    ] = None,
    rsc: Annotated[bool, typer.Option(help="Representation Self-Challenging on the source branch.")] = False,
    rsc_spatial: Annotated[float, typer.Option(help="RSC fraction of spatial positions masked.")] = 1 / 3,
    rsc_channel: Annotated[float, typer.Option(help="RSC fraction of channels masked.")] = 1 / 3.2,
    rsc_batch: Annotated[float, typer.Option(help="RSC fraction of the batch challenged.")] = 1 / 3,
) -> None:
    """Train ECN: source cross-entropy + exemplar, camera and neighbourhood invariance on the target."""
    if source_only and no_target:
        raise EcnreidError("--source-only and --no-target: choose one")
    config = TrainConfig(
        source=source,
        source_root=source_root,
        target=target,
        target_root=target_root,
        model=ModelConfig(
            arch=arch, weights=weights, pretrained=pretrained, last_stride=last_stride, frozen_stages=frozen_stages
        ),
        dg=DGConfig(
            mixstyle_stages=parse_stages(mixstyle),
            mixstyle_p=mixstyle_p,
            mixstyle_alpha=mixstyle_alpha,
            mixstyle_mix=mixstyle_mix,
            snr_stages=parse_stages(snr),
            snr_weight=snr_weight,
            rsc=rsc,
            rsc_spatial=rsc_spatial,
            rsc_channel=rsc_channel,
            rsc_batch=rsc_batch,
        ),
        out=out,
        epochs=epochs,
        iters_per_epoch=iters_per_epoch,
        batch_size=batch_size,
        target_batch_size=target_batch_size,
        lr=lr,
        backbone_lr_mult=backbone_lr_mult,
        lr_step=lr_step,
        lam=lam,
        beta=beta,
        k=k,
        alpha=alpha,
        neighbour_start_epoch=neighbour_start,
        memory_dtype=memory_dtype,
        memory_init=memory_init,
        knn=knn,
        use_camera=camera,
        use_neighbour=neighbour,
        source_only=source_only,
        no_target=no_target,
        camstyle_dir=camstyle_dir,
        height=height,
        width=width,
        workers=workers,
        eval_every=eval_every,
        flip_eval=flip_eval,
        seed=seed,
        device=device,
        amp=amp,
        resume=resume,
        skip_bad_images=skip_bad_images,
    )
    from ecnreid.engine.trainer import train
    from ecnreid.evaluation.runner import render_train_summary

    summary = train(config)
    console.print(render_train_summary(summary))


@app.command("prepare")
@user_errors
def prepare_command(
    dataset: Annotated[str | None, typer.Option(help="Target dataset name.")] = None,
    root: Annotated[Path | None, typer.Option(help="Target dataset folder.")] = None,
    check: Annotated[Path | None, typer.Option(help="Only validate an existing CamStyle set in this folder.")] = None,
    method: Annotated[str, typer.Option(help="stargan (GAN) or colour (fast colour-statistics transfer).")] = "stargan",
    iters: Annotated[int, typer.Option(help="StarGAN training iterations.")] = 200_000,
    image_size: Annotated[str, typer.Option(help="StarGAN input HEIGHTxWIDTH.")] = "256x128",
    generator: Annotated[Path | None, typer.Option(help="Reuse a trained StarGAN checkpoint.")] = None,
    out: Annotated[Path | None, typer.Option(help="CamStyle output folder (default: beside the dataset).")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Folder for StarGAN checkpoints and samples.")] = None,
    batch_size: Annotated[int, typer.Option(help="StarGAN batch size.")] = 16,
    conv_dim: Annotated[
        int, typer.Option(help="StarGAN width (published 64; 32 is about 3x faster on a CPU budget).")
    ] = 64,
    residual_generator: Annotated[
        bool,
        typer.Option(help="Generator starts as the identity and learns the change (not in StarGAN; short budgets)."),
    ] = False,
    camera_norm: Annotated[
        bool,
        typer.Option(help="Camera-conditioned InstanceNorm in the generator (not in StarGAN; learns a style sooner)."),
    ] = False,
    n_critic: Annotated[
        int,
        typer.Option(help="Critic steps per generator step (published 5; 1 gives the generator 5x the updates)."),
    ] = 5,
    lr: Annotated[float, typer.Option(help="StarGAN Adam learning rate (published 1e-4; both networks).")] = 1e-4,
    lambda_rec: Annotated[
        float,
        typer.Option(
            help="Weight of the cycle reconstruction (published 10; a residual generator keeps the person"
            " by construction, and at 10 stayed the identity for 751 CPU iterations)."
        ),
    ] = 10.0,
    pseudo_cameras: Annotated[int | None, typer.Option(help="Group images into K style clusters as cameras.")] = None,
    sample_every: Annotated[int, typer.Option(help="Write a sample grid PNG every N iterations.")] = 1000,
    checkpoint_every: Annotated[int, typer.Option(help="Save a checkpoint every N iterations.")] = 1000,
    resume: Annotated[bool, typer.Option(help="Continue StarGAN training from its last checkpoint.")] = False,
    amp: Annotated[
        bool, typer.Option(help="bf16 autocast for StarGAN training on CUDA (published StarGAN trains in fp32).")
    ] = False,
    device: Device = "auto",
    workers: Workers = 4,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Make the CamStyle set of a target (StarGAN or colour), or check an existing one with --check."""
    from camstyle.prepare import PrepareConfig, render_check_table, run_check, run_prepare

    if check is not None:
        report = run_check(check)
        console.print(render_check_table(report))
        if not report.complete:
            raise typer.Exit(1)
        return
    if dataset is None or root is None:
        raise EcnreidError("prepare needs --dataset and --root (or --check DIR)")
    config = PrepareConfig(
        dataset=dataset,
        root=root,
        method=method,
        iters=iters,
        image_size=parse_size(image_size, "--image-size"),
        generator=generator,
        out=out,
        work_dir=work_dir,
        device=device,
        batch_size=batch_size,
        conv_dim=conv_dim,
        residual_generator=residual_generator,
        camera_norm=camera_norm,
        n_critic=n_critic,
        lr=lr,
        lambda_rec=lambda_rec,
        amp=amp,
        seed=seed,
        pseudo_cameras=pseudo_cameras,
        sample_every=sample_every,
        checkpoint_every=checkpoint_every,
        resume=resume,
        workers=workers,
    )
    summary = run_prepare(config)
    console.print(summary)


@app.command("demo")
@user_errors
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for the synthetic data and the runs.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed for the data and the runs.")] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs per setting.")] = 10,
    device: Device = "auto",
    weights: Weights = None,
) -> None:
    """Generate the built-in synthetic two-domain dataset and run prepare → train → eval on it."""
    from ecnreid.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=out, seed=seed, epochs=epochs, device=device, weights=weights))


def main() -> None:
    app()
