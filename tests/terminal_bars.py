"""What the progress bars draw on a colour terminal: the shared console swapped for a terminal that keeps every
escape code, and the frame each bar drew last (rich draws a bar's final state when the bar stops)."""

from __future__ import annotations

import io
import re
from types import ModuleType

import pytest
from rich.console import Console

import ecnreid.progress

ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ERASED = "\r\x1b[1A\x1b[2K"  # a transient bar, once stopped, moves up onto its last frame and clears the line


def terminal_console(monkeypatch: pytest.MonkeyPatch, *modules: ModuleType) -> io.StringIO:
    """Swap a 300-column colour terminal into ``ecnreid.progress`` and the ``modules`` that imported its console;
    return what it is shown."""
    terminal = Console(force_terminal=True, color_system="standard", width=300, file=io.StringIO())
    for module in (ecnreid.progress, *modules):
        monkeypatch.setattr(module, "console", terminal)
    return terminal.file


def last_frames(shown: str) -> list[str]:
    """The last frame of each bar shown, in order, with its escape codes (a stopped bar ends its frame with a
    line break and shows the cursor again)."""
    return [session.split("\r\x1b[2K")[-1] for session in shown.split("\n\x1b[?25h")[:-1]]


def bar_pattern(description: str, done: int, total: int, unit: str) -> str:
    """A finished bar as plain text: its bold description, the full bar, done/total, 100 %, the rate in ``unit``,
    elapsed time, ``eta 0:00:00``, and an empty info field at the end."""
    return (
        rf"{re.escape(description)} ━+ {done}/{total} 100% (\?|[\d,]+\.\d) {re.escape(unit)}/s \d+:\d\d:\d\d "
        r"eta 0:00:00"
    )


def assert_finished_bar(frame: str, description: str, done: int, total: int, unit: str) -> None:
    assert f"\x1b[1m{description}\x1b[0m " in frame, repr(frame)  # the description in bold
    assert re.fullmatch(bar_pattern(description, done, total, unit), ESCAPE.sub("", frame).rstrip()), repr(frame)
