"""`ecnreid eval` end to end (``ecnreid.evaluation.runner``): the model it scores and what metrics.json records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import make_reid_tree
from typer.testing import CliRunner

from ecnreid.cli import app

runner = CliRunner()
METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")


@pytest.fixture(scope="module")
def trained_64x32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch ECN run trained and evaluated at 64x32 through `ecnreid train`; (target root, run folder)."""
    root = tmp_path_factory.mktemp("runner")
    source = make_reid_tree(root / "source", ids=4, cameras=2, per_camera=2, seed=1)
    target = make_reid_tree(root / "target", ids=4, cameras=3, per_camera=2, seed=2, first_pid=50)
    run = root / "run"
    domains = ["--source", "synthetic", "--source-root", str(source), "--target", "synthetic", "--target-root"]
    sizes = ["--arch", "resnet18", "--no-pretrained", "--height", "64", "--width", "32", "--batch-size", "8"]
    result = runner.invoke(
        app,
        ["train", *domains, str(target), *sizes, "--epochs", "1", "--workers", "0", "--device", "cpu", "--no-camera",
         "--out", str(run)],
    )
    assert result.exit_code == 0, result.output
    return target, run


def eval_args(target: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--dataset", "synthetic", "--root", str(target), "--device", "cpu", "--workers", "0",
            "--out", str(out), *extra]


def error_line(result) -> str:
    """The one `error:` line of a failed command (exit code 2, nothing else printed, no traceback)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    return lines[0]


def test_eval_of_a_checkpoint_scores_the_model_its_card_describes(trained_64x32, tmp_path: Path) -> None:
    target, run = trained_64x32
    checkpoint = run / "last.pt"
    out = tmp_path / "eval"
    # No --height/--width: the card's 64x32 is used (the defaults, 256x128, would score another model).
    result = runner.invoke(app, eval_args(target, out, "--checkpoint", str(checkpoint)))
    assert result.exit_code == 0, result.output
    trained = json.loads((run / "metrics.json").read_text())["final"]
    scored = json.loads((out / "metrics.json").read_text())
    for key in METRICS:
        assert scored["results"]["plain"][key] == pytest.approx(trained[key], abs=1e-6), key
    card = torch.load(checkpoint, map_location="cpu", weights_only=False)["card"]
    model = scored["model"]
    assert {key: model[key] for key in card} == card
    assert (model["arch"], model["input_height"], model["input_width"]) == ("resnet18", 64, 32)
    assert model["checkpoint"] == str(checkpoint)
    assert model["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    # What was given is recorded as given: nothing, the card decided.
    assert scored["config"]["model"]["arch"] is None and scored["config"]["input"]["height"] is None
    # Options equal to the card's values are accepted.
    same = ["--arch", "resnet18", "--height", "64", "--width", "32", "--last-stride", "2", "--no-pretrained"]
    result = runner.invoke(app, eval_args(target, tmp_path / "same", "--checkpoint", str(checkpoint), *same))
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "same" / "metrics.json").read_text())["results"]["plain"]
    assert again["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)


@pytest.mark.parametrize(
    ("option", "fragments"),
    [
        (["--height", "256"], ["--height 256", "input height 64", "leave out --height"]),
        (["--width", "128"], ["--width 128", "input width 32", "leave out --width"]),
        (["--arch", "resnet50"], ["--arch resnet50", "architecture resnet18", "leave out --arch"]),
        (["--last-stride", "1"], ["--last-stride 1", "last stride 2", "leave out --last-stride"]),
        (["--pretrained"], ["--pretrained", "holds the trained weights", "leave out --pretrained"]),
    ],
)
def test_an_option_that_contradicts_the_card_stops_with_one_line(
    trained_64x32, tmp_path: Path, option: list[str], fragments: list[str]
) -> None:
    target, run = trained_64x32
    out = tmp_path / "eval"
    line = error_line(runner.invoke(app, eval_args(target, out, "--checkpoint", str(run / "last.pt"), *option)))
    for fragment in [*fragments, str(run / "last.pt")]:
        assert fragment in line, (fragment, line)
    assert not out.exists()


def test_weights_with_a_checkpoint_are_refused(trained_64x32, tmp_path: Path) -> None:
    target, run = trained_64x32
    args = eval_args(target, tmp_path / "eval", "--checkpoint", str(run / "last.pt"), "--weights", "w.pth")
    line = error_line(runner.invoke(app, args))
    assert "--weights w.pth" in line and "leave out --weights" in line


def test_eval_of_a_bare_backbone_records_the_backbone_it_built(two_domains, tmp_path: Path) -> None:
    _, target = two_domains
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    out = tmp_path / "eval"
    args = eval_args(target, out, "--arch", "resnet18", "--weights", str(weights), "--height", "32", "--width", "16")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    model = json.loads((out / "metrics.json").read_text())["model"]
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert model["weights"] == {"kind": "file", "path": str(weights), "sha256": digest}
    assert (model["arch"], model["feature_dim"]) == ("resnet18", 512)
    assert (model["input_height"], model["input_width"]) == (32, 16)
    assert model["last_stride"] == 2 and model["mean"] == pytest.approx([0.485, 0.456, 0.406])
    # Left out, the size is the default 256x128 and the weights random when --no-pretrained says so.
    out = tmp_path / "default"
    result = runner.invoke(app, eval_args(target, out, "--arch", "resnet18", "--no-pretrained"))
    assert result.exit_code == 0, result.output
    model = json.loads((out / "metrics.json").read_text())["model"]
    assert (model["input_height"], model["input_width"], model["weights"]) == (256, 128, {"kind": "random"})
