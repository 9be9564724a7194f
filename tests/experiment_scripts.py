"""The scripts of ``experiments/`` as modules for their tests: loaded from their files (the folder is not a
package), and run as from a shell with the arguments given."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name: str) -> ModuleType:
    """``experiments/NAME.py`` as a fresh module."""
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass in the script resolves its annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def run_experiment(monkeypatch: pytest.MonkeyPatch, name: str, *args: str) -> None:
    """``python experiments/NAME.py ARGS...``, in this process."""
    module = load_experiment(name)
    monkeypatch.setattr("sys.argv", [f"{name}.py", *args])
    module.main()
