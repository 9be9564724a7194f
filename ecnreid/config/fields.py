"""The fields of the configuration tree and the command-line flags they give.

A leaf is a ``setting`` (default, help, and its flag when that is not ``--field-name``); a nested group is a
``section`` (its help is the panel title of ``--help``). A flag is written once, in a field's metadata:
``flag_of`` reads it back for validation messages, and ``setting_options`` walks a command's tree into the
options the CLI turns into Typer parameters, refusing two settings with one flag.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ecnreid.errors import EcnreidError


def setting(
    default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None, unset: str | None = None
) -> Any:
    """A config field with its help text, (when it is not ``--field-name``) its command-line flag, and for a
    ``None`` default what ``None`` means (``unset``, shown as the default)."""
    metadata = {"help": help, "flag": flag, "unset": unset}
    return field(default=default, metadata=metadata)


def section(factory: Any, help: str = "") -> Any:
    """A nested section of the tree."""
    return field(default_factory=factory, metadata={"help": help, "section": True})


def strip_optional(annotation: Any) -> Any:
    """``X`` of ``X | None``; any other annotation as it is."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config class's fields (the modules use postponed annotations)."""
    return typing.get_type_hints(cls)


def is_section(cls: type, f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("section")) or dataclasses.is_dataclass(field_types(cls)[f.name])


def field_flag(cls: type, f: dataclasses.Field) -> str:
    """The option a field gives: its ``flag``, else ``--field-name``, after the class's ``flag_prefix`` when it
    has one (a method's section: ``flag_prefix: ClassVar[str] = "spcl"`` gives ``--spcl-eps``); a switch also
    gets its ``--no-`` form, unless its flag is written out or is itself a ``--no-`` flag (a one-way switch such
    as ``--no-target``)."""
    prefix = getattr(cls, "flag_prefix", "")
    flag = f.metadata.get("flag") or "--" + (f"{prefix}-" if prefix else "") + f.name.replace("_", "-")
    if strip_optional(field_types(cls)[f.name]) is bool and not f.metadata.get("flag") and not flag.startswith("--no-"):
        flag = f"{flag}/--no-{flag[2:]}"
    return flag


def flag_of(cls: type, name: str, *, negative: bool = False) -> str:
    """The flag of field ``name`` of ``cls`` as a message names it: ``--lambda``; with ``negative``, a switch's
    off form (``--no-pretrained``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    forms = field_flag(cls, fields[name]).split("/")
    if negative and len(forms) < 2:
        raise ValueError(f"{cls.__name__}.{name}: {forms[0]} has no off form")
    return forms[-1] if negative else forms[0]


# ---------------------------------------------------------------------------------------------- validation
def require(config: Any, name: str | tuple[str, ...], condition: bool, message: str, *, shown: Any = None) -> None:
    """Raise ``--flag value: message`` unless ``condition``; ``name`` is the field (several: their flags are
    joined with ``/``, and ``shown`` gives the value to print)."""
    if condition:
        return
    names = (name,) if isinstance(name, str) else name
    flags = "/".join(flag_of(type(config), n) for n in names)
    value = getattr(config, names[0]) if shown is None else shown
    raise EcnreidError(f"{flags} {value}: {message}")


def require_one_of(config: Any, name: str, choices: tuple[Any, ...]) -> None:
    value = getattr(config, name)
    require(config, name, value in choices, f"expected one of {', '.join(map(str, choices))}")


def require_device(config: Any, name: str = "device") -> None:
    device = getattr(config, name)
    ok = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    require(config, name, ok, "expected auto, cpu, cuda or cuda:N")


# ---------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class SettingOption:
    """One command-line option of a command and the config field it sets."""

    path: tuple[str, ...]  # field names from the command's config class down to the field
    flag: str  # "--lr", or "--camera/--no-camera"
    annotation: Any  # the field's type
    default: Any  # the field's default in this command's tree; dataclasses.MISSING when required
    help: str
    panel: str
    unset: str | None = None  # what a None default means, shown as the default

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def param(self) -> str:
        return "__".join(self.path)

    @property
    def first_flag(self) -> str:
        return self.flag.split("/")[0]


def setting_options(
    cls: type,
    *,
    exclude: frozenset[str] = frozenset(),
    helps: dict[str, str] | None = None,
    panel: str = "Run",
    prefix: tuple[str, ...] = (),
    defaults: Any = None,
) -> list[SettingOption]:
    """The options of ``cls``'s settings, sections recursively (each section's help names its panel);
    ``exclude`` and ``helps`` (a command's own help text of a setting it shares) are keyed by dotted path.
    Raises ``DuplicateFlagError`` when two settings give one flag."""
    helps = helps or {}
    options: list[SettingOption] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        path = (*prefix, f.name)
        dotted = ".".join(path)
        if dotted in exclude or "help" not in f.metadata:
            continue
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default
        if is_section(cls, f):
            sub_panel = f.metadata["help"] if f.metadata.get("section") else panel
            sub_defaults = None if default is dataclasses.MISSING else default
            options += setting_options(field_types(cls)[f.name], exclude=exclude, helps=helps, panel=sub_panel,
                                       prefix=path, defaults=sub_defaults)
            continue
        help_text = helps.get(dotted, f.metadata["help"])
        options.append(SettingOption(path, field_flag(cls, f), field_types(cls)[f.name], default, help_text, panel,
                                     f.metadata.get("unset")))
    if not prefix:
        check_unique_flags(options)
    return options


class DuplicateFlagError(ValueError):
    """Two settings of one command give the same flag: the command line could set only one of them."""


def check_unique_flags(options: list[SettingOption], taken: dict[str, str] | None = None) -> None:
    """Raise ``DuplicateFlagError`` naming both settings when two options (or an option and one of ``taken``,
    flag → what owns it) share a flag, either form of a switch included."""
    owners = dict(taken or {})
    for option in options:
        for flag in option.flag.split("/"):
            owner = ".".join(option.path)
            if flag in owners and owners[flag] != owner:
                raise DuplicateFlagError(f"{flag} is the flag of both {owners[flag]} and {owner}")
            owners[flag] = owner
