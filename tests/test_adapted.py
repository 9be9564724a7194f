"""The adapted model of a checkpoint (``ecnreid.inference.adapted``): what loading gives, each way a checkpoint
cannot be used, and the features of an image list batch by batch with the card's input."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ecnreid.config import DGConfig, DomainsConfig, ModelConfig, TrainConfig, config_to_dict, override
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError
from ecnreid.inference.adapted import AdaptedModel, _first_line, iter_features, load_adapted_model
from ecnreid.inference.card import ECN_FEATURE, MethodCard, ModelCard, build_card
from ecnreid.methods import METHODS
from ecnreid.models.factory import build_ecn_model
from ecnreid.runstate import CHECKPOINT_EXPECTED


def checkpoint_state(tmp_path: Path, **card_changes: object) -> dict:
    """A checkpoint as training writes it, of an untrained ResNet-18 ECN model at 32x16 (no training needed)."""
    model_config = ModelConfig(arch="resnet18", pretrained=False, embedding_dim=16)
    config = override(TrainConfig(domains=DomainsConfig("a", tmp_path, "b", tmp_path), model=model_config),
                      height=32, width=16, epochs=2)
    torch.manual_seed(0)
    model = build_ecn_model(model_config, DGConfig(), 4)
    card = build_card(config, MethodCard(ECN_FEATURE, 512, "+E+N"), [], 2)
    return {"model": model.state_dict(), "config": config_to_dict(config), "signature": {"num_source_classes": 4},
            "card": {**card.to_dict(), **card_changes}, "epoch": 2,
            "numpy_rng": np.random.default_rng(0).bit_generator, "path": Path("runs")}  # not plain tensors


def save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def error_of(path: Path, option: str = "--checkpoint") -> str:
    with pytest.raises(EcnreidError) as info:
        load_adapted_model(path) if option == "--checkpoint" else load_adapted_model(path, option)
    return str(info.value)


def test_loading_gives_the_pooled_backbone_in_eval_mode_with_its_card_and_digest(tmp_path: Path, capsys) -> None:
    state = checkpoint_state(tmp_path)
    path = save(state, tmp_path / "last.pt")
    adapted = load_adapted_model(path)
    # A card without the model's details gets them from the checkpoint's config.
    assert adapted.card.details["model"]["last_stride"] == 2
    assert dataclasses.replace(adapted.card, details={}) == ModelCard.from_dict(state["card"], "x")
    assert adapted.checkpoint == path
    assert adapted.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not adapted.network.training and adapted.network.normalize
    model = build_ecn_model(ModelConfig(arch="resnet18", pretrained=False, embedding_dim=16), DGConfig(), 4)
    model.load_state_dict(state["model"])
    images = torch.randn(2, 3, 32, 16)
    expected = F.normalize(model.eval().backbone(images).mean(dim=(2, 3)), dim=1)
    torch.testing.assert_close(adapted.network(images), expected, atol=1e-5, rtol=1e-5)
    assert adapted.to(torch.device("cpu")) is adapted
    assert "no model card" not in capsys.readouterr().err


def test_a_card_less_checkpoint_is_loaded_with_a_notice(tmp_path: Path, capsys) -> None:
    state = checkpoint_state(tmp_path)
    del state["card"]
    path = save(state, tmp_path / "old.pt")
    adapted = load_adapted_model(path)
    assert adapted.card.derived_from_config and adapted.card.feature_dim == 512 and adapted.card.epoch == 2
    assert f"{path}: no model card (written before cards); derived one from its config" in capsys.readouterr().err


def test_the_notice_of_a_card_less_checkpoint_is_a_warning(tmp_path: Path, monkeypatch) -> None:
    from rich.console import Console

    import ecnreid.inference.messages

    terminal = Console(force_terminal=True, color_system="standard", width=300, file=io.StringIO())
    monkeypatch.setattr(ecnreid.inference.messages, "console", terminal)
    state = checkpoint_state(tmp_path)
    del state["card"]
    load_adapted_model(save(state, tmp_path / "old.pt"))
    assert "\x1b[33m" in terminal.file.getvalue()  # yellow


def test_a_stored_card_that_cannot_be_read_names_the_checkpoint(tmp_path: Path) -> None:
    state = checkpoint_state(tmp_path)
    del state["card"]["arch"]
    path = save(state, tmp_path / "last.pt")
    assert error_of(path) == f"{path}: model card lacks 'arch'"


def test_a_card_that_disagrees_with_the_model_is_refused(tmp_path: Path) -> None:
    path = save(checkpoint_state(tmp_path, feature_dim=256), tmp_path / "last.pt")
    assert error_of(path, "--model") == f"--model {path}: its card says 256-d features but the model gives 512-d"


def test_a_card_of_no_feature_size_is_refused_unless_derived_from_the_config(tmp_path: Path) -> None:
    # Only a card derived from an old config leaves the size to be measured; a written card must state it.
    path = save(checkpoint_state(tmp_path, feature_dim=0), tmp_path / "last.pt")
    assert error_of(path) == f"--checkpoint {path}: its card says 0-d features but the model gives 512-d"


def test_a_method_this_ecnreid_lacks_is_named_with_the_ones_it_has(tmp_path: Path) -> None:
    path = save(checkpoint_state(tmp_path, method="mmt"), tmp_path / "last.pt")
    assert error_of(path, "--model") == (
        f"--model {path}: trained with the method 'mmt', which this ecnreid does not have "
        f"(it has {', '.join(sorted(METHODS))})"
    )
    assert {"ecn", "spcl"} <= set(METHODS)


def test_weights_or_a_config_that_do_not_rebuild_are_one_line_errors(tmp_path: Path) -> None:
    state = checkpoint_state(tmp_path)
    first = next(iter(state["model"]))
    state["model"].pop(first)
    path = save(state, tmp_path / "last.pt")
    message = error_of(path)
    assert message.startswith(f"--checkpoint {path}: the model it holds does not rebuild with this ecnreid version "
                              f"(its card or weights do not fit: no '{first}' entry)")
    assert message.endswith(f"); expected {CHECKPOINT_EXPECTED} with this version") and "\n" not in message
    assert error_of(tmp_path / "none.pt", "--gallery-checkpoint").startswith(f"--gallery-checkpoint {tmp_path}")


def test_a_missing_checkpoint_or_a_folder_names_the_option_and_what_is_expected(tmp_path: Path) -> None:
    assert error_of(tmp_path / "none.pt") == (f"--checkpoint {tmp_path / 'none.pt'}: ecnreid checkpoint not found; "
                                              f"expected {CHECKPOINT_EXPECTED}")
    assert error_of(tmp_path) == f"--checkpoint {tmp_path}: is a folder; expected {CHECKPOINT_EXPECTED}"
    weights = save({"model": {}}, tmp_path / "weights.pt")
    assert error_of(weights) == (f"--checkpoint {weights}: not an ecnreid checkpoint (no 'model' and 'config' "
                                 f"entries); expected {CHECKPOINT_EXPECTED}")


def test_first_line_of_an_error() -> None:
    assert _first_line(RuntimeError("  size mismatch\nfor layer\n")) == "size mismatch"
    assert _first_line(RuntimeError("")) == "no detail"
    assert _first_line(RuntimeError("\n \n")) == "no detail"
    assert _first_line(KeyError("signature")) == "no 'signature' entry"
    assert _first_line(KeyError()) == "no no detail entry"


class Recorder(nn.Module):
    """Features = the mean of each channel; records the batches it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batches.append(images.clone())
        return images[:, :, :, :2].mean(dim=(2, 3)) + images[:, :, :, 0].mean(dim=2)


def test_iter_features_batches_in_order_with_the_cards_input(tmp_path: Path) -> None:
    records = []
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (12, 6, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        records.append(ImageRecord(str(tmp_path / f"{i}.png"), i, 0))
    card = ModelCard("resnet18", 12, 6, "f", 3, "ecn", "a", "b", 1, 1, mean=(0.5, 0.25, 0.0), std=(0.5, 1.0, 2.0))
    network = Recorder()
    adapted = AdaptedModel(network, card, tmp_path / "last.pt", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. pin_memory asked for without a GPU
        batches = list(iter_features(adapted, records, device=torch.device("cpu"), batch_size=2, workers=0))
    assert [len(b) for b in batches] == [2, 2, 1] and all(b.device.type == "cpu" for b in batches)
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(r.path), dtype=np.float32) / 255).permute(2, 0, 1)
                          for r in records])
    normalised = (pixels - torch.tensor([0.5, 0.25, 0.0])[:, None, None]) / torch.tensor([0.5, 1.0, 2.0])[:, None, None]
    torch.testing.assert_close(torch.cat(network.batches), normalised, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(batches), F.normalize(network(normalised), dim=1), atol=1e-5, rtol=1e-5)
    network.batches.clear()
    flipped = torch.cat(list(iter_features(adapted, records, device=torch.device("cpu"), batch_size=5, workers=0,
                                           flip=True)))
    both = network(normalised) + network(torch.flip(normalised, dims=[3]))
    torch.testing.assert_close(flipped, F.normalize(both, dim=1), atol=1e-5, rtol=1e-5)
