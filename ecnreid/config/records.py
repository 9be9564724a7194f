"""Configs to and from files: JSON-safe dicts, partial nested dicts (TOML or JSON ``--config`` files, a run's
``config.json``), the records of earlier versions, and ``override`` by field name."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from ecnreid.config.fields import field_types, strip_optional
from ecnreid.config.train import OptimConfig, TrainConfig
from ecnreid.errors import EcnreidError

C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-safe dict of a config dataclass (paths become strings, tuples lists)."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return config_to_dict(value)
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        return value

    return {f.name: convert(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _coerce(annotation: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    target = strip_optional(annotation)
    if dataclasses.is_dataclass(target):
        if not isinstance(value, dict):
            raise EcnreidError(f"{where}: expected a table of settings, got {value!r}")
        return config_from_dict(target, value, where=where)
    if target is Path:
        return Path(value)
    if typing.get_origin(target) is tuple:
        return tuple(value) if isinstance(value, list | tuple) else (value,)
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def check_setting_names(cls: type, data: dict[str, Any], *, where: str, recurse: bool = True) -> dict[str, Any]:
    """``data`` with the names of earlier versions renamed (``RENAMED_SETTINGS``); an unknown name is an error
    naming ``where`` and the valid settings and sections (of the sections too, with ``recurse``)."""
    hints = field_types(cls)
    for old, (new, convert) in RENAMED_SETTINGS.get(cls, {}).items():
        if old in data and new not in data:
            data = {**{k: v for k, v in data.items() if k != old}, new: convert(data[old])}
    sections = {name for name, kind in hints.items() if dataclasses.is_dataclass(strip_optional(kind))}
    unknown = sorted(set(data) - set(hints))
    if unknown:
        valid = ", ".join(sorted(set(hints) - sections))
        valid += "; sections: " + ", ".join(f"[{name}]" for name in sorted(sections)) if sections else ""
        raise EcnreidError(f"{where}: unknown setting {unknown[0]!r}; valid: {valid}")
    for name in sorted(sections & set(data)) if recurse else ():
        if isinstance(data[name], dict):
            check_setting_names(strip_optional(hints[name]), data[name], where=f"{where} [{name}]")
    return data


def config_from_dict(cls: type[C], data: dict[str, Any], *, where: str = "config") -> C:
    """Build ``cls`` from a (possibly partial) nested dict; missing fields keep their defaults, unknown
    keys are an error naming the key."""
    hints = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    data = check_setting_names(cls, data, where=where, recurse=False)
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default_factory
        if isinstance(value, dict) and default is not dataclasses.MISSING:
            # A partial section keeps the defaults this tree gives it, where they differ from the section's own.
            value = check_setting_names(strip_optional(hints[name]), value, where=f"{where} [{name}]", recurse=False)
            value = merge_settings(config_to_dict(default()), value)
        kwargs[name] = _coerce(hints[name], value, f"{where} [{name}]")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise EcnreidError(f"{where}: {exc}") from None


# Settings of earlier versions that load into today's fields: class → {old name: (field, convert)}.
RENAMED_SETTINGS: dict[type, dict[str, tuple[str, Any]]] = {OptimConfig: {"lr_step": ("lr_steps", lambda s: (s,))}}
# Field names of the flat training config of versions before the tree, where they differ from today's.
LEGACY_TRAIN_NAMES = {"eval_every": "every", "flip_eval": "flip"}


def train_config_from_record(data: dict[str, Any], *, where: str = "config") -> TrainConfig:
    """The ``TrainConfig`` a checkpoint or ``config.json`` records: today's tree, or the flat config of
    versions before it (each setting placed by its field name)."""
    if "domains" in data:
        return config_from_dict(TrainConfig, data, where=where)
    paths = _leaf_paths(TrainConfig)
    nested: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("model", "dg"):
            nested[key] = dict(value)
            continue
        found = [("optim", key)] if key == "lr_step" else paths.get(LEGACY_TRAIN_NAMES.get(key, key), [])
        if len(found) != 1:
            raise EcnreidError(f"{where}: unknown setting {key!r} of an earlier version")
        node = nested
        for part in found[0][:-1]:
            node = node.setdefault(part, {})
        node[found[0][-1]] = value
    model = nested.get("model", {})
    if model.get("weights") is not None:
        model["pretrained"] = True  # earlier versions marked a weights file as not pretrained
    return config_from_dict(TrainConfig, nested, where=where)


# Keys a run folder's config.json carries beside the configuration itself.
RUN_RECORD_KEYS = ("provenance", "signature")


def load_config_file(path: Path) -> dict[str, Any]:
    """The nested settings of a TOML or JSON file (a run's own ``config.json`` included)."""
    path = Path(path)
    if not path.is_file():
        raise EcnreidError(f"{path}: --config file not found")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
        else:
            raise EcnreidError(f"{path}: --config must be a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EcnreidError(f"{path}: not a valid {path.suffix[1:].upper()} file ({exc})") from None
    if not isinstance(data, dict):
        raise EcnreidError(f"{path}: expected a table of settings at the top level")
    return {k: v for k, v in data.items() if k not in RUN_RECORD_KEYS}


def _leaf_paths(cls: type, prefix: tuple[str, ...] = ()) -> dict[str, list[tuple[str, ...]]]:
    paths: dict[str, list[tuple[str, ...]]] = {}
    hints = field_types(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = strip_optional(hints[f.name])
        if dataclasses.is_dataclass(kind):
            for name, found in _leaf_paths(kind, (*prefix, f.name)).items():
                paths.setdefault(name, []).extend(found)
        else:
            paths.setdefault(f.name, []).append((*prefix, f.name))
    return paths


def override(config: C, **settings: Any) -> C:
    """``config`` with settings replaced by field name wherever they sit in the tree
    (``override(train_config, lr=0.01, use_camera=False)``), or whole top-level sections (``model=...``);
    a name found in two sections is an error."""
    paths = _leaf_paths(type(config))
    top = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    nested: dict[str, Any] = {}
    for name, value in settings.items():
        found = [(name,)] if name in top else paths.get(name, [])
        if len(found) != 1:
            where = "no section" if not found else "sections " + ", ".join(".".join(p[:-1]) for p in found)
            raise ValueError(f"override {name}: found in {where}; replace the section with dataclasses.replace")
        node = nested
        for key in found[0][:-1]:
            node = node.setdefault(key, {})
        node[found[0][-1]] = value
    return _replace_nested(config, nested)


def _replace_nested(config: C, nested: dict[str, Any]) -> C:
    changes = {
        key: _replace_nested(getattr(config, key), value) if isinstance(value, dict) else value
        for key, value in nested.items()
    }
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def merge_settings(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, section by section."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged
