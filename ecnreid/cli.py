"""The `ecnreid` command line: each command builds one config of the tree in ``ecnreid.config`` and makes one
library call.

The options are generated from the config dataclasses (help, defaults and flags are written there once) and
grouped into help panels by section. ``--config FILE`` (TOML or JSON; for ``train``, a run's own ``config.json``
too) gives the settings; options given on the command line override it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import signal
import threading
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup, TyperOption

from camstyle.fidelity_config import FIDELITY_PANEL, FidelityConfig
from ecnreid import __version__
from ecnreid.config import (
    DemoConfig,
    EvalConfig,
    ExportConfig,
    ExtractConfig,
    PrepareConfig,
    SearchConfig,
    SettingOption,
    TrainConfig,
    check_setting_names,
    check_unique_flags,
    config_from_dict,
    load_config_file,
    merge_settings,
    setting_options,
    strip_optional,
)
from ecnreid.errors import EcnreidError
from ecnreid.progress import console
from ecnreid.runtime import is_interruption
from ecnreid.workers import with_capped_workers


class _PlainHelpOption:
    """--help is a flag: its help row shows no value type."""

    def get_help_option(self, ctx: Any) -> TyperOption | None:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class Command(_PlainHelpOption, TyperCommand):
    pass


class Group(_PlainHelpOption, TyperGroup):
    pass


app = typer.Typer(
    name="ecnreid",
    help="Unsupervised domain-adaptive person re-identification (ECN, CamStyle, MixStyle/SNR/RSC).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=Group,
)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"ecnreid {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version,
                     metavar=""),
    ] = False,
) -> None:
    """Unsupervised domain-adaptive person re-identification (ECN, CamStyle, MixStyle/SNR/RSC)."""

F = TypeVar("F", bound=Callable[..., Any])
EXPLICIT_SOURCES = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


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
    """Turn an ``EcnreidError`` into one red line on stderr and exit code 2 (never a traceback); a failed
    command leaves no output folder it made that still holds no file."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ecnreid.io import created_folders_removed_on_failure

        try:
            with terminate_as_interrupt(), created_folders_removed_on_failure():
                return command(*args, **kwargs)
        except EcnreidError as exc:
            # The message is text: a "[section]" in it is not markup.
            console.print(f"[bold red]error:[/] {escape(one_line(exc))}", markup=True, highlight=False, soft_wrap=True)
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


def parse_ints(value: str, option: str) -> tuple[int, ...]:
    """``20,40`` → (20, 40)."""
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise EcnreidError(f"{option} {value}: expected comma-separated whole numbers, e.g. 20,40") from None


def parse_stages(value: str | None) -> tuple[str, ...]:
    """``layer1,layer2`` → ("layer1", "layer2"); empty → ()."""
    return tuple(part.strip() for part in value.split(",") if part.strip()) if value else ()


# ---------------------------------------------------------------------------------------------- options
# A command's options come from its config tree (``ecnreid.config.setting_options``: path, flag, help, default,
# panel); here they become the keyword parameters typer reads from a command's signature.
def _typer_type(option: SettingOption) -> tuple[Any, Any, Callable[[Any, str], Any] | None]:
    """The type typer shows and parses, the default it shows, and how to turn the parsed value into the
    field's value (tuples are typed as comma-separated or HEIGHTxWIDTH strings)."""
    annotation, default = option.annotation, None if option.required else option.default
    base = strip_optional(annotation)
    if typing.get_origin(base) is tuple:
        if typing.get_args(base) == (int, int):
            shown = f"{default[0]}x{default[1]}" if default else None
            return str | None, shown, lambda value, flag: parse_size(value, flag)
        shown = ",".join(map(str, default)) if default else None
        if typing.get_args(base) == (int, ...):
            return str | None, shown, lambda value, flag: parse_ints(value, flag)
        return str | None, shown, lambda value, flag: parse_stages(value)
    if isinstance(default, float) and len(repr(default)) > 7:
        default = float(f"{default:.3g}")  # only shown: 0.333, not 0.3333333333333333
    return (annotation | None if option.required else annotation), default, None


def option_parameter(option: SettingOption) -> inspect.Parameter:
    """The keyword parameter typer turns into ``option``."""
    annotation, shown, _ = _typer_type(option)
    unset = option.unset if shown is None and not option.required else None
    info = typer.Option(
        option.flag,
        help=option.help + (" Required (here or in --config)." if option.required else ""),
        rich_help_panel=option.panel,
        show_default=unset or not option.required,
        metavar="" if strip_optional(option.annotation) is bool else None,  # a switch takes no value
    )
    return inspect.Parameter(option.param, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[annotation, info],
                             default=None if option.required else shown)


def attach_options(command: Callable[..., Any], options: list[SettingOption], **annotations: Any) -> None:
    """Give ``command`` (whose ``**values`` receive them) one parameter per option, after its own parameters
    (``annotations`` replaces theirs; one given as None is dropped). Typer reads the signature; a flag of an
    option that is also one of the command's own (``--name`` of a parameter ``name``) raises."""
    signature = inspect.signature(command, eval_str=True)
    fixed = [p.replace(annotation=annotations.get(p.name, p.annotation)) for p in signature.parameters.values()
             if p.kind is not inspect.Parameter.VAR_KEYWORD and annotations.get(p.name, p.annotation) is not None]
    own_flags = {"--" + p.name.replace("_", "-"): f"parameter {p.name}" for p in fixed if p.name != "ctx"}
    check_unique_flags(options, own_flags)
    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*fixed, *(option_parameter(option) for option in options)]
    )
    command.__annotations__ = {}  # typer reads the signature; stripped annotations would drop the options' help


def settings_from_options(ctx: typer.Context, options: list[SettingOption], values: dict[str, Any]) -> dict:
    """The nested settings given explicitly on the command line (defaults stay with the dataclasses)."""
    settings: dict[str, Any] = {}
    for option in options:
        source = ctx.get_parameter_source(option.param)
        if source is None or source.name not in EXPLICIT_SOURCES:
            continue
        value, parse = values[option.param], _typer_type(option)[2]
        if parse is not None and value is not None:
            value = parse(value, option.first_flag)
        node = settings
        for key in option.path[:-1]:
            node = node.setdefault(key, {})
        node[option.path[-1]] = value
    return settings


def build_config(
    cls: type, options: list[SettingOption], config_file: Path | None, cli_settings: dict[str, Any]
) -> Any:
    """``cls`` from the dataclass defaults, then the --config file, then the command line; its DataLoader
    workers capped at the CPUs this process may use."""
    file_settings = load_config_file(config_file) if config_file is not None else {}
    if config_file is not None:
        check_setting_names(cls, file_settings, where=f"--config {config_file}")
    settings = merge_settings(file_settings, cli_settings)
    for option in options:
        node: Any = settings
        for key in option.path:
            node = node.get(key) if isinstance(node, dict) else None
        if option.required and node is None:
            raise EcnreidError(f"{option.first_flag}: required (on the command line or in --config)")
    where = f"--config {config_file}" if config_file is not None else "settings"
    return with_capped_workers(config_from_dict(cls, settings, where=where), settings)


def config_file_option(example: str, *, run_record: bool = False) -> Any:
    """The ``--config FILE`` option of a command; ``run_record``: it also takes a training run's config.json."""
    # Help texts are rich markup: "[optim]" must be escaped to show.
    help = f"A TOML or JSON file of this command's settings by field name, in their sections (e.g. {escape(example)})"
    help += ", or a run's own config.json to train it again" if run_record else ""
    help += "; command-line options win."
    return Annotated[Path | None, typer.Option("--config", help=help, metavar="FILE")]


def config_command(
    name: str,
    cls: type,
    *,
    help: str,
    exclude: frozenset[str] = frozenset(),
    helps: dict[str, str] | None = None,
    config_file: Any = None,
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register ``run(config)`` as command ``name`` with one option per setting of ``cls`` (and ``--config``
    when ``config_file``, from ``config_file_option``, is given)."""
    options = setting_options(cls, exclude=exclude, helps=helps)

    def register(run: Callable[[Any], None]) -> Callable[[Any], None]:
        @user_errors
        def command(ctx: typer.Context, config: Path | None = None, **values: Any) -> None:
            run(build_config(cls, options, config, settings_from_options(ctx, options, values)))

        attach_options(command, options, config=config_file)
        command.__doc__ = help
        command.__name__ = f"{name}_command"
        app.command(name, help=help, cls=Command)(command)
        return run

    return register


# ---------------------------------------------------------------------------------------------- commands
@config_command(
    "train",
    TrainConfig,
    help="Train a domain-adaptive model: ECN (default; source cross-entropy + exemplar, camera and neighbourhood "
    "invariance on the target) or SpCL (--method spcl).",
    exclude=frozenset({"evaluation.rerank", "evaluation.metric", "evaluation.save_ranks"}),
    helps={"input.batch_size": "Source images per batch (the target's too, unless --target-batch-size)."},
    config_file=config_file_option("[optim] lr = 0.01", run_record=True),
)
def train_command(config: TrainConfig) -> None:
    from ecnreid.inference.evaluate import render_train_summary
    from ecnreid.training import train

    summary = train(config)
    if summary:  # under torchrun, only rank 0 has one to print
        console.print(render_train_summary(summary))


@config_command(
    "eval",
    EvalConfig,
    help="Extract features and score query against gallery: CMC, mAP, mINP (optionally re-ranked).",
    exclude=frozenset({"evaluation.every", "runtime.seed", "runtime.resume", "model.frozen_stages",
                       "model.embedding_dim", "model.dropout"}),
    config_file=config_file_option("[input] batch_size = 64"),
)
def eval_command(config: EvalConfig) -> None:
    from ecnreid.inference.evaluate import run_eval

    run_eval(config)


PREPARE_OPTIONS = setting_options(
    PrepareConfig,
    helps={
        "runtime.resume": "Continue StarGAN training from the last checkpoint in --work-dir.",
        "out": "CamStyle output folder; with --check DIR --score, the folder of the fidelity report (default: "
        "the CamStyle folder's name + _fidelity, beside it).",
    },
)
# --out, --workers, --seed and --device are prepare's options too: the same field paths, so the same parameters.
FIDELITY_OPTIONS = setting_options(FidelityConfig, exclude=frozenset({"runtime.resume"}), panel=FIDELITY_PANEL)
FIDELITY_ONLY_OPTIONS = [o for o in FIDELITY_OPTIONS if o.param not in {p.param for p in PREPARE_OPTIONS}]


def _given(ctx: typer.Context, param: str) -> bool:
    source = ctx.get_parameter_source(param)
    return source is not None and source.name in EXPLICIT_SOURCES


@app.command(
    "prepare",
    help="Make the CamStyle set of a target (StarGAN, colour or capture), check one with --check, or score its "
    "fidelity with --check DIR --score.",
    cls=Command,
)
@user_errors
def prepare_command(
    ctx: typer.Context,
    check: Annotated[
        Path | None, typer.Option(help="Validate an existing CamStyle set in this folder (with --score: score it).")
    ] = None,
    score: Annotated[
        bool,
        typer.Option(
            "--score",
            help="With --check: instead of validating every file, score a sample of the set: camera fidelity (a "
            "camera probe's verdict on the fakes) and identity kept; a table, fidelity.json and fidelity.png.",
            metavar="",
        ),
    ] = False,
    config: config_file_option('method = "colour"') = None,  # type: ignore[valid-type]
    **values: Any,
) -> None:
    from camstyle.prepare import render_check_table, render_prepare_summary, run_check, run_prepare

    if score and check is None:
        raise EcnreidError("--score: goes with --check DIR, the CamStyle set to score")
    if not score and (given := [o.first_flag for o in FIDELITY_ONLY_OPTIONS if _given(ctx, o.param)]):
        raise EcnreidError(f"{given[0]}: an option of --check DIR --score; add --score or leave it out")
    if check is not None and score:
        from camstyle.fidelity_report import render_fidelity_table, run_fidelity

        settings = settings_from_options(ctx, FIDELITY_OPTIONS, values) | {"camstyle": check}
        console.print(render_fidelity_table(run_fidelity(build_config(FidelityConfig, FIDELITY_OPTIONS, config,
                                                                        settings))))
        return
    if check is not None:
        report = run_check(check)
        console.print(render_check_table(report))
        if not report.complete:
            raise typer.Exit(1)
        return
    settings = settings_from_options(ctx, PREPARE_OPTIONS, values)
    console.print(render_prepare_summary(run_prepare(build_config(PrepareConfig, PREPARE_OPTIONS, config, settings))))


attach_options(prepare_command, PREPARE_OPTIONS + FIDELITY_ONLY_OPTIONS)


@config_command(
    "demo",
    DemoConfig,
    help="Generate the built-in synthetic two-domain dataset and run prepare → train → eval on it.",
)
def demo_command(config: DemoConfig) -> None:
    from ecnreid.demo import run_demo

    run_demo(config)


@config_command(
    "extract",
    ExtractConfig,
    help="Write the adapted model's features of a folder of images or a dataset split (resumes after a stop).",
    config_file=config_file_option("[features] batch_size = 64"),
)
def extract_command(config: ExtractConfig) -> None:
    from ecnreid.inference.extract import run_extract

    run_extract(config)


@config_command(
    "search",
    SearchConfig,
    help="Rank a gallery for each query image: rank-list PNGs, one HTML page and results.json.",
    config_file=config_file_option("top_k = 20"),
)
def search_command(config: SearchConfig) -> None:
    from ecnreid.inference.search import run_search

    run_search(config)


@config_command(
    "export",
    ExportConfig,
    help="Export the adapted model (L2-normalised feature) to ONNX or TorchScript, checked against PyTorch.",
    config_file=config_file_option('format = "torchscript"'),
)
def export_command(config: ExportConfig) -> None:
    from ecnreid.inference.export import run_export

    run_export(config)


def main() -> None:
    app()
