"""The experiment scripts' one-line refusal (experiments/script_errors.py)."""

from __future__ import annotations

import argparse

import pytest
from experiment_scripts import load_experiment

from ecnreid.errors import EcnreidError


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (EcnreidError("runs/x/log.jsonl: no evaluation logged yet"),
         "tool.py: error: runs/x/log.jsonl: no evaluation logged yet"),
        (FileNotFoundError(2, "No such file or directory", "runs/x/config.json"),
         "tool.py: error: runs/x/config.json: No such file or directory"),
        (OSError("the disk is full"), "tool.py: error: a file: the disk is full"),
    ],
)
def test_a_refusal_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], error: Exception, line: str) -> None:
    refuse_bad_input = load_experiment("script_errors").refuse_bad_input
    with pytest.raises(SystemExit) as stop, refuse_bad_input(argparse.ArgumentParser(prog="tool.py")):
        raise error
    assert stop.value.code == 2
    assert capsys.readouterr().err == line + "\n"


def test_other_errors_are_not_hidden() -> None:
    refuse_bad_input = load_experiment("script_errors").refuse_bad_input
    with pytest.raises(ValueError, match="a bug"), refuse_bad_input(argparse.ArgumentParser(prog="tool.py")):
        raise ValueError("a bug")
