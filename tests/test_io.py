"""ecnreid.io: atomic writes (with and without fsync), the sweep of killed runs' temp files, path checks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

import ecnreid.io
from ecnreid.errors import EcnreidError
from ecnreid.io import (
    atomic_save_image,
    atomic_write_bytes,
    ensure_output_dir,
    require_file,
    sweep_stale_temp_files,
)

REPO = Path(__file__).resolve().parents[1]


def _killed_write(folder: Path, name: str) -> None:
    """Run ``atomic_write_bytes`` in a child process that dies (os._exit, like kill -9) before the rename."""
    script = textwrap.dedent(
        f"""
        import os
        from ecnreid import io
        os.replace = lambda *args: os._exit(0)
        io.atomic_write_bytes(b"half", {str(folder / name)!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=120)


def test_sweep_removes_only_the_temp_files_of_atomic_writes(tmp_path: Path) -> None:
    folder = tmp_path / "camstyle"
    folder.mkdir()
    _killed_write(folder, "0001_c1_00001_fake_2.jpg")
    leftovers = [p.name for p in folder.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".0001_c1_00001_fake_2.jpg.")  # what a kill leaves
    (folder / ".x_fake_2.jpg.abc123.tmp").write_bytes(b"stale")
    keep = {
        "0001_c1_00001_fake_3.jpg": b"a real image",
        ".keep": b"",
        ".hidden.tmp": b"user",
        ".notes.old.tmp": b"user",  # no file suffix before the random part: not ours
        "x_fake_2.jpg.abc12345.tmp": b"not hidden",
        ".x_fake_2.jpg.abc12345.tmp.bak": b"other suffix",
    }
    for name, data in keep.items():
        (folder / name).write_bytes(data)
    (folder / ".looks.jpg.abc12345.tmp").mkdir()  # a folder with a temp-like name stays
    nested = folder / "sub"
    nested.mkdir()
    (nested / ".y_fake_2.jpg.abc12345.tmp").write_bytes(b"not swept: no recursion")
    (folder / ".link.jpg.abc12345.tmp").symlink_to(tmp_path / "elsewhere")

    assert sweep_stale_temp_files(folder) == 2
    remaining = {p.name for p in folder.iterdir()}
    assert remaining == set(keep) | {".looks.jpg.abc12345.tmp", "sub", ".link.jpg.abc12345.tmp"}
    assert (nested / ".y_fake_2.jpg.abc12345.tmp").exists()
    assert sweep_stale_temp_files(folder) == 0
    assert sweep_stale_temp_files(tmp_path / "absent") == 0
    assert sweep_stale_temp_files(folder / "0001_c1_00001_fake_3.jpg") == 0  # a file, not a folder


def test_atomic_write_without_fsync_writes_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(ecnreid.io.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    data = bytes(range(256)) * 10
    atomic_write_bytes(data, tmp_path / "fast.bin", durable=False)
    assert synced == []
    atomic_write_bytes(data, tmp_path / "sub" / "durable.bin")
    assert len(synced) == 1  # the default stays durable (checkpoints, JSON)
    assert (tmp_path / "fast.bin").read_bytes() == data == (tmp_path / "sub" / "durable.bin").read_bytes()

    image = Image.new("RGB", (16, 32), (10, 200, 30))
    atomic_save_image(image, tmp_path / "fast.jpg", durable=False, quality=95)
    atomic_save_image(image, tmp_path / "durable.jpg", quality=95)
    assert len(synced) == 2
    assert (tmp_path / "fast.jpg").read_bytes() == (tmp_path / "durable.jpg").read_bytes()
    assert [p.name for p in tmp_path.rglob(".*")] == []  # no temp file left behind


def test_ensure_output_dir_creates_folders_and_names_a_file_in_the_way(tmp_path: Path) -> None:
    made = ensure_output_dir(str(tmp_path / "a" / "b"), "--out")
    assert made == tmp_path / "a" / "b" and made.is_dir()
    assert ensure_output_dir(made, "--out") == made  # an existing folder is fine

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(EcnreidError) as error:
        ensure_output_dir(blocker, "--out")
    assert str(error.value) == f"--out {blocker}: exists and is a file, not a folder"
    with pytest.raises(EcnreidError) as error:
        ensure_output_dir(blocker / "deeper" / "run", "--work-dir")
    assert str(error.value) == f"--work-dir {blocker / 'deeper' / 'run'}: {blocker} is a file, not a folder"
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_require_file_refuses_a_folder(tmp_path: Path) -> None:
    (tmp_path / "g.pt").write_bytes(b"weights")
    assert require_file(tmp_path / "g.pt", "--generator") == tmp_path / "g.pt"
    with pytest.raises(EcnreidError, match=r"^--generator .*: is a folder; expected a checkpoint$"):
        require_file(tmp_path, "--generator", "checkpoint")
    with pytest.raises(EcnreidError, match=r"^--generator .*: checkpoint not found$"):
        require_file(tmp_path / "absent.pt", "--generator", "checkpoint")
    with pytest.raises(EcnreidError, match=r"g\.pt is a file, not a folder"):
        require_file(tmp_path / "g.pt" / "inner.pt", "--generator", "checkpoint")


def test_atomic_writes_get_the_mode_of_an_ordinary_write(tmp_path) -> None:
    import os

    from ecnreid.io import atomic_write_bytes

    previous = os.umask(0o022)
    try:
        atomic_write_bytes(b"x", tmp_path / "model.onnx")
        (tmp_path / "plain.txt").write_bytes(b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "model.onnx").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model.onnx").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_concurrent_writers_get_the_umask_mode_and_leave_the_umask_alone(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    previous = os.umask(0o027)
    try:
        for round_ in range(5):
            folder = tmp_path / f"round{round_}"
            paths = [folder / f"{i:03d}.jpg" for i in range(200)]
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(lambda path: atomic_write_bytes(b"x", path, durable=False), paths))
            assert {path.stat().st_mode & 0o777 for path in paths} == {0o640}
            assert os.umask(0o027) == 0o027  # reading it back sets it to the same value
    finally:
        os.umask(previous)


def test_the_umask_is_read_without_being_set(monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc/self/status")
    previous = os.umask(0o027)
    try:

        def refuse(mask: int) -> int:
            raise AssertionError("the umask was set")

        with monkeypatch.context() as patch:
            patch.setattr(os, "umask", refuse)
            assert ecnreid.io._umask() == 0o027
    finally:
        os.umask(previous)
