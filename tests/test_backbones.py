"""Tests for ecnreid/models/backbones.py: named stages, inserted modules, weights, last stride."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import MOBILENET_WEIGHTS
from torch import nn

from ecnreid.errors import EcnreidError
from ecnreid.models.backbones import ARCHITECTURES, STAGE_NAMES, Backbone, build_backbone

# (channels, height, width) after each stage for a 64x32 input.
EXPECTED_STAGES = {
    "resnet18": [(64, 16, 8), (64, 16, 8), (128, 8, 4), (256, 4, 2), (512, 2, 1)],
    "mobilenet_v2": [(16, 32, 16), (24, 16, 8), (32, 8, 4), (96, 4, 2), (1280, 2, 1)],
}


def _stage_shapes(backbone: Backbone, x: torch.Tensor) -> list[tuple[int, int, int]]:
    shapes = []
    for name in backbone.stage_names:
        x = backbone.stages[name](x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


def test_architecture_names() -> None:
    assert set(ARCHITECTURES) == {"resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2"}
    assert STAGE_NAMES == ("stem", "layer1", "layer2", "layer3", "layer4")


@pytest.mark.parametrize("arch", sorted(EXPECTED_STAGES))
def test_stages_shapes_and_channels(arch: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(arch, pretrained=False).eval()
    x = torch.randn(2, 3, 64, 32)
    expected = EXPECTED_STAGES[arch]
    assert backbone.stage_names == STAGE_NAMES
    assert list(backbone.stages.keys()) == list(STAGE_NAMES)
    assert _stage_shapes(backbone, x) == expected
    assert backbone.stage_channels == {name: c for name, (c, _, _) in zip(STAGE_NAMES, expected, strict=True)}
    assert backbone.out_channels == expected[-1][0]
    with torch.no_grad():
        assert backbone(x).shape == (2, *expected[-1])


def test_resnet50_channels_and_shared_modules() -> None:
    backbone = build_backbone("resnet50", pretrained=False)
    assert backbone.stage_channels == {"stem": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    assert backbone.out_channels == 2048
    network = backbone.network
    assert backbone.stages["stem"].conv1 is network.conv1
    assert backbone.stages["layer4"] is network.layer4
    # The torchvision model is not registered twice: no duplicate tensors, no ImageNet classifier.
    keys = backbone.state_dict().keys()
    assert not any(".fc." in k or k.startswith("fc.") for k in keys)
    assert "stages.stem.conv1.weight" in keys and "stages.layer4.2.conv3.weight" in keys


def test_mobilenet_stages_share_torchvision_modules() -> None:
    backbone = build_backbone("mobilenet_v2", pretrained=False)
    assert backbone.stages["layer4"][0] is backbone.network.features[14]
    assert backbone.stages["stem"][0] is backbone.network.features[0]
    # Sliced Sequentials keep torchvision's child keys.
    assert "stages.layer4.18.0.weight" in backbone.state_dict()


def test_unknown_architecture_lists_names() -> None:
    with pytest.raises(EcnreidError, match="resnet18.*mobilenet_v2"):
        build_backbone("vgg16")


def test_bad_last_stride() -> None:
    with pytest.raises(EcnreidError, match="last stride"):
        build_backbone("resnet18", last_stride=3)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_last_stride_one_doubles_final_map(arch: str) -> None:
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        normal = build_backbone(arch, pretrained=False).eval()(x)
        stride1 = build_backbone(arch, pretrained=False, last_stride=1).eval()(x)
    assert normal.shape[2:] == (2, 1)
    assert stride1.shape[2:] == (4, 2)
    assert stride1.shape[1] == normal.shape[1]


def test_last_stride_one_resnet50_convs() -> None:
    block = build_backbone("resnet50", pretrained=False, last_stride=1).stages["layer4"][0]
    assert block.conv2.stride == (1, 1)
    assert block.downsample[0].stride == (1, 1)
    assert build_backbone("resnet50", pretrained=False).stages["layer4"][0].conv2.stride == (2, 2)


def test_insert_after_runs_in_order_on_stage_output() -> None:
    calls: list[tuple[str, tuple[int, ...]]] = []

    class Record(nn.Module):
        def __init__(self, tag: str) -> None:
            super().__init__()
            self.tag = tag

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append((self.tag, tuple(x.shape)))
            return x

    backbone = build_backbone("resnet18", pretrained=False).eval()
    backbone.insert_after("layer2", Record("b"))
    backbone.insert_after("layer1", Record("a1"))
    backbone.insert_after("layer1", Record("a2"))
    with torch.no_grad():
        backbone(torch.randn(2, 3, 64, 32))
    assert calls == [("a1", (2, 64, 16, 8)), ("a2", (2, 64, 16, 8)), ("b", (2, 128, 8, 4))]


def test_inserted_module_changes_the_output() -> None:
    backbone = build_backbone("resnet18", pretrained=False).eval()
    backbone.insert_after("layer4", nn.ConstantPad2d(0, 0.0))  # identity: shape unchanged
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 32)
        before = backbone(x)
        zero = nn.Conv2d(512, 512, 1, bias=False)
        nn.init.zeros_(zero.weight)
        backbone.insert_after("layer4", zero)
        assert before.abs().sum() > 0
        assert torch.count_nonzero(backbone(x)) == 0
    assert "inserted.layer4.1.weight" in backbone.state_dict()


def test_insert_after_unknown_stage() -> None:
    backbone = build_backbone("resnet18", pretrained=False)
    with pytest.raises(ValueError, match="layer5.*stem, layer1, layer2, layer3, layer4"):
        backbone.insert_after("layer5", nn.Identity())


class _Tagged(nn.Module):
    """An aux module: adds ``shift`` and hands out (tag, input batch size, input mean); None in eval."""

    aux_name = "tagged"

    def __init__(self, tag: str, shift: float = 1.0) -> None:
        super().__init__()
        self.tag = tag
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[str, int, torch.Tensor] | None]:
        return self(x), ((self.tag, x.shape[0], x.mean()) if self.training else None)


class _Across(nn.Module):
    """A cross-domain module: swaps the means of two batches (one batch passes unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_domains(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(batches) != 2:
            return list(batches)
        first, second = batches
        return [first - first.mean() + second.mean(), second - second.mean() + first.mean()]


def test_aux_outputs_come_back_per_stage_and_forward_stays_a_tensor() -> None:
    torch.manual_seed(2)
    backbone = build_backbone("resnet18", pretrained=False).train()
    backbone.insert_after("layer3", _Tagged("c"))
    backbone.insert_after("layer1", _Tagged("a"))
    backbone.insert_after("layer1", nn.Identity())
    assert backbone.aux_modules("tagged") == {
        "layer1": backbone.inserted["layer1"][0],
        "layer3": backbone.inserted["layer3"][0],
    }
    assert backbone.aux_modules("other") == {}
    x = torch.randn(2, 3, 64, 32)

    feature_map, aux = backbone.forward_with_aux(x)
    assert list(aux) == ["tagged"]
    assert list(aux["tagged"]) == ["layer1", "layer3"]  # network order, not insertion order
    assert [v[:2] for v in aux["tagged"].values()] == [("a", 2), ("c", 2)]
    plain = backbone(x)
    assert torch.is_tensor(plain)
    torch.testing.assert_close(plain, feature_map)

    backbone.eval()
    with torch.no_grad():
        assert backbone.forward_with_aux(x)[1] == {}  # aux None: nothing collected
        torch.testing.assert_close(backbone(x), backbone.forward_with_aux(x)[0])


def test_forward_domains_returns_each_batchs_aux_with_its_map() -> None:
    torch.manual_seed(3)
    backbone = build_backbone("resnet18", pretrained=False).train()
    backbone.insert_after("stem", _Across())
    backbone.insert_after("layer2", _Tagged("b"))
    first, second = torch.randn(2, 3, 64, 32), torch.randn(3, 3, 64, 32) * 2 + 1
    maps, auxes = backbone.forward_domains([first, second])
    assert [m.shape[0] for m in maps] == [2, 3]
    assert [a["tagged"]["layer2"][1] for a in auxes] == [2, 3]
    # The cross-domain module saw both batches at once, then every later stage ran per batch.
    stages = backbone.stages
    mixed = backbone.inserted["stem"][0].forward_domains([stages["stem"](first), stages["stem"](second)])
    for x, aux in zip(mixed, auxes, strict=True):
        torch.testing.assert_close(aux["tagged"]["layer2"][2], stages["layer2"](stages["layer1"](x)).mean())
    maps_alone, (aux_alone,) = backbone.forward_domains([second])
    assert list(aux_alone["tagged"]) == ["layer2"]


def test_insert_after_checks_the_aux_protocol() -> None:
    backbone = build_backbone("resnet18", pretrained=False)
    backbone.insert_after("layer1", _Tagged("a"))
    backbone.insert_after("layer2", _Tagged("b"))
    with pytest.raises(ValueError, match="'layer1' already has a module with 'tagged' outputs"):
        backbone.insert_after("layer1", _Tagged("again"))

    class Nameless(nn.Module):
        def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
            return x, None

    class Both(_Across):
        aux_name = "both"

        def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
            return x, None

    with pytest.raises(ValueError, match="no aux_name"):
        backbone.insert_after("layer3", Nameless())
    with pytest.raises(ValueError, match="not both"):
        backbone.insert_after("layer3", Both())
    assert [len(backbone.inserted[s]) for s in STAGE_NAMES] == [0, 1, 1, 0, 0]


def _resnet18_state(without_fc: bool = True) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    return {k: v for k, v in state.items() if not (without_fc and k.startswith("fc."))}


def test_weights_load_without_classifier(tmp_path: Path) -> None:
    state = _resnet18_state()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    backbone = build_backbone("resnet18", weights=path)
    assert torch.equal(backbone.stages["layer3"][1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(backbone.stages["stem"].bn1.running_var, state["bn1.running_var"])


def test_weights_in_checkpoint_dict(tmp_path: Path) -> None:
    state = _resnet18_state(without_fc=False)
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    backbone = build_backbone("resnet18", weights=path, last_stride=1)
    assert torch.equal(backbone.stages["layer4"][0].conv1.weight, state["layer4.0.conv1.weight"])
    assert backbone.stages["layer4"][0].conv1.stride == (1, 1)


def _one_line_error(**kwargs) -> str:
    with pytest.raises(EcnreidError) as info:
        build_backbone(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_corrupted_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a torch file")
    message = _one_line_error(arch="resnet18", weights=path)
    assert message == (
        f"--weights {path}: not a torch state_dict file (not written by torch.save, or cut short); expected a "
        "torchvision backbone's state_dict saved with torch.save(model.state_dict(), PATH)"
    )


def test_missing_weights_file(tmp_path: Path) -> None:
    message = _one_line_error(arch="resnet18", weights=tmp_path / "nope.pth")
    assert "not found" in message


def test_weights_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(_resnet18_state(), path)
    message = _one_line_error(arch="mobilenet_v2", weights=path)
    assert str(path) in message
    assert "missing" in message and "features.0.0.weight" in message
    assert "unexpected" in message and "conv1.weight" in message


def test_weights_shape_mismatch_and_missing_key(tmp_path: Path) -> None:
    state = _resnet18_state()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    del state["layer3.0.bn1.bias"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    message = _one_line_error(arch="resnet18", weights=path)
    assert "layer2.0.conv1.weight (128, 64, 5, 5) vs (128, 64, 3, 3)" in message
    assert "missing 1 keys: layer3.0.bn1.bias" in message


def test_weights_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    assert "not a state_dict" in _one_line_error(arch="resnet18", weights=path)


def test_weights_and_no_pretrained_conflict(tmp_path: Path) -> None:
    assert "contradict" in _one_line_error(arch="resnet18", weights=tmp_path / "x.pth", pretrained=False)


def test_pretrained_download_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache, so torchvision must download
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    message = _one_line_error(arch="resnet18", pretrained=True)
    assert "download" in message and "--weights PATH" in message


@pytest.mark.data
@pytest.mark.skipif(not MOBILENET_WEIGHTS.is_file(), reason="no MobileNetV2 ImageNet weights (ECNREID_WEIGHTS)")
def test_shared_mobilenet_weights_load() -> None:
    state = torch.load(MOBILENET_WEIGHTS, map_location="cpu", weights_only=True)
    backbone = build_backbone("mobilenet_v2", weights=MOBILENET_WEIGHTS, last_stride=1)
    assert torch.equal(backbone.stages["layer4"][4][0].weight, state["features.18.0.weight"])
    assert torch.equal(backbone.stages["stem"][0][1].running_mean, state["features.0.1.running_mean"])
    assert backbone.stages["layer4"][0].conv[1][0].stride == (1, 1)
    with torch.no_grad():
        assert backbone.eval()(torch.randn(1, 3, 64, 32)).shape == (1, 1280, 4, 2)


def test_a_download_that_works_still_shows_its_notice(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import sys

    state = torchvision.models.resnet18().state_dict()

    def online(url: str, *args, **kwargs):
        sys.stdout.write(f'Downloading: "{url}" to cache\n')
        sys.stderr.write("progress 100%\n")
        return state

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", online)
    backbone = build_backbone("resnet18", pretrained=True)
    assert backbone.weights_origin == {"kind": "torchvision", "name": "resnet18:IMAGENET1K_V1"}
    captured = capsys.readouterr()
    assert "Downloading:" in captured.out and "progress 100%" in captured.err
    assert sys.stdout is not None and not type(sys.stdout).__name__.startswith("_Held")


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_last_stride_is_read_from_the_built_network(arch: str) -> None:
    assert build_backbone(arch, pretrained=False).last_stride == 2
    assert build_backbone(arch, pretrained=False, last_stride=1).last_stride == 1
