"""ecnreid.progress: plain lines instead of bars where the console is not a terminal (a log file, nohup, CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import make_reid_tree

from ecnreid.progress import LineProgress, console, make_progress

REPO = Path(__file__).resolve().parents[1]


def test_a_console_that_is_no_terminal_gets_a_line_every_ten_percent(capsys) -> None:
    assert not console.is_terminal  # pytest captures the output
    progress = make_progress()
    assert isinstance(progress, LineProgress)
    with progress:
        task = progress.add_task("epoch 1/2", total=37, unit="it", info="")
        for step in range(37):
            progress.update(task, advance=1, info=f"loss {step}")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("epoch 1/2: 37/37 (100%), ") and lines[-1].endswith("loss 36")
    assert [int(line.split("(")[1].split("%")[0]) // 10 for line in lines[:-1]] == list(range(1, 10))


def test_transient_hidden_and_unstarted_tasks(capsys) -> None:
    progress = make_progress(transient=True)
    with progress:
        task = progress.add_task("verify images", total=8, unit="img", info="")
        hidden = progress.add_task("hidden", total=8, unit="img", info="", visible=False)
        for _ in range(8):
            progress.update(task, advance=1)
            progress.update(hidden, advance=1)
    # A bar that is never started (another rank's) says nothing either.
    quiet = make_progress()
    task = quiet.add_task("rank 1", total=4, info="")
    quiet.update(task, advance=4)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["verify images: 4/8 (50%)", "verify images: 8/8 (100%)"]


def test_a_resumed_task_prints_from_where_it_was(capsys) -> None:
    with make_progress() as progress:
        task = progress.add_task("StarGAN", total=100, completed=55, unit="it", info="")
        progress.update(task, advance=5)
        progress.update(task, advance=40)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["StarGAN: 60/100 (60%)", "StarGAN: 100/100 (100%)"]


def test_prepare_with_its_output_in_a_file_writes_plain_lines(tmp_path: Path) -> None:
    target = make_reid_tree(tmp_path / "target", ids=3, cameras=3, per_camera=1, test_ids=1, seed=2)
    log = tmp_path / "prepare.log"
    command = [sys.executable, "-m", "ecnreid", "prepare", "--dataset", "synthetic", "--root", str(target)]
    command += ["--method", "colour", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "camstyle")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"}
    env.pop("FORCE_COLOR", None)
    with open(log, "w") as handle:
        subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, check=True, timeout=300)
    text = log.read_text()
    assert "\x1b" not in text and "\r" not in text
    assert "colour CamStyle: 18/18 (100%)" in text
    assert not any("━" in line for line in text.splitlines() if "/s" in line)


def test_a_long_line_stays_one_line_off_a_terminal(capsys) -> None:
    words = " ".join(f"word{i}" for i in range(40))  # about 300 characters, far past the 80-column default
    console.print(words)
    assert capsys.readouterr().err.splitlines() == [words]
    console.print(words, soft_wrap=False)  # a caller that asks for wrapping still gets it
    assert len(capsys.readouterr().err.splitlines()) > 1
