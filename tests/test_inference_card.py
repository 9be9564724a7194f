"""The model card: what a checkpoint tells a user of the adapted model, its JSON round trip, checkpoints
written before cards, and the generic card of a method that does not describe its feature itself."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from inference_checkpoint import train_tiny_checkpoint
from typer.testing import CliRunner

from ecnreid.cli import app
from ecnreid.config import DomainsConfig, ModelConfig, TrainConfig, override
from ecnreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ecnreid.errors import EcnreidError
from ecnreid.inference.adapted import load_adapted_model
from ecnreid.inference.card import (
    CARD_VERSION,
    ModelCard,
    card_from_checkpoint,
    ecnreid_version,
    read_card_json,
    write_card_json,
)
from ecnreid.methods.base import Method, RunContext
from ecnreid.models.backbones import build_backbone
from ecnreid.models.pooled import PooledBackbone

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_tiny_checkpoint(tmp_path_factory.mktemp("card"))


def test_the_checkpoint_carries_a_card_of_the_final_epoch(tiny) -> None:
    checkpoint, _ = tiny
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    card = ModelCard.from_dict(state["card"], str(checkpoint))
    assert (card.arch, card.input_size, card.feature_dim) == ("resnet18", (32, 16), 512)
    assert card.mean == IMAGENET_MEAN and card.std == IMAGENET_STD and card.channels == "RGB"
    assert "pool5" in card.feature and "L2" in card.feature
    assert (card.method, card.setting, card.source, card.target) == ("ecn", "+E+N", "synthetic", "synthetic")
    assert (card.epoch, card.epochs) == (1, 1)
    # The loop evaluates after the last epoch, so the card of the last checkpoint has the final scores.
    assert card.metrics is not None and card.metrics["epoch"] == 1 and 0 <= card.metrics["mAP"] <= 100
    assert card.metrics == {k: v for k, v in state["history"][-1].items() if k in card.metrics}
    assert card.ecnreid_version == ecnreid_version() and not card.derived_from_config
    assert card.details["backbone_weights"] == {"kind": "random"}


def test_card_round_trip_through_json(tiny, tmp_path: Path) -> None:
    checkpoint, _ = tiny
    card = load_adapted_model(checkpoint).card
    write_card_json(card, tmp_path / "card.json")
    assert read_card_json(tmp_path / "card.json") == card
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict())), "x") == card


def test_cards_that_cannot_be_read_are_one_line_errors(tmp_path: Path) -> None:
    card = ModelCard("resnet18", 32, 16, "pool5", 512, "ecn", "a", "b", 1, 1)
    data = card.to_dict()
    with pytest.raises(EcnreidError, match="lacks 'feature_dim'"):
        ModelCard.from_dict({k: v for k, v in data.items() if k != "feature_dim"}, "c.json")
    with pytest.raises(EcnreidError, match="newer"):
        ModelCard.from_dict({**data, "card_version": CARD_VERSION + 1}, "c.json")
    assert ModelCard.from_dict({**data, "added_later": 1}, "c.json") == card  # unknown fields are ignored
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(EcnreidError, match="bad.json"):
        read_card_json(tmp_path / "bad.json")


def test_a_checkpoint_without_a_card_gets_one_from_its_config(tiny, tmp_path: Path) -> None:
    checkpoint, _ = tiny
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    written = ModelCard.from_dict(state.pop("card"), "x")
    old = tmp_path / "old.pt"
    torch.save(state, old)
    derived = load_adapted_model(old).card
    assert derived.derived_from_config and derived.ecnreid_version == "unknown"
    same = dataclasses.replace(derived, derived_from_config=False, ecnreid_version=written.ecnreid_version)
    assert same == dataclasses.replace(written, details={"model": written.details["model"]})


def test_an_ecn_card_without_the_rebuild_record_gets_it_from_the_config(tiny, tmp_path: Path) -> None:
    checkpoint, _ = tiny
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state["card"]["details"].pop("model")  # as cards were first written
    earlier = tmp_path / "earlier.pt"
    torch.save(state, earlier)
    adapted, current = load_adapted_model(earlier), load_adapted_model(checkpoint)
    assert adapted.card == current.card and not adapted.card.derived_from_config
    images = torch.rand(2, 3, 32, 16)
    assert torch.allclose(adapted.network(images), current.network(images))


def test_a_checkpoint_without_a_card_or_a_usable_config_is_a_one_line_error(tiny, tmp_path: Path) -> None:
    checkpoint, _ = tiny
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    del state["card"]
    state["config"] = {**state["config"], "renamed_section": {}}
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    with pytest.raises(EcnreidError, match="no model card"):
        card_from_checkpoint(state, broken, feature_dim=512)
    result = runner.invoke(app, ["export", "--checkpoint", str(broken), "--out", str(tmp_path / "m.pt"),
                                 "--format", "torchscript"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no model card" in result.output and "re-save it" in result.output
    assert result.output.strip().startswith("error:") and not (tmp_path / "m.pt").exists()


class PooledOnly(Method):
    """A method that leaves its card to the default: it only has a model."""

    uses_target = False

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config, None, RunContext(torch.device("cpu")))  # type: ignore[arg-type]
        self.model = PooledBackbone(build_backbone("resnet18", pretrained=False))

    def parameter_groups(self):  # pragma: no cover - never trained
        return []

    def step(self, network, x, u, epoch):  # pragma: no cover - never trained
        raise NotImplementedError


def test_the_default_method_card_measures_the_eval_feature_once_and_keeps_the_mode(tmp_path: Path) -> None:
    config = TrainConfig(domains=DomainsConfig("a", tmp_path, "b", tmp_path), model=ModelConfig(pretrained=False))
    method = PooledOnly(override(config, height=32, width=16))
    method.model.train()
    card = method.model_card()
    assert card.feature_dim == 512 and "L2" in card.feature and card.setting is None
    assert method.model.training
    method.model = None  # a second call does not run the model again
    assert method.model_card().feature_dim == 512
