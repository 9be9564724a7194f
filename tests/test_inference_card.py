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
    final_metrics,
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


def test_card_from_checkpoint_reads_the_stored_card_as_written(tiny) -> None:
    checkpoint, _ = tiny
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    card = card_from_checkpoint(state, checkpoint, feature_dim=512)
    assert card == ModelCard.from_dict(state["card"], "x") and not card.derived_from_config
    assert card.details["backbone_weights"] == {"kind": "random"}
    state["card"] = {k: v for k, v in state["card"].items() if k != "arch"}
    with pytest.raises(EcnreidError, match=rf"^{checkpoint}: model card lacks 'arch'$"):
        card_from_checkpoint(state, checkpoint, feature_dim=512)


def test_a_derived_card_of_a_checkpoint_without_an_epoch_counts_zero_epochs(tiny, tmp_path: Path) -> None:
    checkpoint, _ = tiny
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    del state["card"], state["epoch"]
    state["history"] = []
    card = card_from_checkpoint(state, tmp_path / "old.pt", feature_dim=512)
    assert (card.epoch, card.epochs, card.metrics) == (0, 1, None) and card.derived_from_config


def test_card_less_checkpoints_that_cannot_be_derived_name_the_remedy(tiny, tmp_path: Path) -> None:
    checkpoint, _ = tiny
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    del state["card"]
    other = {**state, "config": {**state["config"], "method": "other"}}
    with pytest.raises(EcnreidError) as info:
        card_from_checkpoint(other, tmp_path / "o.pt", feature_dim=512)
    assert str(info.value) == (f"{tmp_path / 'o.pt'}: no model card, and a 'other' checkpoint needs one; retrain it "
                               "with this ecnreid version")
    broken = {**state, "config": {**state["config"], "renamed_section": {}}}
    with pytest.raises(EcnreidError) as info:
        card_from_checkpoint(broken, tmp_path / "b.pt", feature_dim=512)
    assert str(info.value).endswith("re-save it by training with this ecnreid version (a run still under way "
                                    "writes a card at its next epoch with --resume)")


def test_ecnreid_version_is_the_installed_one_or_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    assert ecnreid_version() == importlib.metadata.version("ecnreid")

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert ecnreid_version() == "unknown"


def test_final_metrics_of_no_history_or_an_unevaluated_epoch_are_none() -> None:
    assert final_metrics([]) is None
    assert final_metrics([{"epoch": 1, "rank1": 50.0}, {"epoch": 2, "loss_total": 1.0}]) is None
    row = {"epoch": 2, "rank1": 50.0, "rank5": 60.0, "mAP": 30.0, "loss_total": 1.0}
    assert final_metrics([{"epoch": 1}, row]) == {"epoch": 2, "rank1": 50.0, "rank5": 60.0, "mAP": 30.0}


def minimal_card_fields() -> dict[str, object]:
    """Only the fields a card must have (no defaults, no card_version)."""
    return {"arch": "resnet18", "input_height": 32, "input_width": 16, "feature": "pool5", "feature_dim": 512,
            "method": "ecn", "source": "a", "target": "b", "epoch": 0, "epochs": 3}


def test_to_dict_gives_every_field_once_with_lists_for_the_normalisation() -> None:
    card = ModelCard(**minimal_card_fields())  # type: ignore[arg-type]
    data = card.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(ModelCard)}
    assert data["mean"] == list(IMAGENET_MEAN) and data["std"] == list(IMAGENET_STD)
    assert type(data["mean"]) is list and type(data["std"]) is list


def test_a_card_with_only_its_required_fields_and_no_version_is_read() -> None:
    card = ModelCard.from_dict(minimal_card_fields(), "c.json")
    assert card == ModelCard(**minimal_card_fields())  # type: ignore[arg-type]
    assert card.card_version == CARD_VERSION and card.epoch == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "c.json: model card is not a table of fields"),
        ({"card_version": CARD_VERSION + 1}, f"c.json: model card version {CARD_VERSION + 1} is newer than this "
                                            f"ecnreid reads ({CARD_VERSION}); upgrade ecnreid"),
        ({"arch": "x"}, "c.json: model card lacks 'input_height', 'input_width', 'feature', 'feature_dim', "
                        "'method', 'source', 'target', 'epoch', 'epochs'"),
        ({**minimal_card_fields(), "epoch": -1}, "c.json: model card field 'epoch' is -1, not a count"),
        ({**minimal_card_fields(), "feature_dim": True}, "c.json: model card field 'feature_dim' is True, not a count"),
        ({**minimal_card_fields(), "input_width": 1.5}, "c.json: model card field 'input_width' is 1.5, not a count"),
    ],
)
def test_card_fields_that_cannot_be_read_are_named(data: object, message: str) -> None:
    with pytest.raises(EcnreidError) as info:
        ModelCard.from_dict(data, "c.json")
    assert str(info.value) == message


def test_card_json_files_that_cannot_be_read_name_the_file_and_what_was_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def message(path: Path) -> str:
        with pytest.raises(EcnreidError) as info:
            read_card_json(path)
        return str(info.value)

    expected = "expected the card.json that `ecnreid extract` writes beside its features"
    assert message(tmp_path / "none.json") == f"{tmp_path / 'none.json'}: model card not found"
    assert message(tmp_path) == f"{tmp_path}: cannot read the model card (Is a directory)"
    (tmp_path / "bad.json").write_text("{")
    assert message(tmp_path / "bad.json").startswith(f"{tmp_path / 'bad.json'}: not a model card (not JSON: ")
    assert message(tmp_path / "bad.json").endswith(f"); {expected}")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    binary = f"{tmp_path / 'binary.json'}: not a model card (not a text file); {expected}"
    assert message(tmp_path / "binary.json") == binary
    (tmp_path / "short.json").write_text(json.dumps({"arch": "x", **{k: v for k, v in minimal_card_fields().items()
                                                                     if k != "epochs"}}))
    assert message(tmp_path / "short.json") == f"{tmp_path / 'short.json'}: model card lacks 'epochs'"

    def unreadable(self: Path) -> str:
        raise OSError("no reason given")

    monkeypatch.setattr(Path, "read_text", unreadable)
    assert message(tmp_path / "card.json") == f"{tmp_path / 'card.json'}: cannot read the model card (read error)"


def test_the_rebuild_record_of_an_ecn_card_comes_from_the_config_only_when_the_card_lacks_it() -> None:
    bare = minimal_card_fields()
    config = {"model": {"last_stride": 1}, "dg": {"mixstyle": ["layer1"]}}
    card = card_from_checkpoint({"card": bare, "config": config}, Path("old.pt"))
    assert card.details == {"model": {"last_stride": 1, "dg": {"mixstyle": ["layer1"]}}}
    # A config without the sections gives the defaults the first cards were trained with.
    assert card_from_checkpoint({"card": bare}, Path("old.pt")).details == {"model": {"last_stride": 2, "dg": {}}}
    assert card_from_checkpoint({"card": bare, "config": {"model": {}}}, Path("old.pt")).details["model"] == {
        "last_stride": 2, "dg": {}
    }
    # A card that has the record keeps it, and another method's card is read as written.
    recorded = {**bare, "details": {"model": {"last_stride": 2, "dg": {}}}}
    assert card_from_checkpoint({"card": recorded, "config": config}, Path("new.pt")).details == recorded["details"]
    spcl = {**bare, "method": "spcl"}
    assert card_from_checkpoint({"card": spcl, "config": config}, Path("spcl.pt")).details == {}
