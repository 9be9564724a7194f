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
from ecnreid.inference.adapted import load_adapted_model
from ecnreid.inference.card import ecnreid_version

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
