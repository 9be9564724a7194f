"""`ecnreid export`: the adapted model as one ONNX or TorchScript file for a tracking or search service.

The exported graph maps a float32 batch ``[N, 3, H, W]`` (any N; RGB, resized to the card's size, scaled to
[0, 1] and normalised with its mean/std) to the search feature ``[N, D]``: pool5, L2-normalised, so services
compare features by inner product. Before the file is written, the export is checked on a fixed batch against
PyTorch (onnxruntime for ONNX, the reloaded module for TorchScript): any output more than ``TOLERANCE`` away
stops the export with one line and writes nothing. A JSON beside the file (``<file>.json``) says what the
input must be and what the output is.

ONNX uses torch's ``torch.export``-based exporter (``dynamo=True``, the default since torch 2.9; it needs
``onnxscript``). TorchScript is traced; torch 2.14 deprecates TorchScript, so prefer ONNX for new services.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ecnreid.config import ExportConfig
from ecnreid.errors import EcnreidError
from ecnreid.inference.adapted import AdaptedModel, load_adapted_model
from ecnreid.inference.card import ecnreid_version
from ecnreid.inference.messages import say
from ecnreid.io import atomic_write_bytes, ensure_output_dir, write_json

TOLERANCE = 1e-4
TRACE_BATCH, PARITY_BATCH = 2, 3  # parity runs on another batch size than the export saw: the batch is dynamic
INPUT_NAME, OUTPUT_NAME = "images", "features"


def parity_batch(card_height: int, card_width: int, seed: int = 0) -> torch.Tensor:
    """A fixed batch of normalised-looking images (standard normal values), the same on every machine."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(PARITY_BATCH, 3, card_height, card_width, generator=generator)


def _require_onnx() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise EcnreidError(
            f"--format onnx needs onnx, onnxruntime and onnxscript ({exc.name} is missing): "
            "pip install 'ecnreid[export]'"
        ) from None
    return onnxruntime


def export_onnx(network: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX model (bytes) of ``network`` with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals are not the user's business
        program = torch.onnx.export(
            network,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    return program.model_proto.SerializeToString()


def run_onnx(model: bytes, images: torch.Tensor) -> np.ndarray:
    onnxruntime = _require_onnx()
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]


def export_torchscript(network: nn.Module, example: torch.Tensor) -> bytes:
    """The traced TorchScript module (bytes) of ``network``."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation: said once in the docs instead
        traced = torch.jit.trace(network, example)
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def run_torchscript(model: bytes, images: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(io.BytesIO(model), map_location="cpu")
    with torch.no_grad():
        return module(images).numpy()


EXPORTERS = {"onnx": (export_onnx, run_onnx), "torchscript": (export_torchscript, run_torchscript)}


def input_spec(adapted: AdaptedModel) -> dict[str, Any]:
    """What a service must feed the exported model and what it gets back (the JSON beside the file)."""
    card = adapted.card
    return {
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, card.input_height, card.input_width],
            "dtype": "float32",
            "layout": "NCHW",
            "channels": card.channels,
            "resize": {"height": card.input_height, "width": card.input_width, "interpolation": card.resize},
            "scale": "pixel values / 255, to [0, 1]",
            "mean": list(card.mean),
            "std": list(card.std),
            "preprocess": (
                f"decode as {card.channels}, resize to {card.input_height}x{card.input_width} ({card.resize}), "
                "divide by 255, subtract mean, divide by std (per channel)"
            ),
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", card.feature_dim],
            "dtype": "float32",
            "feature": card.feature,
            "compare": "inner product (cosine similarity: the features have unit length)",
        },
    }


def run_export(config: ExportConfig) -> dict[str, Any]:
    """Library call behind ``ecnreid export``: writes ``config.out`` and ``config.out`` + ``.json``."""
    if config.format == "onnx":
        _require_onnx()
    out = Path(config.out)
    if out.is_dir():
        raise EcnreidError(f"--out {out}: is a folder; expected the file to write")
    ensure_output_dir(out.parent, "--out")
    adapted = load_adapted_model(config.checkpoint)
    card = adapted.card
    network = adapted.network.cpu().eval()
    export, run = EXPORTERS[config.format]
    example = parity_batch(card.input_height, card.input_width, seed=1)[:TRACE_BATCH]
    say(f"exporting {card.arch} ({card.feature_dim}-d features) to {config.format}")
    model = export(network, example)
    images = parity_batch(card.input_height, card.input_width)
    with torch.no_grad():
        expected = network(images).numpy()
    got = run(model, images)
    if got.shape != expected.shape:
        raise EcnreidError(f"--format {config.format}: the exported model gives {got.shape} on a batch of "
                           f"{PARITY_BATCH}, PyTorch {expected.shape}; nothing written")
    worst = float(np.abs(got - expected).max())
    if not worst <= TOLERANCE:  # also catches NaN
        raise EcnreidError(
            f"--format {config.format}: the exported model differs from PyTorch by up to {worst:.2e} "
            f"(tolerance {TOLERANCE:g}) on a fixed batch of {PARITY_BATCH}; nothing written"
        )
    atomic_write_bytes(model, out)
    checked_with = "onnxruntime " + _require_onnx().__version__ if config.format == "onnx" else "torch.jit.load"
    sidecar = {
        "file": out.name,
        "format": config.format,
        **input_spec(adapted),
        "parity": {"batch": PARITY_BATCH, "max_abs_diff": worst, "tolerance": TOLERANCE, "checked_with": checked_with},
        "exporter": f"torch {torch.__version__}" + (" (torch.onnx, dynamo)" if config.format == "onnx" else
                                                    " (torch.jit.trace)"),
        "checkpoint": str(adapted.checkpoint),
        "checkpoint_sha256": adapted.checkpoint_sha256,
        "card": card.to_dict(),
        "ecnreid_version": ecnreid_version(),
    }
    write_json(sidecar, out.with_name(out.name + ".json"))
    say(f"wrote {out} ({len(model) / 2**20:.1f} MiB) and {out.name}.json; parity with PyTorch: "
        f"max |difference| {worst:.1e} on a batch of {PARITY_BATCH}")
    return sidecar
