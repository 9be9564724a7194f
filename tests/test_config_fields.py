"""The fields of the configuration tree: flags written once (help, options and messages read them from the field),
and the walk of a command's tree into options, which refuses two settings with one flag."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from ecnreid.config import (
    DGConfig,
    DomainsConfig,
    DuplicateFlagError,
    ECNConfig,
    InputConfig,
    ModelConfig,
    TrainConfig,
    flag_of,
    section,
    setting,
    setting_options,
)
from ecnreid.config.fields import require, require_one_of
from ecnreid.errors import EcnreidError


@dataclass(frozen=True)
class Knobs:
    k: int = setting(6, "Neighbours.", flag="--knob-k")
    mode: str = setting("a", "a or b.")
    fast: bool = setting(False, "Go fast.")
    no_cache: bool = setting(False, "Never cache.")

    def __post_init__(self) -> None:
        require(self, "k", self.k >= 1, "must be at least 1")
        require_one_of(self, "mode", ("a", "b"))


def test_a_message_names_the_flag_written_in_the_field() -> None:
    with pytest.raises(EcnreidError, match=r"^--knob-k 0: must be at least 1$"):
        Knobs(k=0)
    with pytest.raises(EcnreidError, match=r"^--mode c: expected one of a, b$"):
        Knobs(mode="c")
    assert flag_of(Knobs, "fast") == "--fast" and flag_of(Knobs, "fast", negative=True) == "--no-fast"
    assert flag_of(Knobs, "no_cache") == "--no-cache"  # a one-way switch
    with pytest.raises(ValueError, match="no off form"):
        flag_of(Knobs, "no_cache", negative=True)


@pytest.mark.parametrize(
    ("cls", "name", "flag"),
    [(ECNConfig, "lam", "--lambda"), (ECNConfig, "neighbour_start_epoch", "--neighbour-start"),
     (ECNConfig, "use_camera", "--camera"), (DGConfig, "mixstyle_stages", "--mixstyle"),
     (ModelConfig, "last_stride", "--last-stride")],
)
def test_the_flag_of_a_real_setting_is_the_one_its_option_has(cls: type, name: str, flag: str) -> None:
    assert flag_of(cls, name) == flag
    options = {option.path: option for option in setting_options(TrainConfig)}
    section_name = {ECNConfig: "ecn", DGConfig: "dg", ModelConfig: "model"}[cls]
    assert options[(section_name, name)].first_flag == flag


def test_validation_of_the_real_tree_names_the_options_flags() -> None:
    with pytest.raises(EcnreidError, match=r"^--neighbour-start -1: must not be negative$"):
        ECNConfig(neighbour_start_epoch=-1)
    with pytest.raises(EcnreidError, match=r"^--source-only and --no-target: choose one$"):
        ECNConfig(source_only=True, no_target=True)
    with pytest.raises(EcnreidError, match=r"^--height/--width 0x128: sizes must be positive$"):
        InputConfig(height=0)
    with pytest.raises(EcnreidError, match=r"^--weights PATH and --no-pretrained contradict each other"):
        ModelConfig(weights=Path("w.pth"), pretrained=False)


@dataclass(frozen=True)
class FirstSection:
    k: int = setting(6, "Neighbours of the first method.")


@dataclass(frozen=True)
class SecondSection:
    k: int = setting(30, "Neighbours of the second method.")


@dataclass(frozen=True)
class CollidingTree:
    first: FirstSection = section(FirstSection, "First")
    second: SecondSection = section(SecondSection, "Second")


def test_two_settings_with_one_flag_are_refused_loudly() -> None:
    with pytest.raises(DuplicateFlagError, match=r"--k is the flag of both first\.k and second\.k"):
        setting_options(CollidingTree)


def test_a_switch_off_form_colliding_with_another_setting_is_refused() -> None:
    @dataclass(frozen=True)
    class Switches:
        camera: bool = setting(True, "Camera invariance.")  # gives --camera/--no-camera
        no_camera: bool = setting(False, "Another setting whose flag is --no-camera.")

    with pytest.raises(DuplicateFlagError, match="--no-camera"):
        setting_options(Switches)


@dataclass(frozen=True)
class PrefixedSection:
    flag_prefix: ClassVar[str] = "second"
    k: int = setting(30, "Neighbours of the second method.")
    fast: bool = setting(False, "Go fast.")

    def __post_init__(self) -> None:
        require(self, "k", self.k >= 1, "must be at least 1")


@dataclass(frozen=True)
class PrefixedTree:
    first: FirstSection = section(FirstSection, "First")
    second: PrefixedSection = section(PrefixedSection, "Second")


def test_a_method_section_with_a_flag_prefix_does_not_collide() -> None:
    flags = {option.path: option.flag for option in setting_options(PrefixedTree)}
    assert flags[("first", "k")] == "--k" and flags[("second", "k")] == "--second-k"
    assert flags[("second", "fast")] == "--second-fast/--no-second-fast"
    with pytest.raises(EcnreidError, match=r"^--second-k 0: must be at least 1$"):
        PrefixedSection(k=0)


def test_the_walk_gives_paths_defaults_panels_and_required_settings() -> None:
    options = {option.path: option for option in setting_options(TrainConfig)}
    assert options[("domains", "source")].required and not options[("optim", "lr")].required
    assert options[("optim", "lr")].default == 0.1 and options[("optim", "lr")].panel == "Optimisation"
    assert options[("ecn", "use_camera")].flag == "--camera/--no-camera"
    assert options[("domains", "target_batch_size")].unset == "--batch-size"
    assert ("evaluation", "metric") not in {
        o.path for o in setting_options(TrainConfig, exclude=frozenset({"evaluation.metric"}))
    }


def test_a_tree_default_reaches_its_options() -> None:
    @dataclass(frozen=True)
    class NarrowTree:
        domains: DomainsConfig = section(lambda: DomainsConfig("d", Path("d"), "m", Path("m")), "Domains")

    options = {option.path: option for option in setting_options(NarrowTree)}
    assert options[("domains", "source")].default == "d" and not options[("domains", "source")].required
    assert dataclasses.fields(DomainsConfig)[0].default is dataclasses.MISSING
