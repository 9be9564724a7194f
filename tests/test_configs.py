"""The experiment configs in configs/ (one per README results row) and the scripts that run them.

Each file goes through the loader ``--config`` uses into the config class of its command, with only the
locations a user adds on the command line, so a renamed or misspelt setting fails here, not after hours.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from ecnreid.config import (
    SNR_PAPER_STAGES,
    EvalConfig,
    PrepareConfig,
    TrainConfig,
    config_from_dict,
    load_config_file,
    merge_settings,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# What a user adds on the command line: data and weights locations only (configs hold every other setting).
LOCATIONS = {
    TrainConfig: {
        "domains": {"source_root": "data/dukemtmc", "target_root": "data/market1501"},
        "model": {"weights": "weights.pth"},
    },
    EvalConfig: {"root": "data/market1501", "model": {"weights": "weights.pth"}},
    PrepareConfig: {"root": "data/market1501"},
}


def command_class(path: Path) -> type:
    """The config class of the command a config file is for, from its name."""
    if path.name.startswith("d2m_"):
        return TrainConfig
    if path.name == "market_no_training.toml":
        return EvalConfig
    if path.name.startswith("market_stargan"):
        return PrepareConfig
    raise AssertionError(f"{path.name}: name the command it is for in tests/test_configs.py")


def load(path: Path):
    cls = command_class(path)
    return config_from_dict(cls, merge_settings(load_config_file(path), LOCATIONS[cls]), where=str(path))


CONFIG_FILES = sorted(CONFIGS.glob("*.toml"))


def test_there_are_configs() -> None:
    assert len(CONFIG_FILES) >= 10


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_loads_into_its_command(path: Path) -> None:
    config = load(path)
    if isinstance(config, TrainConfig):
        # The CPU recipe every Duke -> Market row shares.
        assert (config.domains.source, config.domains.target) == ("dukemtmc", "market1501")
        assert (config.model.arch, config.input.height, config.input.width) == ("mobilenet_v2", 128, 64)
        assert (config.input.batch_size, config.optim.iters_per_epoch) == (32, 100)
        assert config.optim.lr == 0.01 or config.method == "spcl"  # SpCL's Adam has its own --spcl-lr


def test_the_rows_differ_only_in_what_their_names_say() -> None:
    rows = {path.stem: load(path) for path in CONFIG_FILES if path.name.startswith("d2m_cpu_")}
    base = rows["d2m_cpu_source_only"]
    assert base.ecn.source_only and base.optim.lr_steps == (8,) and base.optim.backbone_lr_mult == 1.0
    assert not rows["d2m_cpu_E"].ecn.use_camera and not rows["d2m_cpu_E"].ecn.use_neighbour
    assert not rows["d2m_cpu_EN"].ecn.use_camera and rows["d2m_cpu_EN"].ecn.use_neighbour
    assert rows["d2m_cpu_ECN"].ecn.uses_target and rows["d2m_cpu_ECN"].ecn.use_camera
    for name in ("dg_baseline", "mixstyle", "snr", "rsc"):
        dg_row = rows[f"d2m_cpu_{name}"]
        assert dg_row.ecn.no_target and dg_row.optim.backbone_lr_mult == 0.1
    assert rows["d2m_cpu_mixstyle"].dg.mixstyle_stages == ("layer1", "layer2")
    # SNR in its paper's re-ID setting: after all four stages, with the paper's per-stage weights.
    assert rows["d2m_cpu_snr"].dg.snr_stages == SNR_PAPER_STAGES and rows["d2m_cpu_snr"].dg.snr_weight is None
    assert rows["d2m_cpu_rsc"].dg.rsc
    budget = load(CONFIGS / "d2m_budget_ECN.toml")
    assert (budget.optim.epochs, budget.optim.lr_steps, budget.ecn.neighbour_start_epoch) == (60, (40,), 5)
    # The capture set's run is the colour run's recipe; only the CamStyle set given on the command line differs.
    assert load(CONFIGS / "d2m_budget_ECN_capture.toml") == budget
    spcl = load(CONFIGS / "d2m_budget_spcl.toml")
    # the authors' drops after 40 % and 80 % of the steps, 8 identities x 4 images on each side
    assert (spcl.method, spcl.optim.epochs, spcl.spcl.lr_step, spcl.spcl.instances) == ("spcl", 60, 24, 4)
    assert spcl.domains.target_batch_size is None and spcl.spcl.adam_lr == 3.5e-4


def test_the_readme_and_docs_name_only_configs_that_exist() -> None:
    named = set()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named |= set(re.findall(r"configs/([\w.-]+\.toml)", page.read_text()))
    assert named, "the README names the configs of its rows"
    assert {name for name in named if not (CONFIGS / name).is_file()} == set()
    # ...and every config is one a page names (no orphan settings).
    assert {path.name for path in CONFIG_FILES} <= named


def run_script(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "experiments" / script), *args],
        env={**os.environ, "ECNREID": "echo", **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def locations(tmp_path: Path) -> dict[str, str]:
    for dataset in ("dukemtmc", "market1501"):
        (tmp_path / "data" / dataset).mkdir(parents=True)
    (tmp_path / "weights.pth").write_bytes(b"")
    return {
        "ECNREID_DATA": str(tmp_path / "data"),
        "ECNREID_WEIGHTS": str(tmp_path / "weights.pth"),
        "ECNREID_RUNS": str(tmp_path / "runs"),
    }


@pytest.mark.parametrize(
    ("script", "settings"),
    [
        ("duke2market_cpu.sh", ["source-only", "E", "EN", "ECN-colour", "ECN-stargan", "dg-baseline", "mixstyle",
                                "snr", "rsc"]),
        ("duke2market_budget.sh", ["source-only", "ECN", "EC", "ECN-capture", "spcl"]),
    ],
)
def test_scripts_train_from_the_configs_with_the_documented_locations(
    script: str, settings: list[str], locations: dict[str, str]
) -> None:
    result = run_script(script, *settings, env=locations)
    assert result.returncode == 0, result.stderr
    trains = [line.split() for line in result.stdout.splitlines() if line.startswith("train ")]
    assert len(trains) == len(settings)
    for words in trains:
        config = Path(words[words.index("--config") + 1])
        assert config.parent == CONFIGS and config.is_file()
        assert words[words.index("--weights") + 1] == locations["ECNREID_WEIGHTS"]
        assert words[words.index("--source-root") + 1] == str(Path(locations["ECNREID_DATA"]) / "dukemtmc")
        assert words[words.index("--out") + 1].startswith(locations["ECNREID_RUNS"])


@pytest.mark.parametrize("script", ["duke2market_cpu.sh", "duke2market_budget.sh"])
def test_scripts_stop_in_one_line_naming_the_missing_variable(
    script: str, locations: dict[str, str], tmp_path: Path
) -> None:
    no_weights = {**locations, "ECNREID_WEIGHTS": ""}
    result = run_script(script, "source-only", env=no_weights)
    assert result.returncode == 2 and result.stdout == ""
    assert "ECNREID_WEIGHTS" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    no_data = {**locations, "ECNREID_DATA": str(tmp_path / "nowhere")}
    result = run_script(script, "source-only", env=no_data)
    assert result.returncode == 2 and "ECNREID_DATA" in result.stderr and "dukemtmc/" in result.stderr
    result = run_script(script, "no-such-setting", env=locations)
    assert result.returncode == 2 and "unknown" in result.stderr


def test_the_capture_run_trains_on_the_set_it_makes_with_the_capture_method(locations: dict[str, str]) -> None:
    result = run_script("duke2market_budget.sh", "ECN-capture", env=locations)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    (prepare,) = [words for words in lines if words[0] == "prepare"]
    (train,) = [words for words in lines if words[0] == "train"]
    assert prepare[prepare.index("--method") + 1] == "capture"
    assert prepare[prepare.index("--out") + 1] == train[train.index("--camstyle-dir") + 1]
    assert Path(train[train.index("--config") + 1]).name == "d2m_budget_ECN_capture.toml"
