"""What every long job shares about its state on disk: torch files read with one-line errors, checkpoints,
the resume compatibility check and the interruption policy.

The evaluation layer reads training checkpoints through this module, so it never imports the engine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape

from ecnreid.errors import EcnreidError
from ecnreid.io import atomic_torch_save
from ecnreid.progress import console
from ecnreid.runtime import is_interruption


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


# What a user is told to give where an ecnreid training checkpoint is expected.
CHECKPOINT_EXPECTED = "the last.pt that `ecnreid train --out DIR` writes into DIR"


def _unreadable(error: BaseException, kind: str) -> str:
    """Why ``torch.load`` failed, in words: no permission, a refused pickle, else not a torch file at all (a cut
    zip archive reports an OSError too, so only a permission error is read as one)."""
    if isinstance(error, PermissionError):
        return "cannot be read (permission denied)"
    if "weights only load failed" in str(error).lower():
        return f"not a {kind}: it holds Python objects besides tensors (a whole model saved with torch.save(model)?)"
    return f"not a {kind} (not written by torch.save, or cut short)"


def load_torch_file(
    path: str | os.PathLike,
    what: str,
    map_location: str | torch.device = "cpu",
    *,
    weights_only: bool = True,
    option: str | None = None,
    keys: Iterable[str] = (),
    expected: str | None = None,
) -> Any:
    """``torch.load(path)``, with every failure a one-line ``EcnreidError`` that names the path and what was
    expected: ``expected`` in words when given (where such a file comes from), else ``what``
    (``"ecnreid checkpoint"``, ``"StarGAN generator checkpoint"``, ...).

    A folder, a missing file, an unreadable, truncated or foreign file, and (when ``keys`` are given) a file
    that is not a dict holding all of ``keys`` each raise ``"{option} {path}: ..."`` (``option``, e.g.
    ``--weights``, only when the path came from one). ``weights_only=True`` (the default) unpickles tensors and
    plain containers only; our own checkpoints, which hold configs and RNG states, pass ``False``.
    """
    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    wanted = f"expected {expected or _article(what)}"
    hint = f"; expected {expected}" if expected else ""
    if path.is_dir():
        raise EcnreidError(f"{label}: is a folder; {wanted}")
    if not path.is_file():
        raise EcnreidError(f"{label}: {what} not found{hint}")
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        kind = "torch state_dict file" if weights_only else "torch checkpoint file"
        raise EcnreidError(f"{label}: {_unreadable(exc, kind)}; {wanted}") from exc
    required = list(keys)
    if required and (not isinstance(loaded, Mapping) or not set(required) <= loaded.keys()):
        quoted = [f"{key!r}" for key in required]
        entries = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"
        raise EcnreidError(f"{label}: not {_article(what)} (no {entries} entries){hint}")
    return loaded


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a training checkpoint atomically (temp file + rename): a kill never corrupts the previous one."""
    atomic_torch_save(state, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training checkpoint written by ``save_checkpoint`` (it holds ``model`` and ``config``); a missing,
    unreadable or foreign file is a one-line ``EcnreidError``."""
    return load_torch_file(
        path, "ecnreid checkpoint", map_location, weights_only=False, keys=("model", "config"),
        expected=CHECKPOINT_EXPECTED,
    )


def check_resume_compatible(
    saved: Mapping[str, Any], current: Mapping[str, Any], path: str | os.PathLike, keys: Iterable[str]
) -> None:
    """Refuse to resume from the checkpoint at ``path`` when any of ``keys`` differs between what it ``saved``
    and what the ``current`` run has (a key missing on one side differs too); the error names the first such
    key and both values. Each job type lists its keys once, beside the job (``camstyle.trainer.STARGAN_RESUME_KEYS``,
    the training loop's ``RESUME_KEYS``)."""
    for key in keys:
        if saved.get(key) != current.get(key):
            raise EcnreidError(
                f"{path}: cannot resume: checkpoint has {key}={saved.get(key)!r} but this run has "
                f"{key}={current.get(key)!r}"
            )


# Set on an interruption once a guard has printed its line, so that guards around it stay quiet.
_REPORTED = "_ecnreid_interruption_reported"


@contextlib.contextmanager
def interruption_guard(save: Callable[[], Path | None] | None, *, what: str, resume_hint: str) -> Iterator[None]:
    """The one interruption policy of long jobs: save the state, say where it is and how to resume, re-raise.

    Contract:

    * Only a stop is handled: ``KeyboardInterrupt`` (Ctrl-C; SIGTERM too under the CLI, which turns it
      into one) and the ``RuntimeError`` torch raises when the stop reached a DataLoader worker first
      (``ecnreid.runtime.is_interruption``). Any other exception passes through untouched and saves
      nothing: a bug is not a stop, and the state at a crash may be inconsistent.
    * On a stop, ``save()`` runs once; it writes the job's state (atomically) and returns where it went.
      One yellow line then goes to stderr, ``interrupted {what}; state saved to {path}: rerun with
      {resume_hint} to continue`` (``what``: the job, e.g. ``"training in runs/x"``; ``resume_hint``: e.g.
      ``"--resume"`` or ``"the same options"``). ``save`` returning None means this process saved nothing
      and has nothing to say (a non-main rank of a distributed run): no line. ``save=None`` is a job
      whose output on disk is always consistent: the line only says how to continue.
    * Nested guards: every guard's ``save`` runs, innermost first, but a stop gets one line only, from the
      innermost guard that prints; it knows best where the state is.
    * The same exception is then re-raised: the caller stops too, and the CLI maps it to exit code 130.
      If ``save`` itself fails (disk full, a second Ctrl-C), that error propagates instead, with the stop
      as its context.
    """
    try:
        yield
    except (KeyboardInterrupt, RuntimeError) as exc:
        if not is_interruption(exc):
            raise
        how = f"rerun with {resume_hint} to continue"
        line: str | None = f"interrupted {what}: {how}"
        if save is not None:
            saved_to = save()
            line = None if saved_to is None else f"interrupted {what}; state saved to {saved_to}: {how}"
        if line is not None and not getattr(exc, _REPORTED, False):
            console.print(f"[yellow]{escape(line)}", soft_wrap=True, highlight=False)
            setattr(exc, _REPORTED, True)
        raise
