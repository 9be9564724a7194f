"""``ecnreid train --tensorboard``: the event file holds the losses per step, the lr per epoch and the
evaluations, with the values of ``log.jsonl``; without the package, one line says what to install."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecnreid.cli import app

runner = CliRunner()


def train_args(source: Path, target: Path, out: Path, *extra: str) -> list[str]:
    domains = ["--source", "synthetic", "--source-root", str(source), "--target", "synthetic", "--target-root"]
    sizes = ["--arch", "resnet18", "--no-pretrained", "--height", "32", "--width", "16", "--batch-size", "8"]
    run = ["--workers", "0", "--device", "cpu", "--out", str(out), "--no-camera", "--embedding-dim", "16"]
    return ["train", *domains, str(target), *sizes, *run, *extra]


def test_the_event_file_holds_losses_per_step_lr_and_evaluations(two_domains, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    source, target = two_domains
    out = tmp_path / "run"
    extra = ("--epochs", "2", "--eval-every", "1", "--lr-steps", "1,2", "--tensorboard")
    result = runner.invoke(app, train_args(source, target, out, *extra))
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    losses = {"loss/total", "loss/source", "loss/target"}
    evaluations = {f"eval/{m}" for m in ("rank1", "rank5", "rank10", "mAP", "mINP")}
    assert tags == losses | evaluations | {"lr"}
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    iters = 2  # 16 source images in batches of 8
    for tag in losses:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3, 4]
        name = "loss_" + tag.split("/")[1]
        for epoch, row in enumerate(log):  # the epoch's row holds the mean of its steps
            values = [s.value for s in scalars[epoch * iters : (epoch + 1) * iters]]
            assert sum(values) / iters == pytest.approx(row[name], rel=1e-5)
    lr = events.Scalars("lr")
    assert [s.step for s in lr] == [1, 2] and [s.value for s in lr] == pytest.approx([0.01, 0.001])
    assert [row["lr"] for row in log] == pytest.approx([0.01, 0.001])
    for tag in evaluations:
        scalars, metric = events.Scalars(tag), tag.split("/")[1]
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([row[metric] for row in log], rel=1e-5)


def test_without_the_flag_no_events_are_written(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(source, target, out, "--epochs", "1", "--eval-every", "0"))
    assert result.exit_code == 0, result.output
    assert not (out / "tensorboard").exists()


def test_without_the_package_the_flag_is_a_one_line_error(two_domains, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what a missing package raises
    source, target = two_domains
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(source, target, out, "--epochs", "1", "--tensorboard"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == (
        "error: --tensorboard: the tensorboard package is not installed; pip install 'ecnreid[tensorboard]'"
    )
    assert not out.exists()


def test_a_resumed_run_shows_each_step_of_the_repeated_epoch_once(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ecnreid.engine.tensorboard import TensorBoardHook

    class Loop:
        iters_per_epoch = 2

    first = TensorBoardHook(tmp_path)
    for iteration in range(2):
        first.after_step(Loop(), 0, iteration, {"loss_total": 1.0 + iteration})
    first.after_epoch(Loop(), 0, {"lr": 0.01})
    first.after_step(Loop(), 1, 0, {"loss_total": 9.0})  # then the process is killed inside epoch 2
    first.writer.flush()
    resumed = TensorBoardHook(tmp_path)  # resumes from the epoch-1 checkpoint and runs epoch 2 again
    for iteration in range(2):
        resumed.after_step(Loop(), 1, iteration, {"loss_total": 3.0 + iteration})
    resumed.after_run(Loop(), {})
    first.after_run(Loop(), {})
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = events.Scalars("loss/total")
    assert [(s.step, s.value) for s in scalars] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
