"""ecnreid.runstate: torch files with one-line errors, checkpoints, the resume check, the interruption guard."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ecnreid.errors import EcnreidError
from ecnreid.runstate import (
    check_resume_compatible,
    interruption_guard,
    load_checkpoint,
    load_torch_file,
    save_checkpoint,
)

# What torch reports when a stop signal reached a DataLoader worker before the main process.
WORKER_KILLED = "DataLoader worker (pid 4242) is killed by signal: Terminated. "


def _one_line(call) -> str:
    with pytest.raises(EcnreidError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


class Foreign:
    """An arbitrary pickled object: only a trusted file (our own checkpoints) may unpickle one."""


# ---------------------------------------------------------------------------------------------- torch files
def test_load_torch_file_round_trip_and_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"weight": torch.ones(2)}, path)
    assert torch.equal(load_torch_file(path, "weights file")["weight"], torch.ones(2))

    torch.save({"object": Foreign()}, tmp_path / "pickle.pt")
    message = _one_line(lambda: load_torch_file(tmp_path / "pickle.pt", "weights file"))
    assert message == (
        f"{tmp_path / 'pickle.pt'}: not a torch state_dict file: it holds Python objects besides tensors "
        "(a whole model saved with torch.save(model)?); expected a weights file"
    )
    loaded = load_torch_file(tmp_path / "pickle.pt", "weights file", weights_only=False)
    assert isinstance(loaded["object"], Foreign)


def test_missing_folder_truncated_and_foreign_files_are_one_line_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint({"model": {"w": torch.randn(64, 64)}, "config": {}}, good)
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("not a torch file")
    save_checkpoint({"weights": torch.zeros(1)}, tmp_path / "other.pt")

    missing = _one_line(lambda: load_torch_file(tmp_path / "absent.pt", "generator checkpoint"))
    assert missing == f"{tmp_path / 'absent.pt'}: generator checkpoint not found"
    folder = _one_line(lambda: load_torch_file(tmp_path, "ecnreid checkpoint"))
    assert folder == f"{tmp_path}: is a folder; expected an ecnreid checkpoint"
    for name in ("cut.pt", "text.pt"):
        message = _one_line(
            lambda name=name: load_torch_file(tmp_path / name, "ecnreid checkpoint", weights_only=False)
        )
        assert message == (
            f"{tmp_path / name}: not a torch checkpoint file (not written by torch.save, or cut short); "
            "expected an ecnreid checkpoint"
        )
    foreign = _one_line(lambda: load_torch_file(tmp_path / "other.pt", "StarGAN checkpoint", keys=("generator",)))
    assert foreign == f"{tmp_path / 'other.pt'}: not a StarGAN checkpoint (no 'generator' entries)"
    # A path that came from an option names it first.
    flagged = _one_line(lambda: load_torch_file(tmp_path / "absent.pt", "weights file", option="--weights"))
    assert flagged == f"--weights {tmp_path / 'absent.pt'}: weights file not found"


def test_checkpoints_round_trip_and_need_model_and_config(tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(3)}, "config": {"arch": "resnet18"}, "epoch": 2}
    save_checkpoint(state, tmp_path / "run" / "last.pt")
    loaded = load_checkpoint(tmp_path / "run" / "last.pt")
    assert torch.equal(loaded["model"]["w"], torch.arange(3)) and loaded["epoch"] == 2
    assert not [p for p in (tmp_path / "run").iterdir() if p.name != "last.pt"]  # no temp file left
    save_checkpoint({"model": {}}, tmp_path / "half.pt")
    message = _one_line(lambda: load_checkpoint(tmp_path / "half.pt"))
    assert message == (
        f"{tmp_path / 'half.pt'}: not an ecnreid checkpoint (no 'model' and 'config' entries); expected the last.pt "
        "that `ecnreid train --out DIR` writes into DIR"
    )
    assert "not found" in _one_line(lambda: load_checkpoint(tmp_path / "none.pt"))


# ---------------------------------------------------------------------------------------------- resume check
def test_resume_check_names_the_first_differing_key() -> None:
    saved = {"arch": "resnet50", "memory_slots": 100, "image_size": [256, 128], "seen": 1}
    keys = ("arch", "memory_slots", "image_size")
    check_resume_compatible(saved, {**saved, "seen": 2}, "last.pt", keys)  # keys outside the list may differ
    message = _one_line(lambda: check_resume_compatible(saved, {**saved, "memory_slots": 90}, "last.pt", keys))
    assert message == "last.pt: cannot resume: checkpoint has memory_slots=100 but this run has memory_slots=90"
    # A key only one side has differs too (a checkpoint from before the setting existed).
    message = _one_line(lambda: check_resume_compatible(saved, {**saved, "dtype": "fp16"}, "x.pt", ("dtype",)))
    assert message == "x.pt: cannot resume: checkpoint has dtype=None but this run has dtype='fp16'"


# ---------------------------------------------------------------------------------------------- interruptions
@pytest.mark.parametrize("stop", [KeyboardInterrupt(), RuntimeError(WORKER_KILLED)])
def test_guard_saves_says_where_and_re_raises_a_stop(tmp_path: Path, capsys, stop: BaseException) -> None:
    saved = []

    def save() -> Path:
        saved.append("state")
        return tmp_path / "interrupted.pt"

    guard = interruption_guard(save, what="training in runs/x", resume_hint="--resume")
    with pytest.raises(type(stop)) as raised, guard:
        raise stop
    assert raised.value is stop and saved == ["state"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"interrupted training in runs/x; state saved to {tmp_path / 'interrupted.pt'}: rerun with --resume to continue"
    ]


def test_guard_leaves_other_errors_and_normal_exits_alone(capsys) -> None:
    saved = []
    for error in (RuntimeError("CUDA error: an illegal memory access"), ValueError("bug")):
        with pytest.raises(type(error)), interruption_guard(lambda: saved.append(1), what="job", resume_hint="-"):
            raise error
    with interruption_guard(lambda: saved.append(1), what="job", resume_hint="--resume"):
        pass
    assert saved == [] and capsys.readouterr().err == ""


def test_guard_without_a_save_or_with_nothing_saved(capsys) -> None:
    with pytest.raises(KeyboardInterrupt), interruption_guard(None, what="prepare", resume_hint="the same options"):
        raise KeyboardInterrupt
    assert capsys.readouterr().err.strip() == "interrupted prepare: rerun with the same options to continue"
    # A non-main rank: it saved nothing and prints nothing.
    with pytest.raises(KeyboardInterrupt), interruption_guard(lambda: None, what="training", resume_hint="--resume"):
        raise KeyboardInterrupt
    assert capsys.readouterr().err == ""


def test_nested_guards_all_save_and_print_one_line(tmp_path: Path, capsys) -> None:
    order = []

    def save(name: str) -> Path:
        order.append(name)
        return tmp_path / name

    outer = interruption_guard(lambda: save("outer.pt"), what="outer job", resume_hint="the same options")
    inner = interruption_guard(lambda: save("inner.pt"), what="inner job", resume_hint="--resume")
    with pytest.raises(KeyboardInterrupt), outer, inner:
        raise KeyboardInterrupt
    assert order == ["inner.pt", "outer.pt"]
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("interrupted inner job;") and str(tmp_path / "inner.pt") in line


def test_a_failing_save_propagates_with_the_stop_as_context() -> None:
    def save() -> Path:
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left") as raised, interruption_guard(save, what="job", resume_hint="-"):
        raise KeyboardInterrupt
    assert isinstance(raised.value.__context__, KeyboardInterrupt)
