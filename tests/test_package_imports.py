"""No module of the shipped packages reaches into another module's private names (``_name``): what one module
uses of another is public, named without the underscore and documented."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ecnreid", "camstyle")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_ours(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def private_imports(source: str, module: str) -> list[str]:
    """``from ours import _name`` and ``ours_module._name`` uses in ``source`` (the module ``module``), as
    ``line: text`` entries; a module's own private names are its business."""
    tree = ast.parse(source)
    package = module.rsplit(".", 1)[0]
    found: list[str] = []
    modules: dict[str, str] = {}  # local name -> one of our modules it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if not _is_ours(base):
                continue
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(f"{node.lineno}: from {base} import {alias.name}")
                elif _is_package(base) and importlib.util.find_spec(f"{base}.{alias.name}") is not None:
                    modules[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _is_ours(alias.name) and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and modules[node.value.id] != module
            and _is_private(node.attr)
        ):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return found


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).with_suffix("")
            module = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
            offenders += [f"{path.relative_to(ROOT)}:{hit}" for hit in private_imports(path.read_text(), module)]
    assert offenders == []


def test_the_check_finds_private_names_imported_or_reached_through_a_module() -> None:
    source = (
        "from ecnreid.evaluation.visualize import load_font, _tile\n"
        "from ecnreid.evaluation import visualize\n"
        "from .metrics import _as_ids\n"
        "import numpy as np\n"
        "from numpy import _globals\n"
        "from ecnreid import __version__\n"
        "visualize._format_distance(1.0)\n"
        "np._private\n"
    )
    found = private_imports(source, "ecnreid.evaluation.runner")
    assert found == [
        "1: from ecnreid.evaluation.visualize import _tile",
        "3: from ecnreid.evaluation.metrics import _as_ids",
        "7: visualize._format_distance",
    ]
