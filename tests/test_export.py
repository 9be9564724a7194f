"""`ecnreid export`: ONNX and TorchScript files whose output equals PyTorch's search feature on any batch
size, the JSON beside them, and a failed parity check that writes nothing."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_checkpoint import train_tiny_checkpoint
from typer.testing import CliRunner

import ecnreid.inference.export as export_module
from ecnreid.cli import app
from ecnreid.inference.adapted import AdaptedModel, load_adapted_model
from ecnreid.inference.card import ModelCard, ecnreid_version

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_checkpoint(tmp_path_factory.mktemp("export"))[0]


def export(checkpoint: Path, out: Path, fmt: str):
    return runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)])


def pytorch_features(checkpoint: Path, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return load_adapted_model(checkpoint).network(images).numpy()


def check_sidecar(out: Path, fmt: str, checkpoint: Path) -> None:
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["format"] == fmt and sidecar["file"] == out.name
    assert sidecar["input"]["shape"] == ["batch", 3, 32, 16] and sidecar["input"]["channels"] == "RGB"
    assert sidecar["input"]["mean"] == [0.485, 0.456, 0.406] and sidecar["input"]["std"] == [0.229, 0.224, 0.225]
    assert sidecar["input"]["resize"] == {"height": 32, "width": 16, "interpolation": "bicubic"}
    assert sidecar["output"]["shape"] == ["batch", 512] and "L2" in sidecar["output"]["feature"]
    assert sidecar["parity"]["max_abs_diff"] <= sidecar["parity"]["tolerance"] == 1e-4
    assert sidecar["card"]["feature_dim"] == 512
    adapted = load_adapted_model(checkpoint)
    assert sidecar["input"] == {
        "name": "images", "shape": ["batch", 3, 32, 16], "dtype": "float32", "layout": "NCHW", "channels": "RGB",
        "resize": {"height": 32, "width": 16, "interpolation": "bicubic"}, "scale": "pixel values / 255, to [0, 1]",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "preprocess": "decode as RGB, resize to 32x16 (bicubic), divide by 255, subtract mean, divide by std "
                      "(per channel)",
    }
    assert sidecar["output"] == {"name": "features", "shape": ["batch", 512], "dtype": "float32",
                                 "feature": adapted.card.feature,
                                 "compare": "inner product (cosine similarity: the features have unit length)"}
    if fmt == "onnx":
        import onnxruntime

        checked_with, exporter = f"onnxruntime {onnxruntime.__version__}", "(torch.onnx, dynamo)"
    else:
        checked_with, exporter = "torch.jit.load", "(torch.jit.trace)"
    assert {k: v for k, v in sidecar["parity"].items() if k != "max_abs_diff"} == {
        "batch": 3, "tolerance": 1e-4, "checked_with": checked_with}
    assert sidecar["exporter"] == f"torch {torch.__version__} {exporter}"
    assert sidecar["checkpoint"] == str(checkpoint) and sidecar["checkpoint_sha256"] == adapted.checkpoint_sha256
    assert sidecar["card"] == adapted.card.to_dict() and sidecar["ecnreid_version"] == ecnreid_version()


@pytest.mark.slow
def test_onnx_matches_pytorch_on_any_batch_size(checkpoint: Path, tmp_path: Path) -> None:
    import onnxruntime

    out = tmp_path / "model.onnx"
    result = export(checkpoint, out, "onnx")
    assert result.exit_code == 0, result.output
    check_sidecar(out, "onnx", checkpoint)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        images = torch.randn(batch, 3, 32, 16, generator=torch.Generator().manual_seed(batch))
        got = session.run(["features"], {"images": images.numpy()})[0]
        assert got.shape == (batch, 512)
        assert np.abs(got - pytorch_features(checkpoint, images)).max() <= 1e-4
        assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)  # the normalisation is in the graph


@pytest.mark.slow
def test_torchscript_matches_pytorch_on_any_batch_size(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    result = export(checkpoint, out, "torchscript")
    assert result.exit_code == 0, result.output
    check_sidecar(out, "torchscript", checkpoint)
    said = " ".join(result.output.split())
    assert "exporting resnet18 (512-d features) to torchscript" in said
    size = out.stat().st_size / 2**20
    assert f"wrote {out} ({size:.1f} MiB) and model.pt.json; parity with PyTorch: max |difference| " in said
    assert said.endswith("on a batch of 3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; services still load it
        module = torch.jit.load(str(out))
    for batch in (1, 5):
        images = torch.randn(batch, 3, 32, 16, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            got = module(images).numpy()
        assert got.shape == (batch, 512)
        assert np.abs(got - pytorch_features(checkpoint, images)).max() <= 1e-4


@pytest.mark.slow
def test_a_failed_parity_check_writes_nothing(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    exporter, runner_of = export_module.EXPORTERS["torchscript"]
    monkeypatch.setitem(export_module.EXPORTERS, "torchscript",
                        (exporter, lambda model, images: runner_of(model, images) + 1e-3))
    out = tmp_path / "model.pt"
    result = export(checkpoint, out, "torchscript")
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "differs from PyTorch by up to 1.00e-03 (tolerance 0.0001)" in message and "nothing written" in message
    assert not out.exists() and not out.with_name("model.pt.json").exists()


@pytest.mark.slow
def test_export_needs_a_file_not_a_folder(checkpoint: Path, tmp_path: Path) -> None:
    result = export(checkpoint, tmp_path, "torchscript")
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == f"error: --out {tmp_path}: is a folder; expected the file to write"


def test_the_parity_batch_is_fixed_by_its_seed() -> None:
    batch = export_module.parity_batch(8, 4)
    assert batch.shape == (3, 3, 8, 4)
    assert torch.equal(batch, torch.randn(3, 3, 8, 4, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(export_module.parity_batch(8, 4, seed=1), batch)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (np.zeros((2, 512), np.float32), "--format torchscript: the exported model gives (2, 512) on a batch of 3, "
                                         "PyTorch (3, 512); nothing written"),
        (np.full((3, 512), np.nan, np.float32), "--format torchscript: the exported model differs from PyTorch by up "
                                                "to nan (tolerance 0.0001) on a fixed batch of 3; nothing written"),
    ],
)
@pytest.mark.slow
def test_an_export_of_another_shape_or_nan_writes_nothing(
    checkpoint: Path, tmp_path: Path, monkeypatch, broken: np.ndarray, message: str
) -> None:
    # An exporter whose model gives ``broken`` on the parity batch (no tracing needed to reach the check).
    monkeypatch.setitem(export_module.EXPORTERS, "torchscript", (lambda network, example: b"model",
                                                                 lambda model, images: broken))
    result = export(checkpoint, tmp_path / "model.pt", "torchscript")
    assert result.exit_code == 2 and " ".join(result.output.split()).endswith(f"to torchscript error: {message}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_onnx_without_its_packages_is_a_one_line_error_naming_the_missing_one(
    checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import of it raises ImportError
    result = export(checkpoint, tmp_path / "model.onnx", "onnx")
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == (
        "error: --format onnx needs onnx, onnxruntime and onnxscript (onnxscript is missing): "
        "pip install 'ecnreid[export]'")
    assert list(tmp_path.iterdir()) == []


# run_export itself, with a small network in place of a trained checkpoint's (no training needed).
class SmallEmbedding(torch.nn.Module):
    """A 1x1 convolution, batch norm (with running statistics that eval mode must use) and pooling to unit
    4-d features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.norm = torch.nn.BatchNorm2d(4)
        self.norm.running_mean.uniform_(-1, 1)
        self.norm.running_var.uniform_(0.5, 2)
        self.register_buffer("ballast", torch.zeros(1 << 17))  # 0.5 MiB, so that the size said is not 0.0 MiB

    def forward(self, batch: torch.Tensor) -> torch.Tensor:  # not named like the graph's input
        return torch.nn.functional.normalize(self.norm(self.conv(batch)).mean(dim=(2, 3)), dim=1) + self.ballast[0]


SMALL_CARD = ModelCard("resnet18", 8, 4, "pool5, L2-normalised", 4, "ecn", "a", "b", 1, 1,
                       mean=(0.5, 0.25, 0.125), std=(0.2, 0.3, 0.4), resize="bilinear")


@pytest.fixture
def small(tmp_path: Path, monkeypatch) -> tuple[Path, AdaptedModel]:
    """(the --checkpoint path, the model run_export loads for it): the network starts in training mode."""
    path = tmp_path / "small.pt"
    adapted = AdaptedModel(SmallEmbedding().train(), SMALL_CARD, path, "sha-small")
    monkeypatch.setattr(export_module, "load_adapted_model",
                        lambda checkpoint: adapted if Path(checkpoint) == path else pytest.fail(str(checkpoint)))
    return path, adapted


def eval_features(images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return SmallEmbedding().eval()(images).numpy()


def small_sidecar(out: Path, fmt: str, path: Path, worst: float) -> dict:
    if fmt == "onnx":
        import onnxruntime

        checked_with, exporter = f"onnxruntime {onnxruntime.__version__}", "(torch.onnx, dynamo)"
    else:
        checked_with, exporter = "torch.jit.load", "(torch.jit.trace)"
    return {
        "file": out.name, "format": fmt,
        "input": {
            "name": "images", "shape": ["batch", 3, 8, 4], "dtype": "float32", "layout": "NCHW", "channels": "RGB",
            "resize": {"height": 8, "width": 4, "interpolation": "bilinear"},
            "scale": "pixel values / 255, to [0, 1]", "mean": [0.5, 0.25, 0.125], "std": [0.2, 0.3, 0.4],
            "preprocess": "decode as RGB, resize to 8x4 (bilinear), divide by 255, subtract mean, divide by std "
                          "(per channel)",
        },
        "output": {"name": "features", "shape": ["batch", 4], "dtype": "float32", "feature": "pool5, L2-normalised",
                   "compare": "inner product (cosine similarity: the features have unit length)"},
        "parity": {"batch": 3, "max_abs_diff": worst, "tolerance": 1e-4, "checked_with": checked_with},
        "exporter": f"torch {torch.__version__} {exporter}",
        "checkpoint": str(path), "checkpoint_sha256": "sha-small", "card": SMALL_CARD.to_dict(),
        "ecnreid_version": ecnreid_version(),
    }


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_of_a_small_model_writes_the_file_its_json_and_says_so(small, tmp_path: Path, fmt: str) -> None:
    path, adapted = small
    out = tmp_path / "exported" / f"model.{fmt}"
    result = export(path, out, fmt)
    assert result.exit_code == 0, result.output
    assert not adapted.network.training  # exported, and checked, in eval mode
    sidecar = json.loads((out.parent / f"{out.name}.json").read_text())
    worst = sidecar["parity"]["max_abs_diff"]
    assert 0 <= worst <= 1e-4
    assert sidecar == small_sidecar(out, fmt, path, worst)
    said = " ".join(result.output.split())
    size = out.stat().st_size / 2**20
    assert said == (f"exporting resnet18 (4-d features) to {fmt} wrote {out} ({size:.1f} MiB) and {out.name}.json; "
                    f"parity with PyTorch: max |difference| {worst:.1e} on a batch of 3")
    for batch in (1, 5):
        images = torch.randn(batch, 3, 8, 4, generator=torch.Generator().manual_seed(batch))
        if fmt == "onnx":
            import onnx

            (graph_input,) = onnx.load_from_string(out.read_bytes()).graph.input
            assert graph_input.name == "images" and graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
            got = export_module.run_onnx(out.read_bytes(), images)
        else:
            got = export_module.run_torchscript(out.read_bytes(), images)
        assert got.shape == (batch, 4) and np.abs(got - eval_features(images)).max() <= 1e-4


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (1e-3, "--format torchscript: the exported model differs from PyTorch by up to 1.00e-03 (tolerance 0.0001) "
               "on a fixed batch of 3; nothing written"),
        (np.nan, "--format torchscript: the exported model differs from PyTorch by up to nan (tolerance 0.0001) "
                 "on a fixed batch of 3; nothing written"),
        (None, "--format torchscript: the exported model gives (2, 4) on a batch of 3, PyTorch (3, 4); "
               "nothing written"),
    ],
)
def test_a_small_export_that_fails_parity_writes_nothing(small, tmp_path: Path, monkeypatch, offset, message) -> None:
    exporter, run = export_module.EXPORTERS["torchscript"]

    def broken(model: bytes, images: torch.Tensor) -> np.ndarray:
        got = run(model, images)
        return got[:2] if offset is None else got + np.float32(offset)

    monkeypatch.setitem(export_module.EXPORTERS, "torchscript", (exporter, broken))
    result = export(small[0], tmp_path / "model.pt", "torchscript")
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == f"exporting resnet18 (4-d features) to torchscript error: {message}"
    assert list(tmp_path.iterdir()) == []


def test_an_export_exactly_at_the_tolerance_is_written(small, tmp_path: Path, monkeypatch) -> None:
    # The exported model's output is PyTorch's + 0.25, and the tolerance the very difference that makes.
    monkeypatch.setitem(export_module.EXPORTERS, "torchscript", (
        export_module.export_torchscript, lambda model, images: eval_features(images) + np.float32(0.25)))
    expected = eval_features(export_module.parity_batch(8, 4))
    monkeypatch.setattr(export_module, "TOLERANCE", float(np.abs(expected + np.float32(0.25) - expected).max()))
    out = tmp_path / "model.pt"
    assert export(small[0], out, "torchscript").exit_code == 0 and out.is_file()


def test_a_small_export_needs_a_file_and_onnx_its_packages(small, tmp_path: Path, monkeypatch) -> None:
    result = export(small[0], tmp_path, "torchscript")
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == f"error: --out {tmp_path}: is a folder; expected the file to write"
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = export(small[0], blocker / "model.pt", "torchscript")
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == f"error: --out {blocker}: exists and is a file, not a folder"
    blocker.unlink()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import of it raises ImportError
    result = export(small[0], tmp_path / "model.onnx", "onnx")
    assert result.exit_code == 2 and list(tmp_path.iterdir()) == []
    assert " ".join(result.output.split()) == (
        "error: --format onnx needs onnx, onnxruntime and onnxscript (onnxruntime is missing): "
        "pip install 'ecnreid[export]'")


def test_warnings_of_the_trace_other_than_torch_jits_deprecation_reach_the_user(tmp_path: Path, monkeypatch) -> None:
    class WarnsWhileTraced(SmallEmbedding):
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            if torch.jit.is_tracing():
                warnings.warn("seen while traced", UserWarning, stacklevel=2)
            return super().forward(batch)

    path = tmp_path / "small.pt"
    adapted = AdaptedModel(WarnsWhileTraced(), SMALL_CARD, path, "sha-small")
    monkeypatch.setattr(export_module, "load_adapted_model", lambda checkpoint: adapted)
    with pytest.warns(UserWarning, match="seen while traced"):
        assert export(path, tmp_path / "model.pt", "torchscript").exit_code == 0


def test_warnings_of_the_reload_other_than_torch_jits_deprecation_reach_the_user(
    small, tmp_path: Path, monkeypatch
) -> None:
    real_load = torch.jit.load

    def load(*args, **kwargs):
        warnings.warn("torch.jit.load is deprecated", FutureWarning, stacklevel=2)
        warnings.warn("seen while loaded", UserWarning, stacklevel=2)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", load)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert export(small[0], tmp_path / "model.pt", "torchscript").exit_code == 0
    said = [str(warning.message) for warning in caught]
    assert "seen while loaded" in said and "torch.jit.load is deprecated" not in said
