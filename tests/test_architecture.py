"""The import graph of ``ecnreid`` and ``camstyle`` (``tools/import_graph.py``) has no cycle, among modules or
among packages, and the engine and the methods import each other in one direction only."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", module)
    spec.loader.exec_module(module)
    return module


import_graph = load_tool()


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph.module_graph(ROOT)


def test_the_code_base_has_no_import_cycle() -> None:
    assert import_graph.cycles(ROOT) == {"modules": [], "packages": []}


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("ecnreid.methods.", "ecnreid.engine"),  # the loop is handed a method; methods never see the loop
        ("ecnreid.engine.", "ecnreid.methods"),
        ("ecnreid.engine.", "ecnreid.inference"),
        ("ecnreid.methods.base", "ecnreid.inference"),
        ("ecnreid.methods.base", "ecnreid.methods"),  # nor the registry nor a method
        ("ecnreid.engine.hooks", "ecnreid.engine.loop"),  # hooks see the loop as a Protocol
    ],
)
def test_layers_import_downwards_only(graph: dict[str, set[str]], importer: str, forbidden: str) -> None:
    offending = {
        module: sorted(t for t in targets if t == forbidden or t.startswith(forbidden + "."))
        for module, targets in graph.items()
        if module == importer or module.startswith(importer)
    }
    assert {m: t for m, t in offending.items() if t} == {}


def test_a_cycle_between_modules_is_found_through_relative_and_lazy_imports(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {
        "ecnreid/__init__.py": "",
        "ecnreid/a.py": "from . import b\n",
        "ecnreid/b.py": "def f():\n    from ecnreid.a import g\n",
        "ecnreid/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ecnreid.a import g\n",
        "camstyle/__init__.py": "",
    })
    found = import_graph.cycles(root)
    assert found["modules"] == [["ecnreid.a", "ecnreid.b", "ecnreid.a"]]
    assert import_graph.module_graph(root)["ecnreid.c"] == set()  # imports for type checkers never run
    assert import_graph.main([str(root)]) == 1


def test_a_cycle_between_packages_is_found_though_the_modules_have_none(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {
        "ecnreid/__init__.py": "",
        "ecnreid/engine/__init__.py": "",
        "ecnreid/engine/loop.py": "import ecnreid.methods.registry\n",
        "ecnreid/methods/__init__.py": "",
        "ecnreid/methods/registry.py": "from ecnreid.methods.ecn import ECN\n",
        "ecnreid/methods/ecn.py": "from ecnreid.engine.data import TwoDomainData\n",
        "ecnreid/engine/data.py": "import ecnreid.config\n",
        "ecnreid/config.py": "",
        "camstyle/__init__.py": "",
    })
    found = import_graph.cycles(root)
    assert found == {"modules": [], "packages": [["ecnreid.engine", "ecnreid.methods", "ecnreid.engine"]]}
    write_tree(root, {"ecnreid/methods/ecn.py": "from ecnreid.data import TwoDomainData\n", "ecnreid/data.py": ""})
    assert import_graph.cycles(root) == {"modules": [], "packages": []}
    assert import_graph.main([str(root)]) == 0
