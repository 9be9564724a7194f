"""Feature extraction: order, L2 normalisation, flip averaging, and the pooled-backbone extractor."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from terminal_bars import ERASED, assert_finished_bar, last_frames, terminal_console
from torch import nn

import ecnreid.evaluation.features as features_module
from ecnreid.data.datasets import read_dataset
from ecnreid.data.records import ImageRecord
from ecnreid.evaluation.features import extract_features, iter_features
from ecnreid.models.pooled import PooledBackbone


class MeanColour(nn.Module):
    """Features = per-channel mean of the left half minus the right half, plus a constant (flip-sensitive)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[3] // 2
        return torch.cat([x[..., :half].mean(dim=(2, 3)) - x[..., half:].mean(dim=(2, 3)), torch.ones(len(x), 1)], 1)


class ChannelMeansAndSize(nn.Module):
    """Features = the input's per-channel means, then its height and width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = torch.tensor([[float(x.shape[2]), float(x.shape[3])]]).expand(len(x), 2)
        return torch.cat([x.mean(dim=(2, 3)), size], 1)


def solid_records(folder: Path, colours: list[tuple[int, int, int]]) -> list[ImageRecord]:
    """One solid-colour 20x9 image per colour (a resize keeps a solid colour exact)."""
    folder.mkdir()
    records = []
    for i, colour in enumerate(colours):
        path = folder / f"{i}.png"
        Image.new("RGB", (9, 20), colour).save(path)
        records.append(ImageRecord(str(path), i, 0))
    return records


def test_images_reach_the_model_at_the_given_size_and_normalisation(tmp_path: Path) -> None:
    colours = [(255, 0, 51), (102, 204, 0), (0, 0, 0)]
    records = solid_records(tmp_path / "images", colours)
    pixels = torch.tensor(colours, dtype=torch.float32) / 255
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    raw = extract_features(
        ChannelMeansAndSize(), records, height=24, width=10, mean=mean, std=std, batch_size=2, workers=0,
        show_progress=False, normalize=False,
    )
    expected = (pixels - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(raw, torch.cat([expected, torch.tensor([[24.0, 10.0]]).expand(3, 2)], 1))
    # Unless told, ImageNet's normalisation (the one training uses).
    imagenet = extract_features(
        ChannelMeansAndSize(), records, height=8, width=4, batch_size=3, workers=0, show_progress=False,
        normalize=False,
    )
    expected = (pixels - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(imagenet, torch.cat([expected, torch.tensor([[8.0, 4.0]]).expand(3, 2)], 1))
    batches = list(
        iter_features(
            ChannelMeansAndSize(), records, height=24, width=10, mean=mean, std=std, batch_size=2, workers=0,
            device="cpu", flip=False, normalize=False,
        )
    )
    assert [len(b) for b in batches] == [2, 1]
    torch.testing.assert_close(torch.cat(batches), raw)


class LoaderSpy:
    """Stands in for ``DataLoader``: keeps the settings it was given and yields no batch."""

    def __init__(self) -> None:
        self.settings: list[dict] = []

    def __call__(self, dataset, **settings) -> list:
        self.settings.append(settings)
        return []


@pytest.mark.parametrize("device, pinned", [("cpu", False), ("cuda", True)])
def test_the_loader_keeps_order_and_takes_the_batch_workers_and_pinning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, device: str, pinned: bool
) -> None:
    spy = LoaderSpy()
    monkeypatch.setattr(features_module, "DataLoader", spy)
    records = solid_records(tmp_path / "images", [(1, 2, 3)])
    model = nn.Identity().train()
    batches = iter_features(
        model, records, height=8, width=4, mean=(0, 0, 0), std=(1, 1, 1), batch_size=7, workers=3, device=device,
        flip=False,
    )
    assert list(batches) == []
    # Page-locked memory only where it speeds a copy to the GPU.
    assert spy.settings == [{"batch_size": 7, "shuffle": False, "num_workers": 3, "pin_memory": pinned}]
    assert model.training


class DeviceRecorder(nn.Module):
    """Keeps the device of each batch it is given; its features are on the CPU whatever that device."""

    def __init__(self) -> None:
        super().__init__()
        self.devices: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.devices.append(x.device.type)
        return torch.ones(len(x), 2)


def test_batches_reach_the_model_on_the_given_device(tmp_path: Path) -> None:
    # The meta device stands in for a GPU: the batches must be moved there, whatever machine runs the test.
    records = solid_records(tmp_path / "images", [(1, 2, 3)] * 3)
    model = DeviceRecorder()
    batches = iter_features(
        model, records, height=8, width=4, mean=(0, 0, 0), std=(1, 1, 1), batch_size=2, workers=0, device="meta",
        flip=False,
    )
    assert torch.cat(list(batches)).shape == (3, 2)
    assert model.devices == ["meta", "meta"]


def test_no_records_give_an_empty_matrix_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = extract_features(MeanColour(), [], height=8, width=4, batch_size=2, workers=0, show_progress=False)
    assert empty.shape == (0, 0) and empty.dtype == torch.float32


def test_the_bar_names_its_images_and_is_drawn_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shown = terminal_console(monkeypatch)
    records = solid_records(tmp_path / "images", [(9, 9, 9)] * 5)
    extract_features(MeanColour(), records, height=8, width=4, batch_size=2, workers=0, description="gallery")
    frames = last_frames(shown.getvalue())
    assert len(frames) == 1
    assert_finished_bar(frames[0], "gallery", 5, 5, "img")
    assert shown.getvalue().endswith(ERASED)  # gone once the features are in
    shown.seek(0)
    shown.truncate()
    extract_features(MeanColour(), records, height=8, width=4, batch_size=2, workers=0)
    assert_finished_bar(last_frames(shown.getvalue())[0], "features", 5, 5, "img")
    shown.seek(0)
    shown.truncate()
    extract_features(MeanColour(), records, height=8, width=4, batch_size=2, workers=0, show_progress=False)
    assert shown.getvalue() == ""


def test_features_are_normalised_in_record_order(two_domains) -> None:
    _, target = two_domains
    records = read_dataset("synthetic", target).query
    feats = extract_features(MeanColour(), records, height=32, width=16, batch_size=4, workers=0, show_progress=False)
    assert feats.shape == (len(records), 4)
    assert torch.allclose(feats.norm(dim=1), torch.ones(len(records)))
    one_by_one = torch.cat(
        [
            extract_features(MeanColour(), [r], height=32, width=16, batch_size=1, workers=0, show_progress=False)
            for r in records
        ]
    )
    assert torch.allclose(feats, one_by_one, atol=1e-6)


def test_flip_averaging_sums_image_and_mirror(two_domains) -> None:
    _, target = two_domains
    records = read_dataset("synthetic", target).query[:3]
    flipped = extract_features(
        MeanColour(), records, height=32, width=16, batch_size=2, workers=0, flip=True, show_progress=False
    )
    # Left-minus-right cancels against its mirror, so only the constant survives.
    assert torch.allclose(flipped, torch.tensor([[0.0, 0.0, 0.0, 1.0]]).expand(3, 4), atol=1e-6)


def test_pooled_backbone_is_unit_norm_and_extraction_restores_train_mode(two_domains) -> None:
    _, target = two_domains
    records = read_dataset("synthetic", target).query[:3]
    model = PooledBackbone(nn.Conv2d(3, 5, 3))
    model.train()
    out = model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 5) and torch.allclose(out.norm(dim=1), torch.ones(2))
    modes: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    extract_features(model, records, height=32, width=16, batch_size=2, workers=0, show_progress=False)
    assert modes == [False, False]  # features come from the eval-mode model...
    assert model.training  # ...which is handed back in the mode it came in
    model.eval()
    extract_features(model, records, height=32, width=16, batch_size=3, workers=0, show_progress=False)
    assert not model.training


def test_pooled_backbone_is_the_spatial_mean_of_the_last_map_unit_norm_or_raw() -> None:
    maps = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4) - 20
    pool5 = maps.mean(dim=(2, 3))
    unit = PooledBackbone(nn.Identity())
    assert unit.normalize and isinstance(unit.backbone, nn.Identity)
    torch.testing.assert_close(unit(maps), pool5 / pool5.norm(dim=1, keepdim=True))
    raw = PooledBackbone(nn.Identity(), normalize=False)
    torch.testing.assert_close(raw(maps), pool5)
