"""The installed `ecnreid` command run as a process: its entry point, exit codes and output outside typer's
in-process runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from camstyle.prepare import run_prepare
from ecnreid.config import PrepareConfig, RuntimeConfig


def console_script() -> str:
    """The `ecnreid` next to this interpreter (a virtual environment's bin), else the one on PATH."""
    beside = Path(sys.executable).parent / ("ecnreid.exe" if os.name == "nt" else "ecnreid")
    found = str(beside) if beside.is_file() else shutil.which("ecnreid")
    if found is None:
        pytest.skip("the ecnreid console script is not installed (pip install -e .)")
    return found


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=120, env=env)


def said(result: subprocess.CompletedProcess) -> str:
    return " ".join((result.stdout + result.stderr).split())  # the console may write to either stream


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("train", "eval", "prepare", "demo", "extract", "search", "export"):
        assert command in result.stdout


def test_a_real_command_gives_its_output_and_exit_code(two_domains) -> None:
    _, target = two_domains
    run_prepare(
        PrepareConfig(dataset="synthetic", root=target, method="colour", workers=0, runtime=RuntimeConfig(device="cpu"))
    )
    (target / "bounding_box_train_camstyle" / "0050_c1_00000_fake_2.jpg").unlink()
    incomplete = run("prepare", "--check", str(target))
    assert incomplete.returncode == 1, said(incomplete)
    assert "47/48 present" in said(incomplete) and "1 missing: 0050_c1_00000_fake_2.jpg" in said(incomplete)
    assert "Traceback" not in said(incomplete)
