"""The configuration tree: validation in the dataclasses, JSON/TOML round trips, overrides by field name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ecnreid.config import (
    DGConfig,
    DomainsConfig,
    ECNConfig,
    EvalConfig,
    InputConfig,
    ModelConfig,
    OptimConfig,
    PrepareConfig,
    StarGANConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config_file,
    override,
    section,
)
from ecnreid.errors import EcnreidError
from ecnreid.methods import resolve_method


def train_config(**settings) -> TrainConfig:
    config = TrainConfig(domains=DomainsConfig("dukemtmc", Path("d"), "market1501", Path("m")))
    return override(config, **settings)


def test_defaults_are_the_published_setting() -> None:
    config = train_config()
    assert config.model.arch == "resnet50" and config.model.pretrained
    assert (config.input.height, config.input.width, config.input.batch_size) == (256, 128, 128)
    assert (config.optim.epochs, config.optim.lr, config.optim.lr_steps, config.optim.backbone_lr_mult) == (
        60,
        0.1,
        (40,),
        0.1,
    )
    assert (config.ecn.lam, config.ecn.beta, config.ecn.k, config.ecn.neighbour_start_epoch) == (0.3, 0.05, 6, 5)
    assert config.ecn.setting_name == "+E+C+N" and not config.dg.any


@pytest.mark.parametrize(
    ("build", "flag"),
    [
        (lambda: ECNConfig(knn="annoy"), "--knn"),
        (lambda: ECNConfig(memory_init="random"), "--memory-init"),
        (lambda: ECNConfig(source_only=True, no_target=True), "--source-only and --no-target"),
        (lambda: ECNConfig(lam=1.5), "--lambda"),
        (lambda: OptimConfig(epochs=0), "--epochs"),
        (lambda: ModelConfig(arch="vgg16"), "--arch"),
        (lambda: DGConfig(mixstyle_mix="swap"), "--mixstyle-mix"),
        (lambda: DGConfig(rsc_batch=0.0), "--rsc-batch"),
        (lambda: StarGANConfig(image_size=(100, 50)), "--image-size"),
        (lambda: PrepareConfig(dataset="market1501", root=Path("m"), method="cyclegan"), "--method"),
        (
            lambda: resolve_method(
                train_config(mixstyle_stages=("layer1",), mixstyle_mix="crossdomain", no_target=True)
            ),
            "crossdomain",
        ),
    ],
)
def test_a_library_user_gets_the_checks_of_the_command_line(build, flag: str) -> None:
    with pytest.raises(EcnreidError, match=flag):
        build()


def test_a_config_round_trips_through_json(tmp_path: Path) -> None:
    config = train_config(lr=0.01, snr_stages=("layer1", "layer2"), camstyle_dir=Path("c"), iters_per_epoch=100)
    path = tmp_path / "config.json"
    record = {**config_to_dict(config), "provenance": {"setting": "+E+C+N"}, "signature": {"arch": "resnet50"}}
    path.write_text(json.dumps(record))
    assert config_from_dict(TrainConfig, load_config_file(path)) == config


def test_a_toml_file_gives_part_of_the_tree(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        '[domains]\nsource = "dukemtmc"\nsource_root = "d"\ntarget = "market1501"\ntarget_root = "m"\n'
        '[optim]\nlr = 0.01\nepochs = 10\n[dg]\nmixstyle_stages = ["layer1", "layer2"]\n'
    )
    config = config_from_dict(TrainConfig, load_config_file(path))
    assert config.optim.lr == 0.01 and config.optim.epochs == 10 and config.dg.mixstyle_stages == ("layer1", "layer2")
    assert config.optim.lr_steps == (40,)  # untouched settings keep their defaults
    assert config.domains.source_root == Path("d")


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ("[optim]\nlearning_rate = 0.1\n", ".toml", "unknown setting 'learning_rate'"),
        ("[optim\n", ".toml", "not a valid TOML"),
        ("{}", ".yaml", "must be a .toml or .json"),
        ('{"optim": 3}', ".json", "expected a table"),
    ],
)
def test_a_bad_config_file_is_a_one_line_error(tmp_path: Path, text: str, suffix: str, message: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    with pytest.raises(EcnreidError, match=message):
        config_from_dict(TrainConfig, load_config_file(path))


def test_override_finds_fields_by_name_and_refuses_ambiguity() -> None:
    config = override(train_config(), lr=0.02, use_camera=False, every=0)
    assert config.optim.lr == 0.02 and not config.ecn.use_camera and config.evaluation.every == 0
    with pytest.raises(ValueError, match="no section"):
        override(config, learning_rate=1.0)
    both = override(EvalConfig(dataset="market1501", root=Path("m")), model=ModelConfig(arch="resnet18"))
    assert both.model.arch == "resnet18"


@dataclasses.dataclass(frozen=True)
class NarrowInputTree:
    input: InputConfig = section(lambda: InputConfig(workers=1), "Input")


def test_a_partial_section_keeps_the_defaults_its_tree_gives_it() -> None:
    config = config_from_dict(NarrowInputTree, {"input": {"batch_size": 64}})
    assert config.input.batch_size == 64 and config.input.workers == 1  # the tree's default, not the section's 4
    assert config_from_dict(EvalConfig, {"dataset": "m", "root": "m"}).input.workers == 4


def test_the_single_learning_rate_step_of_earlier_versions_loads_as_milestones(tmp_path: Path) -> None:
    path = tmp_path / "old.toml"
    domains = '[domains]\nsource = "d"\nsource_root = "d"\ntarget = "m"\ntarget_root = "m"\n'
    path.write_text(domains + "[optim]\nlr_step = 8\n")
    config = config_from_dict(TrainConfig, load_config_file(path))
    assert config.optim.lr_steps == (8,) and config.optim.lr_gamma == 0.1
    from ecnreid.config import train_config_from_record

    record = config_to_dict(config)
    record["optim"] = {k: v for k, v in record["optim"].items() if k not in ("lr_steps", "lr_gamma")} | {"lr_step": 8}
    assert train_config_from_record(record) == config
    flat = {"source": "d", "source_root": "d", "target": "m", "target_root": "m", "lr_step": 8}
    assert train_config_from_record(flat).optim.lr_steps == (8,)
    steps = override(config, lr_steps=(20, 40), lr_gamma=0.5).optim
    assert (steps.lr_steps, steps.lr_gamma) == ((20, 40), 0.5)
    for bad in ((40, 20), (0,)):
        with pytest.raises(EcnreidError, match="--lr-steps"):
            OptimConfig(lr_steps=bad)


def test_an_unknown_setting_names_the_valid_settings_and_sections(tmp_path: Path) -> None:
    from ecnreid.config import check_setting_names

    with pytest.raises(EcnreidError) as info:
        check_setting_names(EvalConfig, {"dg": {}}, where="run.toml")
    message = str(info.value)
    assert message.startswith("run.toml: unknown setting 'dg'") and "checkpoint" in message
    assert "sections: [evaluation], [input], [model], [runtime]" in message
    with pytest.raises(EcnreidError, match=r"^run.toml \[input\]: unknown setting 'batch'"):
        check_setting_names(EvalConfig, {"input": {"batch": 3}}, where="run.toml")


def test_a_flat_config_of_an_earlier_version_reads_into_the_tree() -> None:
    from ecnreid.config import train_config_from_record

    flat = {
        "source": "dukemtmc",
        "source_root": "d",
        "target": "market1501",
        "target_root": "m",
        "model": {"arch": "mobilenet_v2", "weights": "w.pth", "pretrained": False},
        "dg": {"snr_stages": ["layer1"]},
        "lr": 0.01,
        "eval_every": 10,
        "flip_eval": True,
        "use_camera": False,
    }
    config = train_config_from_record(flat)
    assert config.domains.target_root == Path("m") and config.optim.lr == 0.01
    assert config.evaluation.every == 10 and config.evaluation.flip and not config.ecn.use_camera
    assert config.model.weights == Path("w.pth") and config.model.pretrained and config.dg.snr_stages == ("layer1",)
    with pytest.raises(EcnreidError, match="unknown setting 'learning_rate'"):
        train_config_from_record({**flat, "learning_rate": 1})
    assert train_config_from_record(config_to_dict(config)) == config
