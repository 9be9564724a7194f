"""Atomic file writes (a temp file in the same folder, then an atomic rename) and output-folder checks.

A kill at any moment leaves either the old file or the new one, never a half-written one; what a kill does
leave is the hidden temp file, which ``sweep_stale_temp_files`` removes when a command starts writing again.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ecnreid.errors import EcnreidError

# The names ``atomic_write_bytes`` gives its temp files: ``.{name}.{random}.tmp``; tempfile's random part is
# lower-case letters, digits and "_" (8 of them today; a range, so a change in Python does not orphan them).
# Every file the tool writes has a suffix (.jpg, .json, .pt, ...), which spares dot-files like ``.notes.old.tmp``.
TEMP_FILE_PATTERN = re.compile(r"^\.(?P<name>.+\.[A-Za-z0-9]+)\.[a-z0-9_]{1,16}\.tmp$")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _umask_by_setting() -> int:
    # os.umask can only be read by setting it: safe only while no other thread writes files (at import).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_IMPORT_UMASK = _umask_by_setting()


def _umask() -> int:
    """The process umask, read without setting it (writer threads call this at once): from
    ``/proc/self/status`` where the kernel reports it (Linux 4.7+), else the umask at import."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _IMPORT_UMASK


def atomic_write_bytes(data: bytes, path: str | os.PathLike, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically.

    ``durable`` fsyncs the data before the rename, so the file also survives a power loss or kernel crash;
    the rename alone already guarantees that a killed process never leaves a half-written ``path``. Bulk
    outputs that a rerun can regenerate (CamStyle images) pass ``durable=False``: an fsync per file costs a
    disk flush each, which for 10^5 small JPEGs dominates the run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode an ordinary write would (0666 less umask),
        # so that a service running as another user can read an exported model or a feature folder.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a truncated checkpoint behind."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def atomic_save_image(image: Image.Image, path: str | os.PathLike, *, durable: bool = True, **save_kwargs: Any) -> None:
    """Save a PIL image atomically; the format follows the file suffix (``durable``: see ``atomic_write_bytes``)."""
    path = Path(path)
    buffer = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(path.suffix.lower())
    image.save(buffer, format=fmt, **save_kwargs)
    atomic_write_bytes(buffer.getvalue(), path, durable=durable)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write pretty JSON atomically."""
    atomic_write_bytes((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), path)


def append_jsonl(obj: Any, path: str | os.PathLike) -> None:
    """Append one JSON line (used for logs, where a lost last line is acceptable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(obj) + "\n")


def sweep_stale_temp_files(folder: str | os.PathLike) -> int:
    """Remove the temp files ``atomic_write_bytes`` left in ``folder`` (not its subfolders); returns how many.

    Only regular files named ``.{name}.{random}.tmp`` go; other dot-files, links and folders stay. Call it
    when a command starts writing into a folder it owns: a temp file there is then a leftover of a killed
    run (a concurrent writer into the same folder would lose its in-flight file, as it would anyway).
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        if not TEMP_FILE_PATTERN.match(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:  # another sweeper was faster
            continue
        removed += 1
    return removed


def _first_non_folder(path: Path) -> Path | None:
    """The first of ``path``'s ancestors (outermost first), or ``path`` itself, that exists but is no folder."""
    for candidate in (*reversed(path.parents), path):
        if (candidate.exists() or candidate.is_symlink()) and not candidate.is_dir():
            return candidate
    return None


# The folders ``ensure_output_dir`` made while a command runs (None outside one): removed again, when still
# without a file, if the command fails (``created_folders_removed_on_failure``).
_CREATED_FOLDERS: ContextVar[list[Path] | None] = ContextVar("ecnreid_created_folders", default=None)


def _outermost_missing(path: Path) -> Path | None:
    """The outermost of ``path`` and its ancestors that does not exist yet (what ``mkdir -p`` will make)."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            break
        missing = candidate
    return missing


def _remove_if_fileless(folder: Path) -> None:
    """Remove ``folder`` and the folders inside it when none of them holds a file (or anything but a folder)."""
    if folder.is_symlink() or not folder.is_dir():
        return
    walked = list(os.walk(folder, topdown=False))
    if any(files or any(Path(top, d).is_symlink() for d in dirs) for top, dirs, files in walked):
        return
    with contextlib.suppress(OSError):  # something appeared meanwhile: keep it
        for top, _, _ in walked:
            os.rmdir(top)


@contextlib.contextmanager
def created_folders_removed_on_failure() -> Iterator[None]:
    """Around one command: when it fails (an error or a stop), the output folders ``ensure_output_dir`` made
    during it, with the parents made for them, are removed again if they still hold no file. A folder that
    existed before, or that holds any file (a resumable job's state, a partial result), stays as it is."""
    token = _CREATED_FOLDERS.set([])
    try:
        yield
    except BaseException:
        for folder in reversed(_CREATED_FOLDERS.get() or []):
            _remove_if_fileless(folder)
        raise
    finally:
        _CREATED_FOLDERS.reset(token)


def ensure_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Create the output folder ``path`` (and its parents) for the command-line ``option``; returns it.

    A file in the way (``path`` itself or one of its parents) or a folder that cannot be made raises
    ``EcnreidError("{option} {path}: ...")``, one line, instead of the ``FileExistsError`` /
    ``NotADirectoryError`` traceback that ``mkdir`` gives.
    """
    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    created, made = _CREATED_FOLDERS.get(), _outermost_missing(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = _first_non_folder(path) or path
        what = "a file, not a folder" if blocker.is_file() else "not a folder"  # else a dangling link, a socket
        where = "exists and" if blocker == path else str(blocker)
        raise EcnreidError(f"{label}: {where} is {what}") from None
    except OSError as exc:  # permission denied, read-only file system, name too long, ...
        raise EcnreidError(f"{label}: cannot create the folder ({exc.strerror or 'not permitted'})") from None
    if created is not None and made is not None:
        created.append(made)
    return path


def require_file(path: str | os.PathLike, option: str, what: str = "file") -> Path:
    """``path`` as an existing file for the command-line ``option``; a folder or nothing there raises
    ``EcnreidError("{option} {path}: ...")`` naming ``what`` was expected."""
    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    if path.is_dir():
        raise EcnreidError(f"{label}: is a folder; expected a {what}")
    if not path.is_file():
        blocker = _first_non_folder(path.parent)
        if blocker is not None:
            raise EcnreidError(f"{label}: not found ({blocker} is a file, not a folder)")
        raise EcnreidError(f"{label}: {what} not found")
    return path


def require_dir(path: str | os.PathLike, option: str, what: str = "folder") -> Path:
    """``path`` as an existing folder for the command-line ``option``; a file or nothing there raises
    ``EcnreidError("{option} {path}: ...")`` naming ``what`` was expected."""
    path = Path(path)
    if path.is_dir():
        return path
    label = f"{option} {path}" if option else str(path)
    if path.exists():
        raise EcnreidError(f"{label}: is a file; expected a {what}")
    raise EcnreidError(f"{label}: {what} not found")
