"""`ecnreid prepare` through the CLI: path options naming the wrong kind of thing, and killed runs' leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_reid_tree
from typer.testing import CliRunner

import ecnreid.io
from ecnreid.cli import app

runner = CliRunner()
STALE = ".x_fake_2.jpg.abc123.tmp"  # what a kill -9 during an atomic write leaves


def _prepare(root: Path, *extra: str) -> list[str]:
    return ["prepare", "--dataset", "synthetic", "--root", str(root), "--workers", "0", "--device", "cpu", *extra]


def _tiny_stargan(*extra: str) -> list[str]:
    """A StarGAN run of one iteration on a tiny network (seconds on a CPU)."""
    tiny = ["--iters", "1", "--image-size", "64x64", "--batch-size", "2", "--conv-dim", "8"]
    return [*tiny, "--sample-every", "0", "--checkpoint-every", "0", *extra]


@pytest.fixture()
def target(tmp_path: Path) -> Path:
    return make_reid_tree(tmp_path / "target", ids=3, cameras=3, per_camera=1, test_ids=1, seed=2)


@pytest.mark.parametrize(
    ("case", "option", "expected"),
    [
        ("out is a file", "--out", "exists and is a file, not a folder"),
        ("out is under a file", "--out", "afile is a file, not a folder"),
        ("work-dir is a file", "--work-dir", "exists and is a file, not a folder"),
        ("work-dir is under a file", "--work-dir", "afile is a file, not a folder"),
        ("generator is a folder", "--generator", "is a folder; expected a StarGAN checkpoint file"),
        ("root is a file", "--root", "is a file; expected the dataset folder"),
        ("check is a file", "--check", "is a file; expected the CamStyle folder or the dataset folder"),
    ],
)
def test_a_path_of_the_wrong_kind_is_one_line_naming_option_and_path(
    target: Path, tmp_path: Path, case: str, option: str, expected: str
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    out = str(tmp_path / "camstyle")
    args = {
        "out is a file": _prepare(target, "--method", "colour", "--out", str(afile)),
        "out is under a file": _prepare(target, "--method", "colour", "--out", str(afile / "camstyle")),
        "work-dir is a file": _prepare(target, *_tiny_stargan("--out", out, "--work-dir", str(afile))),
        "work-dir is under a file": _prepare(target, *_tiny_stargan("--out", out, "--work-dir", str(afile / "w"))),
        "generator is a folder": _prepare(target, "--out", out, "--generator", str(tmp_path)),
        "root is a file": _prepare(afile, "--method", "colour", "--out", out),
        "check is a file": ["prepare", "--check", str(afile)],
    }[case]
    named = args[args.index(option) + 1]

    result = runner.invoke(app, args)

    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option} {named}: "), result.output
    assert expected in lines[0]
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert afile.read_text() == "not a folder"


def test_prepare_sweeps_stale_temp_files_and_keeps_other_dot_files(target: Path, tmp_path: Path) -> None:
    out = tmp_path / "camstyle"
    out.mkdir()
    (out / STALE).write_bytes(b"half a jpeg")
    (out / ".keep").write_bytes(b"")

    result = runner.invoke(app, _prepare(target, "--method", "colour", "--out", str(out)))

    assert result.exit_code == 0, result.output
    assert f"removed 1 stale temp file from {out}" in result.output
    assert not (out / STALE).exists() and (out / ".keep").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(list(out.glob("*_fake_*.jpg"))) == 9 * 2  # 9 images x the 2 other cameras
    rerun = runner.invoke(app, _prepare(target, "--method", "colour", "--out", str(out)))
    assert rerun.exit_code == 0 and "stale temp" not in rerun.output


def test_prepare_sweeps_the_stargan_work_dir_and_fsyncs_only_its_metadata(
    target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, work = tmp_path / "camstyle", tmp_path / "work"
    (work / "samples").mkdir(parents=True)
    (work / ".checkpoint.pt.k2_9xq1a.tmp").write_bytes(b"half a checkpoint")
    (work / "samples" / ".iter_0001000.png.abcd1234.tmp").write_bytes(b"half a png")
    writes: dict[str, bool] = {}
    real_write = ecnreid.io.atomic_write_bytes

    def recording_write(data: bytes, path: str | Path, *, durable: bool = True) -> None:
        writes[Path(path).name] = durable
        real_write(data, path, durable=durable)

    monkeypatch.setattr(ecnreid.io, "atomic_write_bytes", recording_write)

    args = _prepare(target, *_tiny_stargan("--out", str(out), "--work-dir", str(work), "--sample-every", "1"))
    result = runner.invoke(app, args)

    assert result.exit_code == 0, result.output
    assert f"removed 1 stale temp file from {work}" in result.output
    assert f"removed 1 stale temp file from {work / 'samples'}" in result.output
    assert not [p for p in work.rglob("*.tmp")]
    # 18 CamStyle images written without fsync; the checkpoint, generator and prepare.json with it.
    images = {name for name in writes if name.endswith(".jpg")}
    assert len(images) == 18 and not any(writes[name] for name in images)
    assert writes["checkpoint.pt"] and writes["generator.pt"] and writes["prepare.json"]


@pytest.mark.parametrize(("flags", "amp"), [((), False), (("--no-amp",), False), (("--amp",), True)])
def test_prepare_trains_stargan_in_fp32_unless_amp(
    target: Path, monkeypatch: pytest.MonkeyPatch, flags: tuple[str, ...], amp: bool
) -> None:
    import camstyle.prepare

    built = []
    monkeypatch.setattr(camstyle.prepare, "run_prepare", lambda config, **kwargs: built.append(config) or {})
    monkeypatch.setattr(camstyle.prepare, "render_prepare_summary", lambda summary: "")
    result = runner.invoke(app, _prepare(target, *flags))
    assert result.exit_code == 0, result.output
    (config,) = built
    assert config.stargan.amp is amp  # the section run_prepare hands to train_stargan (its autocast_for)
