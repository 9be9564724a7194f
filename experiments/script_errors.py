"""How the experiment scripts refuse bad input: one line ``SCRIPT: error: WHAT``, exit 2, as argparse does for
a bad flag, so a file that is missing or not what the script reads never ends in a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from ecnreid.errors import EcnreidError


@contextmanager
def refuse_bad_input(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Inside this block the package's own refusals and unreadable files stop the script with one line."""
    try:
        yield
    except EcnreidError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except OSError as error:
        where = error.filename if error.filename is not None else "a file"
        parser.exit(2, f"{parser.prog}: error: {where}: {error.strerror or error}\n")
