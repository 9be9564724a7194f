"""The command line: exit codes, one-line errors, the files each command writes, the configs it builds."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch
import typer
import typer.main
from typer.testing import CliRunner

from ecnreid.cli import app, parse_size, parse_stages, user_errors
from ecnreid.errors import EcnreidError

runner = CliRunner()


def tiny_eval_args(root: Path, *extra: str) -> list[str]:
    """`ecnreid eval` on a tiny synthetic-layout tree at 32x16 on the CPU, plus ``extra`` options."""
    base = ["eval", "--dataset", "synthetic", "--root", str(root), "--height", "32", "--width", "16"]
    return [*base, "--device", "cpu", *extra]


def test_eval_scores_a_tiny_split_and_writes_metrics(two_domains, tmp_path: Path) -> None:
    _, target = two_domains
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        tiny_eval_args(
            target,
            *("--arch", "resnet18", "--no-pretrained", "--workers", "0", "--out", str(out)),
            *("--rerank", "--save-ranks", "2"),
        ),
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["results"]) == {"plain", "rerank"}
    assert metrics["query"] == 9 and metrics["gallery"] == 18
    assert 0 <= metrics["results"]["plain"]["rank1"] <= 100
    assert metrics["config"]["model"]["arch"] == "resnet18"
    assert (out / "cmc.png").is_file() and len(list((out / "ranks").glob("*.png"))) == 2


def test_eval_of_a_training_checkpoint(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--source",
            "synthetic",
            "--source-root",
            str(source),
            "--target",
            "synthetic",
            "--target-root",
            str(target),
            "--arch",
            "resnet18",
            "--no-pretrained",
            "--height",
            "32",
            "--width",
            "16",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--no-camera",
            "--backbone-lr-mult",
            "0.5",
            "--memory-init",
            "features",
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    ecn = config["ecn"]
    assert ecn["use_camera"] is False and config["provenance"]["setting"] == "+E+N" and ecn["lam"] == 0.3
    assert config["optim"]["backbone_lr_mult"] == 0.5 and ecn["memory_init"] == "features"
    optimizer = torch.load(out / "last.pt", map_location="cpu", weights_only=False)["optimizer"]
    assert [group["lr"] for group in optimizer["param_groups"]] == pytest.approx([0.1, 0.05])
    trained = json.loads((out / "metrics.json").read_text())["final"]
    result = runner.invoke(
        app,
        tiny_eval_args(target, "--checkpoint", str(out / "last.pt"), "--workers", "0", "--out", str(tmp_path / "eval")),
    )
    assert result.exit_code == 0, result.output
    scored = json.loads((tmp_path / "eval" / "metrics.json").read_text())["results"]["plain"]
    # The same model on the same split gives the trainer's final numbers.
    assert scored["rank1"] == pytest.approx(trained["rank1"]) and scored["mAP"] == pytest.approx(trained["mAP"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "market1501", "--root", "/nonexistent/market"], "/nonexistent/market"),
        (["--dataset", "nosuchset", "--root", "."], "unknown dataset"),
    ],
)
def test_eval_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["eval", *args, "--device", "cpu"])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert result.output.strip().startswith("error:")


def test_bad_weights_file_is_one_line_and_exit_2(two_domains, tmp_path: Path) -> None:
    _, target = two_domains
    bad = tmp_path / "bad.pth"
    torch.save({"not.a.key": torch.zeros(1)}, bad)
    result = runner.invoke(
        app,
        tiny_eval_args(target, "--arch", "resnet18", "--weights", str(bad)),
    )
    assert result.exit_code == 2 and str(bad) in result.output and "Traceback" not in result.output


def test_checkpoint_and_weights_together_are_refused(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["eval", "--dataset", "synthetic", "--root", str(tmp_path), "--checkpoint", "a.pt", "--weights", "b.pth"]
    )
    assert result.exit_code == 2 and "--checkpoint" in result.output


def test_train_source_only_and_no_target_conflict(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "train",
            "--source",
            "synthetic",
            "--source-root",
            str(tmp_path),
            "--target",
            "synthetic",
            "--target-root",
            str(tmp_path),
            "--source-only",
            "--no-target",
        ],
    )
    assert result.exit_code == 2 and "choose one" in result.output


def test_prepare_colour_writes_the_set_with_the_chosen_workers(two_domains, tmp_path: Path) -> None:
    _, target = two_domains
    out = tmp_path / "camstyle"
    args = ["prepare", "--dataset", "synthetic", "--root", str(target), "--method", "colour", "--out", str(out)]
    result = runner.invoke(app, [*args, "--workers", "0"])
    assert result.exit_code == 0, result.output
    # 24 target images in 3 cameras: each in the 2 other cameras.
    assert len(list(out.glob("*_fake_*.jpg"))) == 48
    assert json.loads((out / "prepare.json").read_text())["config"]["workers"] == 0
    assert_plain_progress(result.output, "colour CamStyle: 48/48 (100%)")
    table = "".join(ch for ch in result.output if ch not in "│ \n")  # the summary table folds long paths
    assert "written48(0alreadythere)" in table and f"details{out / 'prepare.json'}" in table
    assert "'config'" not in result.output


def test_prepare_stargan_takes_its_network_options_from_the_command_line(two_domains, tmp_path: Path) -> None:
    _, target = two_domains
    out, work = tmp_path / "camstyle", tmp_path / "work"
    args = ["prepare", "--dataset", "synthetic", "--root", str(target), "--out", str(out), "--work-dir", str(work)]
    tiny = ["--iters", "1", "--image-size", "64x64", "--batch-size", "2", "--workers", "0", "--device", "cpu"]
    options = ["--conv-dim", "8", "--residual-generator", "--camera-norm", "--n-critic", "1", "--lr", "2e-4"]
    options += ["--lambda-rec", "0.5"]
    options += ["--sample-every", "0", "--checkpoint-every", "0"]
    result = runner.invoke(app, [*args, *tiny, *options])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "prepare.json").read_text())["config"]["stargan"]
    assert config["conv_dim"] == 8 and config["n_critic"] == 1 and config["lr"] == 2e-4
    assert config["lambda_rec"] == 0.5
    assert len(list(out.glob("*_fake_*.jpg"))) == 48
    generator = torch.load(next(work.glob("*.pt")), map_location="cpu", weights_only=False)
    assert generator["model"]["g_conv_dim"] == 8 and generator["model"]["g_residual"] is True
    assert generator["model"]["g_camera_norm"] is True
    # The residual generator's last conv starts at zero; with one critic step per generator step the single
    # iteration already updated it (with the published 5 it would still be zero).
    last_conv = [v for k, v in generator["generator"].items() if k.endswith("weight")][-1]
    assert last_conv.shape[0] == 3 and last_conv.abs().sum() > 0


def test_parsers() -> None:
    assert parse_size("256x128", "--image-size") == (256, 128)
    with pytest.raises(EcnreidError, match="HEIGHTxWIDTH"):
        parse_size("256", "--image-size")
    assert parse_stages("layer1, layer2") == ("layer1", "layer2")
    assert parse_stages(None) == ()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("prepare", "train", "eval", "demo"):
        assert command in result.output


def test_every_command_gives_each_flag_to_one_option() -> None:
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        flags = [flag for param in command.params for flag in (*param.opts, *param.secondary_opts)]
        assert len(flags) == len(set(flags)), f"{name}: {sorted(f for f in flags if flags.count(f) > 1)}"
        assert len(flags) > 2, name  # the generated options are there


def test_an_option_with_the_flag_of_a_commands_own_parameter_is_refused() -> None:
    from ecnreid.cli import attach_options
    from ecnreid.config import DuplicateFlagError, setting_options
    from ecnreid.config.fields import setting

    @dataclasses.dataclass(frozen=True)
    class Checked:
        check: bool = setting(False, "A setting whose flag is the command's own --check.")

    def command(ctx: typer.Context, check: bool = False, **values: object) -> None:
        pass

    with pytest.raises(DuplicateFlagError, match="--check is the flag of both parameter check and check"):
        attach_options(command, setting_options(Checked))


def test_undecodable_image_in_a_worker_is_one_line(two_domains, tmp_path: Path) -> None:
    _, target = two_domains
    broken = sorted((target / "query").glob("*.jpg"))[0]
    broken.write_bytes(b"not a jpeg at all")
    args = tiny_eval_args(
        target, "--arch", "resnet18", "--no-pretrained", "--workers", "2", "--out", str(tmp_path / "eval")
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and broken.name in lines[0] and "Traceback" not in result.output
    # --skip-bad-images skips and counts it instead.
    result = runner.invoke(app, [*args, "--skip-bad-images"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 undecodable" in result.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["query"] == 8


def test_sigterm_stops_a_command_like_ctrl_c_and_the_handler_is_restored() -> None:
    seen: list[str] = []

    @user_errors
    def long_job() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:  # where the trainer saves interrupted.pt
            seen.append("saved")
            raise

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit) as exit_info:
        long_job()
    assert exit_info.value.exit_code == 130 and seen == ["saved"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_loader_worker_killed_by_the_stop_signal_is_an_interruption_not_a_traceback() -> None:
    @user_errors
    def stopped() -> None:
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated. ")

    with pytest.raises(typer.Exit) as exit_info:
        stopped()
    assert exit_info.value.exit_code == 130

    @user_errors
    def broken() -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        broken()


def tiny_train_args(source: Path, target: Path, out: Path, *extra: str) -> list[str]:
    """`ecnreid train` on the tiny two-domain trees at 32x16 on the CPU for one epoch, plus ``extra`` options."""
    domains = ["--source", "synthetic", "--source-root", str(source), "--target", "synthetic", "--target-root"]
    sizes = ["--arch", "resnet18", "--height", "32", "--width", "16", "--batch-size", "8", "--epochs", "1"]
    return ["train", *domains, str(target), *sizes, "--workers", "0", "--device", "cpu", "--out", str(out), *extra]


def assert_one_line_error(result, *fragments: str) -> None:
    """Exit code 2, one `error:` line holding every fragment, no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert lines[-1].startswith("error:") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def test_train_and_eval_start_from_imagenet_weights_and_say_how_to_go_offline(two_domains, tmp_path: Path) -> None:
    # conftest makes every download fail, as on an offline machine: the default asks for one.
    source, target = two_domains
    result = runner.invoke(app, tiny_train_args(source, target, tmp_path / "run", "--no-camera"))
    assert_one_line_error(result, "ImageNet weights for resnet18", "--weights PATH", "--no-pretrained")
    result = runner.invoke(app, tiny_eval_args(target, "--arch", "resnet18", "--out", str(tmp_path / "eval")))
    assert_one_line_error(result, "ImageNet weights for resnet18", "--weights PATH", "--no-pretrained")


def test_random_weights_are_explicit_recorded_and_frozen_stages_are_announced(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    out = tmp_path / "run"
    result = runner.invoke(app, tiny_train_args(source, target, out, "--no-camera", "--no-pretrained"))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps lines at the runner's terminal width
    assert "random initial weights" in said and "stem, layer1, layer2 stay frozen" in said
    recorded = json.loads((out / "config.json").read_text())["provenance"]
    assert recorded["backbone_weights"] == {"kind": "random"}
    assert json.loads((out / "metrics.json").read_text())["backbone_weights"] == {"kind": "random"}
    # The result is the final epoch; nothing is picked on the target's test labels.
    assert not (out / "best.pt").exists() and "(final)" in result.output


def test_a_weights_file_is_recorded_with_its_sha256(two_domains, tmp_path: Path) -> None:
    import hashlib

    import torchvision

    source, target = two_domains
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    out = tmp_path / "run"
    result = runner.invoke(app, tiny_train_args(source, target, out, "--no-camera", "--weights", str(weights)))
    assert result.exit_code == 0, result.output
    origin = json.loads((out / "metrics.json").read_text())["backbone_weights"]
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert origin == {"kind": "file", "path": str(weights), "sha256": digest}
    assert "stay frozen" not in " ".join(result.output.split())
    both = tiny_train_args(source, target, tmp_path / "both", "--no-camera", "--weights", str(weights))
    both.append("--no-pretrained")
    assert_one_line_error(runner.invoke(app, both), "--weights PATH and --no-pretrained")


def test_camera_invariance_without_a_camstyle_set_stops(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    result = runner.invoke(app, tiny_train_args(source, target, tmp_path / "run", "--no-pretrained"))
    assert_one_line_error(
        result, str(target / "bounding_box_train_camstyle"), "ecnreid prepare", "--no-camera"
    )
    assert not (tmp_path / "run" / "last.pt").exists()


def test_an_incomplete_camstyle_set_stops_and_a_complete_one_is_recorded(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    camstyle = tmp_path / "camstyle"
    prepare = ["prepare", "--dataset", "synthetic", "--root", str(target), "--method", "colour", "--workers", "0"]
    assert runner.invoke(app, [*prepare, "--out", str(camstyle)]).exit_code == 0
    args = tiny_train_args(source, target, tmp_path / "run", "--no-pretrained", "--camstyle-dir", str(camstyle))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["setting"] == "+E+C+N"
    expected = {"dir": str(camstyle), "scheme": "stargan", "expected": 48, "present": 48, "coverage": 1.0}
    assert metrics["camstyle"] == expected
    # A third of the files deleted: the run refuses, naming how many and the first one missing.
    files = sorted(camstyle.glob("*_fake_*.jpg"))
    for path in files[::3]:
        path.unlink()
    args = tiny_train_args(source, target, tmp_path / "again", "--no-pretrained", "--camstyle-dir", str(camstyle))
    result = runner.invoke(app, args)
    assert_one_line_error(result, "16 of 48 images missing", "incomplete CamStyle set")
    said = " ".join(result.output.split())
    first = said.split("(first: ", 1)[1].split(")", 1)[0]
    assert Path(first) in files[::3]


def test_crossdomain_mixstyle_needs_target_images(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    args = tiny_train_args(
        source, target, tmp_path / "run", "--no-pretrained", "--source-only", "--mixstyle", "layer1",
        "--mixstyle-mix", "crossdomain",
    )
    assert_one_line_error(runner.invoke(app, args), "--mixstyle-mix crossdomain", "target images")


def test_faiss_neighbours_on_the_cpu_are_recorded(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    args = tiny_train_args(
        source, target, tmp_path / "run", "--no-pretrained", "--no-camera", "--knn", "faiss", "--neighbour-start", "0"
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["knn_backend"] == "faiss-cpu"


@pytest.mark.parametrize("option", ["--out", "--camstyle-dir"])
def test_train_path_options_naming_a_file_are_one_line(two_domains, tmp_path: Path, option: str) -> None:
    source, target = two_domains
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    out = a_file if option == "--out" else tmp_path / "run"
    extra = ["--camstyle-dir", str(a_file)] if option == "--camstyle-dir" else ["--no-camera"]
    result = runner.invoke(app, tiny_train_args(source, target, out, "--no-pretrained", *extra))
    assert_one_line_error(result, option, str(a_file))


def captured_train_config(monkeypatch, args: list[str]):
    """Run `ecnreid train` with ``args`` and return the TrainConfig it would train, without training."""
    import ecnreid.training

    seen = []
    monkeypatch.setattr(ecnreid.training, "train", lambda config: seen.append(config) or {})
    monkeypatch.setattr("ecnreid.inference.evaluate.render_train_summary", lambda summary: "")
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    return seen[0]


REQUIRED = ["--source", "dukemtmc", "--source-root", "d", "--target", "market1501", "--target-root", "m"]


def test_command_line_defaults_are_the_dataclass_defaults(monkeypatch) -> None:
    from ecnreid.config import DomainsConfig, TrainConfig

    monkeypatch.setattr("ecnreid.workers.usable_cpus", lambda: 64)  # no cap of the default 4 workers
    config = captured_train_config(monkeypatch, REQUIRED)
    assert config == TrainConfig(domains=DomainsConfig("dukemtmc", Path("d"), "market1501", Path("m")))


def test_a_config_file_gives_settings_and_the_command_line_overrides_it(monkeypatch, tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        '[domains]\nsource = "dukemtmc"\nsource_root = "d"\ntarget = "market1501"\ntarget_root = "m"\n'
        "[optim]\nlr = 0.01\nepochs = 10\n[ecn]\nuse_camera = false\n"
    )
    config = captured_train_config(monkeypatch, ["--config", str(path), "--epochs", "3", "--mixstyle", "layer1"])
    assert config.optim.lr == 0.01 and not config.ecn.use_camera  # from the file
    assert config.optim.epochs == 3 and config.dg.mixstyle_stages == ("layer1",)  # the command line wins


def test_a_runs_own_config_json_reproduces_it(monkeypatch, tmp_path: Path) -> None:
    from ecnreid.config import config_to_dict

    first = captured_train_config(monkeypatch, [*REQUIRED, "--lr", "0.02", "--snr", "layer1,layer2", "--k", "3"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**config_to_dict(first), "provenance": {}, "signature": {}}))
    assert captured_train_config(monkeypatch, ["--config", str(path)]) == first


def test_missing_and_invalid_settings_are_one_line_errors(tmp_path: Path) -> None:
    assert_one_line_error(runner.invoke(app, ["train", "--source", "dukemtmc"]), "--source-root", "required")
    assert_one_line_error(runner.invoke(app, ["train", *REQUIRED, "--knn", "annoy"]), "--knn annoy")
    assert_one_line_error(runner.invoke(app, ["train", "--config", str(tmp_path / "none.toml")]), "none.toml")


def test_train_help_is_grouped_by_section() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    for panel in ("Input", "Model", "Optimisation", "ECN", "Domain generalisation", "Evaluation", "Runtime"):
        assert f"─ {panel} ─" in result.output, panel
    assert "--no-pretrained" in result.output and "--no-camera" in result.output


# ---------------------------------------------------------------------------------------------- bad input in words
EXCEPTION_CLASS = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Interrupt)\b")


def assert_user_line(result, *fragments: str, alone: bool = True) -> str:
    """Exit code 2 and one error line, naming every fragment, with no exception class name in it; ``alone``:
    nothing else was printed (else the error is the last line of a command that had started work)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert lines[-1].startswith("error:") and "Traceback" not in result.output, result.output
    assert len(lines) == 1 or not alone, result.output
    assert not EXCEPTION_CLASS.search(lines[-1]), lines[-1]
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


def test_a_text_file_as_checkpoint_or_weights_says_what_is_expected(two_domains, tmp_path: Path) -> None:
    _, target = two_domains
    text = tmp_path / "notes.pt"
    text.write_text("hello, this is not a checkpoint\n" * 20)
    result = runner.invoke(app, tiny_eval_args(target, "--checkpoint", str(text), "--out", str(tmp_path / "e")))
    assert_user_line(result, f"--checkpoint {text}", "not a torch checkpoint file", "last.pt", "ecnreid train")
    args = tiny_eval_args(target, "--arch", "resnet18", "--weights", str(text), "--out", str(tmp_path / "e"))
    assert_user_line(runner.invoke(app, args), f"--weights {text}", "not a torch state_dict file", "state_dict()")


def test_a_missing_checkpoint_is_worded_the_same_by_every_command(two_domains, tmp_path: Path) -> None:
    _, target = two_domains
    absent = tmp_path / "absent.pt"
    images = str(target / "query")
    commands = [
        tiny_eval_args(target, "--checkpoint", str(absent), "--out", str(tmp_path / "eval")),
        ["search", "--checkpoint", str(absent), "--query", images, "--gallery", images, "--out", str(tmp_path / "s")],
        ["extract", "--checkpoint", str(absent), "--images", images, "--out", str(tmp_path / "x")],
        ["export", "--checkpoint", str(absent), "--out", str(tmp_path / "m.onnx")],
    ]
    lines = {assert_user_line(runner.invoke(app, args), f"--checkpoint {absent}", "not found", "last.pt")
             for args in commands}
    assert len(lines) == 1, lines


def test_prepare_check_on_a_dataset_root_points_at_its_camstyle_folder(two_domains) -> None:
    _, target = two_domains
    result = runner.invoke(app, ["prepare", "--check", str(target)])
    assert_user_line(result, f"--check {target}", str(target / "bounding_box_train_camstyle"), "ecnreid prepare")


def test_an_undecodable_training_image_names_skip_bad_images(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    for image in (source / "bounding_box_train").glob("*.jpg"):
        image.write_bytes(b"not a jpeg at all")
    # Two workers: the error arrives wrapped in a loader worker's traceback.
    args = tiny_train_args(source, target, tmp_path / "run", "--no-camera", "--no-pretrained", "--workers", "2")
    result = runner.invoke(app, args)
    fragments = (str(source / "bounding_box_train"), "cannot decode image", "--skip-bad-images")
    assert_user_line(result, *fragments, alone=False)


def test_offline_nothing_is_printed_before_the_one_line(two_domains, tmp_path: Path, monkeypatch) -> None:
    import sys
    import urllib.error

    import torchvision

    def offline_as_torch_is(url: str, *args: object, **kwargs: object) -> None:
        sys.stdout.write(f'Downloading: "{url}" to {tmp_path}\n')  # torch's notice, before it connects
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline_as_torch_is)
    result = runner.invoke(app, tiny_eval_args(two_domains[1], "--arch", "resnet18", "--out", str(tmp_path / "e")))
    assert_user_line(result, "ImageNet weights for resnet18", "Network is unreachable", "--weights PATH")


def test_a_failed_command_leaves_no_folder_it_created(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    absent = str(tmp_path / "absent.pt")
    images = str(target / "query")
    new = tmp_path / "new"
    generator = tmp_path / "generator.pt"
    generator.write_text("not a generator")
    failing = [
        ["search", "--checkpoint", absent, "--query", images, "--gallery", images, "--out", str(new / "search")],
        ["export", "--checkpoint", absent, "--out", str(new / "deep" / "model.onnx")],
        ["prepare", "--dataset", "synthetic", "--root", str(target), "--generator", str(generator),
         "--out", str(new / "camstyle")],
        # Camera invariance without a CamStyle set stops at validation.
        tiny_train_args(source, target, new / "run", "--no-pretrained"),
    ]
    for args in failing:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert not new.exists(), (args[0], sorted(new.rglob("*")))
    # What existed stays: an empty folder, and a folder holding a file (an unfinished job's state).
    empty, kept = tmp_path / "empty", tmp_path / "kept"
    empty.mkdir()
    kept.mkdir()
    (kept / "extract.json").write_text("{}")
    for out in (empty, kept):
        result = runner.invoke(app, ["search", "--checkpoint", absent, "--query", images, "--gallery", images,
                                     "--out", str(out)])
        assert result.exit_code == 2, result.output
    assert empty.is_dir() and (kept / "extract.json").read_text() == "{}"


def assert_plain_progress(output: str, *expected: str) -> None:
    """No progress-bar fragments (escape codes, carriage returns, bars beside a rate), and the plain lines."""
    assert "\x1b" not in output and "\r" not in output
    rate_lines = [line for line in output.splitlines() if "/s" in line]
    assert rate_lines and not any("━" in line or "eta" in line for line in rate_lines), output
    for line in expected:
        assert line in output, (line, output)


# ---------------------------------------------------------------------------------------------- help and names
COMMANDS = ("train", "eval", "prepare", "demo", "extract", "search", "export")


def help_text(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def help_row(text: str, flag: str) -> str:
    """The help row of ``flag`` with its wrapped continuation lines, spaces collapsed."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip("│ ").startswith(flag + " "))
    row = [lines[start]]
    for line in lines[start + 1 :]:
        if line.lstrip("│ ").startswith("--") or not line.startswith("│"):
            break
        row.append(line)
    return " ".join(" ".join(row).replace("│", " ").split())


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_true_for_each_command(command: str) -> None:
    text = help_text(command)
    assert "<bool>" not in text and "Show this message and exit." in help_row(text, "--help")
    assert "3333333" not in text and "--no-no-" not in text and "--flip-eval" not in text
    if command != "demo":
        config_help = help_row(text, "--config")
        assert ("config.json" in config_help) == (command == "train"), config_help
        example = config_help.split("(e.g. ")[1].split(")")[0]
        assert "=" in example and (example.startswith("[") or " " not in example.split("=")[0].strip())
    if "--workers" in text:
        assert "[default: 4]" in help_row(text, "--workers")
    # Help prose names other options ("--backbone-lr-mult of it"): each one named must be an option of the command.
    options = {o for p in typer.main.get_command(app).commands[command].params for o in p.opts + p.secondary_opts}
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)) - options == {"--help"}
    if command in ("train", "eval", "prepare", "extract"):
        flags = ["--source", "--target"] if command == "train" else ["--dataset"]
        for flag in flags:
            assert all(name in help_row(text, flag) for name in ("market1501", "dukemtmc", "msmt17", "dukemtmcreid"))


def test_help_shows_what_an_unset_default_means_and_names_of_d1() -> None:
    train = help_text("train")
    assert "one pass over the source" in help_row(train, "--iters-per-epoch")
    assert "[default: (--batch-size)]" in help_row(train, "--target-batch-size")
    assert "0.1 after layer1" in help_row(train, "--snr-weight")
    assert "[default: 0.333]" in help_row(train, "--rsc-spatial")
    assert "[default: 40]" in help_row(train, "--lr-steps") and "[default: 0.1]" in help_row(train, "--lr-gamma")
    assert "--no-flip" in help_row(train, "--flip")
    assert help_row(train, "--no-target").split()[:2] == ["--no-target", "Domain"]  # one-way: no second form
    assert help_row(train, "--source-only").split()[:2] == ["--source-only", "Train"]
    assert "--target-batch-size" not in help_row(help_text("eval"), "--batch-size")
    resume = help_row(help_text("prepare"), "--resume")
    assert "--work-dir" in resume and "_stargan" in help_row(help_text("prepare"), "--work-dir")
    weights = help_row(help_text("demo"), "--weights")
    assert "download" not in weights and "lr 0.1" in weights and "frozen" in weights


def test_version() -> None:
    from ecnreid import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"ecnreid {__version__}"


def test_no_target_and_source_only_are_one_way_switches(monkeypatch) -> None:
    assert captured_train_config(monkeypatch, [*REQUIRED, "--no-target"]).ecn.no_target
    assert captured_train_config(monkeypatch, [*REQUIRED, "--source-only"]).ecn.source_only
    for flag in ("--no-no-target", "--no-source-only", "--flip-eval", "--lr-step"):
        assert runner.invoke(app, ["train", *REQUIRED, flag]).exit_code == 2, flag
    config = captured_train_config(monkeypatch, [*REQUIRED, "--flip", "--lr-steps", "20,40", "--lr-gamma", "0.5"])
    assert config.evaluation.flip and config.optim.lr_steps == (20, 40) and config.optim.lr_gamma == 0.5
    assert_one_line_error(runner.invoke(app, ["train", *REQUIRED, "--lr-steps", "20,x"]), "--lr-steps 20,x")


COMMAND_RUNS = {
    "eval": ("ecnreid.inference.evaluate.run_eval", ["--dataset", "market1501", "--root", "m"]),
    "prepare": ("camstyle.prepare.run_prepare", ["--dataset", "market1501", "--root", "m"]),
    "extract": ("ecnreid.inference.extract.run_extract", ["--checkpoint", "c.pt", "--out", "f", "--images", "i"]),
    "search": ("ecnreid.inference.search.run_search", ["--checkpoint", "c.pt", "--query", "q", "--gallery", "g"]),
    "export": ("ecnreid.inference.export.run_export", ["--checkpoint", "c.pt", "--out", "m.onnx"]),
}
COMMAND_TOML = {
    "eval": "[evaluation]\nflip = true\n",
    "prepare": "method = \"colour\"\n",
    "extract": "[features]\nflip = true\n",
    "search": "top_k = 3\n",
    "export": "format = \"torchscript\"\n",
}


@pytest.mark.parametrize("command", sorted(COMMAND_RUNS))
def test_each_commands_config_file_gives_settings_and_an_unknown_one_names_the_file(
    command: str, monkeypatch, tmp_path: Path
) -> None:
    target, required = COMMAND_RUNS[command]
    seen = []
    monkeypatch.setattr(target, lambda config: seen.append(config) or {})
    monkeypatch.setattr("camstyle.prepare.render_prepare_summary", lambda summary: "")
    path = tmp_path / "settings.toml"
    path.write_text(COMMAND_TOML[command])
    result = runner.invoke(app, [command, "--config", str(path), *required])
    assert result.exit_code == 0, result.output
    from ecnreid.config import config_to_dict

    settings = config_to_dict(seen[0])
    sections = [section for section in settings.values() if isinstance(section, dict)]
    flat = {**settings, **{k: v for section in sections for k, v in section.items()}}
    key, value = COMMAND_TOML[command].splitlines()[-1].split(" = ")
    assert flat[key] == json.loads(value), (key, flat)
    # A run's config.json (a training run's settings) is not this command's: one line naming the file.
    run_json = tmp_path / "config.json"
    run_json.write_text(json.dumps({"dg": {"rsc": True}, "provenance": {}}))
    result = runner.invoke(app, [command, "--config", str(run_json), *required])
    assert_one_line_error(result, f"--config {run_json}", "unknown setting 'dg'", "valid:")
    if command != "export":  # export's settings have no sections
        assert "; sections: [" in result.output


def test_train_takes_the_config_json_a_run_wrote(two_domains, tmp_path: Path, monkeypatch) -> None:
    from ecnreid.config import TrainConfig, config_from_dict, load_config_file

    source, target = two_domains
    out = tmp_path / "run"
    result = runner.invoke(app, tiny_train_args(source, target, out, "--no-camera", "--no-pretrained", "--lr", "0.02"))
    assert result.exit_code == 0, result.output
    recorded = config_from_dict(TrainConfig, load_config_file(out / "config.json"))
    again = captured_train_config(monkeypatch, ["--config", str(out / "config.json")])
    assert again == recorded and again.optim.lr == 0.02 and again.out == out
    # Redirected output (here the runner's, not a terminal) has plain progress lines, not bar fragments.
    assert_plain_progress(result.output, "epoch 1/1: 2/2 (100%)", "query features: 9/9 (100%)")


def test_workers_are_capped_at_the_usable_cpus_with_one_notice(monkeypatch) -> None:
    import ecnreid.workers

    monkeypatch.setattr(ecnreid.workers, "usable_cpus", lambda: 2)
    monkeypatch.setattr(ecnreid.workers, "_announced", set())
    seen = []
    monkeypatch.setattr("ecnreid.inference.evaluate.run_eval", lambda config: seen.append(config))
    args = ["eval", "--dataset", "market1501", "--root", "m"]
    for _ in range(2):
        result = runner.invoke(app, [*args, "--workers", "8"])
        assert result.exit_code == 0, result.output
    assert [config.input.workers for config in seen] == [2, 2]
    assert " ".join(result.output.split()) == ""  # the notice is said once per process
    result = runner.invoke(app, [*args, "--workers", "1"])
    assert seen[-1].input.workers == 1 and result.output == ""
    result = runner.invoke(app, args)  # the default 4, capped without a word (errors stay one line)
    assert seen[-1].input.workers == 2 and result.output == ""
    monkeypatch.setattr(ecnreid.workers, "_announced", set())
    result = runner.invoke(app, [*args, "--workers", "8"])
    assert result.output.strip() == "--workers 8: this process may use 2 CPUs; using 2 worker processes"


def test_only_the_process_with_a_summary_prints_the_results_table(monkeypatch) -> None:
    import ecnreid.training

    monkeypatch.setattr(ecnreid.training, "train", lambda config: {})  # a torchrun rank other than 0
    monkeypatch.setattr("ecnreid.inference.evaluate.render_train_summary", lambda summary: "RESULTS TABLE")
    result = runner.invoke(app, ["train", *REQUIRED])
    assert result.exit_code == 0 and "RESULTS TABLE" not in result.output
    monkeypatch.setattr(ecnreid.training, "train", lambda config: {"final": {}})
    assert "RESULTS TABLE" in runner.invoke(app, ["train", *REQUIRED]).output
