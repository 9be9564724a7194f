"""The one-line notices of the inference commands, on the shared console: plain text (a path may hold
characters rich would read as markup), never wrapped inside a path."""

from __future__ import annotations

from ecnreid.progress import console


def say(text: str, *, warn: bool = False) -> None:
    """Print ``text`` as one line (yellow when ``warn``)."""
    console.print(text, style="yellow" if warn else None, markup=False, highlight=False, soft_wrap=True)
