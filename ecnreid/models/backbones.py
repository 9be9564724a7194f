"""Torchvision backbones exposed as five named stages, so every architecture reads the same way.

Every backbone has the stages ``stem`` (1/4 resolution for ResNet, 1/2 for MobileNetV2), ``layer1`` ...
``layer4`` (1/32, or 1/16 with ``last_stride=1``). Domain-generalisation modules (MixStyle, SNR) are
inserted after a named stage with :meth:`Backbone.insert_after`.

An inserted module may hand out auxiliary outputs of a pass (SNR: the pooled vectors its loss needs) through
the protocol :class:`AuxModule`: a ``forward_with_aux(x) -> (x, aux)`` method and an ``aux_name``.
:meth:`Backbone.forward_with_aux` and :meth:`Backbone.forward_domains` return them as data, as
``{aux_name: {stage: aux}}`` per batch; plain :meth:`Backbone.forward` returns the feature map alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torchvision
from torch import nn

from ecnreid.errors import EcnreidError
from ecnreid.runstate import load_torch_file

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
}

STAGE_NAMES: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")

# Keys of the ImageNet classifier, which a re-ID backbone never uses: they may be absent from a weights file.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.")

# What --weights must be, in a user's words.
STATE_DICT_EXPECTED = "a torchvision backbone's state_dict saved with torch.save(model.state_dict(), PATH)"

# torchvision's original ImageNet weights; ECN's official code used ResNet-50 "V1".
_PRETRAINED_TAG = "IMAGENET1K_V1"


# Auxiliary outputs of one pass: {aux_name: {stage: aux}}, stages in network order.
StageAux = dict[str, dict[str, Any]]


class AuxModule(Protocol):
    """An inserted module that returns auxiliary outputs of a pass along with its output.

    ``forward_with_aux(x)`` returns what ``forward(x)`` returns and the aux of this pass (None: nothing this
    pass, e.g. in eval); the backbone collects it under ``aux_name``, keyed by the stage the module follows.
    The module keeps nothing of the pass.
    """

    aux_name: str

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]: ...


def _aux_name(module: nn.Module) -> str | None:
    """``module``'s aux_name when it follows the :class:`AuxModule` protocol, else None."""
    return module.aux_name if callable(getattr(module, "forward_with_aux", None)) else None


def _run_inserted(module: nn.Module, x: torch.Tensor, stage: str, aux: StageAux) -> torch.Tensor:
    """``module`` on ``x``; an :class:`AuxModule`'s aux goes into ``aux[aux_name][stage]``."""
    name = _aux_name(module)
    if name is None:
        return module(x)
    x, extra = module.forward_with_aux(x)
    if extra is not None:
        aux.setdefault(name, {})[stage] = extra
    return x


def _resnet_stages(network: nn.Module) -> OrderedDict[str, nn.Module]:
    stem = nn.Sequential(OrderedDict(conv1=network.conv1, bn1=network.bn1, relu=network.relu, maxpool=network.maxpool))
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=stem)
    for name in STAGE_NAMES[1:]:
        stages[name] = getattr(network, name)
    return stages


def _mobilenet_v2_stages(network: nn.Module) -> OrderedDict[str, nn.Module]:
    # Slicing a Sequential keeps the original child keys ("14", "15", ...), so the modules are shared.
    features = network.features
    bounds = {"stem": (0, 2), "layer1": (2, 4), "layer2": (4, 7), "layer3": (7, 14), "layer4": (14, 19)}
    return OrderedDict((name, features[start:stop]) for name, (start, stop) in bounds.items())


def _split_stages(arch: str, network: nn.Module) -> OrderedDict[str, nn.Module]:
    return _mobilenet_v2_stages(network) if arch == "mobilenet_v2" else _resnet_stages(network)


def _last_downsampling_block(arch: str, network: nn.Module) -> nn.Module:
    """The block of the last stage that halves the resolution."""
    return network.features[14] if arch == "mobilenet_v2" else network.layer4[0]


def _stage_out_channels(stage: nn.Module) -> int:
    # Every stage of these networks ends with a BatchNorm2d whose width is the stage's output width.
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features


class Backbone(nn.Module):
    """A torchvision network as ordered, named stages returning the last feature map [B, C, h, w].

    ``stages`` holds the (shared) torchvision modules; ``inserted`` holds, per stage, the modules added
    with :meth:`insert_after`. The wrapped torchvision model stays reachable as :attr:`network`, so its
    own parameter names (``layer4.0.conv2.weight``, ``features.14.conv.1.0.weight``) still load.
    """

    stage_names: tuple[str, ...] = STAGE_NAMES

    def __init__(self, arch: str, network: nn.Module) -> None:
        super().__init__()
        self.arch = arch
        self.stages = nn.ModuleDict(_split_stages(arch, network))
        self.inserted = nn.ModuleDict({name: nn.ModuleList() for name in self.stage_names})
        self.stage_channels: dict[str, int] = {name: _stage_out_channels(stage) for name, stage in self.stages.items()}
        self.out_channels: int = self.stage_channels[self.stage_names[-1]]
        # Where the initial weights came from (set by build_backbone): written into config.json and metrics.json.
        self.weights_origin: dict[str, str] = {"kind": "random"}
        # Not registered as a submodule: its parameters are already registered through `stages`, and
        # registering it too would duplicate them (and the unused classifier) in the state_dict.
        object.__setattr__(self, "_network", network)

    @property
    def network(self) -> nn.Module:
        """The wrapped torchvision model (shares its modules with :attr:`stages`)."""
        return self._network

    @property
    def last_stride(self) -> int:
        """The stride of the last stage as built: 1 when its down-sampling block no longer halves the map."""
        block = _last_downsampling_block(self.arch, self.network)
        return 2 if any(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in block.modules()) else 1

    def insert_after(self, stage: str, module: nn.Module) -> None:
        """Run ``module`` on the output of ``stage``; several modules per stage run in insertion order.

        A module with a ``forward_domains`` method sees all domains' batches at once in
        :meth:`forward_domains`; an :class:`AuxModule` hands out auxiliary outputs (at most one per
        ``aux_name`` and stage, which keys them). A module cannot be both.
        """
        if stage not in self.inserted:
            raise ValueError(f"unknown backbone stage {stage!r}; valid stages: {', '.join(self.stage_names)}")
        if callable(getattr(module, "forward_with_aux", None)):
            name = getattr(module, "aux_name", None)
            if not isinstance(name, str) or not name:
                raise ValueError(f"{type(module).__name__} has forward_with_aux but no aux_name string")
            if getattr(module, "forward_domains", None) is not None:
                raise ValueError(
                    f"{type(module).__name__}: an inserted module has forward_with_aux or forward_domains, not both"
                )
            if any(_aux_name(other) == name for other in self.inserted[stage]):
                raise ValueError(f"stage {stage!r} already has a module with {name!r} outputs; one per stage")
        self.inserted[stage].append(module)

    def aux_modules(self, aux_name: str) -> dict[str, nn.Module]:
        """The inserted :class:`AuxModule` of each stage whose outputs come under ``aux_name``, by stage,
        in network order: the keys of that name's aux in :meth:`forward_with_aux`'s output."""
        return {
            stage: module
            for stage, modules in self.inserted.items()
            for module in modules
            if _aux_name(module) == aux_name
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] image batch -> [B, out_channels, h, w] feature map."""
        for name in self.stage_names:
            x = self.stages[name](x)
            for module in self.inserted[name]:
                x = module(x)
        return x

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, StageAux]:
        """:meth:`forward`, and the auxiliary outputs of the inserted :class:`AuxModule` s of this pass as
        ``{aux_name: {stage: aux}}`` (empty when none gave any)."""
        aux: StageAux = {}
        for name in self.stage_names:
            x = self.stages[name](x)
            for module in self.inserted[name]:
                x = _run_inserted(module, x, name, aux)
        return x, aux

    def forward_domains(self, batches: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[StageAux]]:
        """Several domains' batches side by side: every stage runs on each batch separately (BatchNorm
        statistics stay per domain), and an inserted module with a ``forward_domains`` method (cross-domain
        MixStyle) sees all batches at once. Returns one feature map per batch, in order, and each batch's
        auxiliary outputs as in :meth:`forward_with_aux`."""
        xs = list(batches)
        auxes: list[StageAux] = [{} for _ in xs]
        for name in self.stage_names:
            xs = [self.stages[name](x) for x in xs]
            for module in self.inserted[name]:
                across = getattr(module, "forward_domains", None)
                if across is not None:
                    xs = across(xs)
                else:
                    xs = [_run_inserted(module, x, name, aux) for x, aux in zip(xs, auxes, strict=True)]
        return xs, auxes


def _download_failure(error: BaseException) -> str:
    """Why a download failed, without the exception's class: the URL error's reason, else its first line."""
    reason = getattr(error, "reason", None)  # URLError: the socket error or a message
    text = str(getattr(reason, "strerror", None) or reason or error).strip()
    return text.splitlines()[0] if text else "no connection"


class _HeldStream:
    """Stands in for stdout or stderr while torch downloads weights: stdout's text (torch's "Downloading: URL"
    line, written before it connects) is held until the download shows progress on stderr or succeeds, so a
    machine offline sees the one-line error alone."""

    def __init__(self, stream: Any, held: list[str] | None, release: Callable[[], None]) -> None:
        self._stream, self._held, self._release = stream, held, release

    def write(self, text: str) -> int:
        if self._held is not None:
            self._held.append(text)
            return len(text)
        self._release()
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _download_notice_held_back() -> Iterator[None]:
    held: list[str] = []
    stdout, stderr = sys.stdout, sys.stderr

    def release() -> None:
        if held:
            stdout.write("".join(held))
            held.clear()

    sys.stdout = _HeldStream(stdout, held, release)  # type: ignore[assignment]
    sys.stderr = _HeldStream(stderr, None, release)  # type: ignore[assignment]
    try:
        yield
    except BaseException:
        held.clear()
        raise
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        release()


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a plain state_dict, or a checkpoint holding one under ``state_dict`` / ``model``."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(torch.is_tensor(v) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise EcnreidError(f"{path}: not a state_dict (expected a non-empty dict of tensors)")
    non_tensors = [str(k) for k, v in obj.items() if not torch.is_tensor(v)]
    if non_tensors:
        raise EcnreidError(f"{path}: not a state_dict; non-tensor entries: {', '.join(non_tensors[:5])}")
    state = {str(k): v for k, v in obj.items()}
    # Weights saved from an nn.DataParallel wrapper carry a "module." prefix on every key.
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _offending(keys: list[str]) -> str:
    shown = ", ".join(keys[:4])
    return f"{shown} (+{len(keys) - 4} more)" if len(keys) > 4 else shown


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_backbone_weights(network: nn.Module, weights: Path, arch: str) -> None:
    """Load a torchvision-layout state_dict into ``network``; only the ImageNet classifier may be missing."""
    weights = Path(weights)
    loaded = load_torch_file(weights, "torch state_dict file", weights_only=True, option="--weights",
                             expected=STATE_DICT_EXPECTED)
    state = _unwrap_state_dict(loaded, weights)
    expected = network.state_dict()
    missing = [
        k
        for k in expected
        if k not in state and not k.startswith(_CLASSIFIER_PREFIXES) and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys: {_offending(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys: {_offending(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch in {len(mismatched)} tensors: {_offending(mismatched)}")
    if problems:
        raise EcnreidError(f"--weights {weights}: does not fit {arch}; " + "; ".join(problems))
    network.load_state_dict(state, strict=False)


def _set_last_stride_one(arch: str, network: nn.Module) -> None:
    # Bottleneck puts the stride on conv2, BasicBlock on conv1, MobileNetV2 on the depthwise conv;
    # every strided conv of the block (the shortcut's included) must change together.
    block = _last_downsampling_block(arch, network)
    strided = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    for conv in strided:
        conv.stride = (1, 1)
    if hasattr(block, "stride"):
        block.stride = 1


def build_backbone(
    arch: str = "resnet50",
    *,
    weights: Path | None = None,
    pretrained: bool = True,
    last_stride: int = 2,
) -> Backbone:
    """Build a named-stage backbone initialised from ``weights`` (a torchvision state_dict file), else from
    torchvision's ImageNet weights (``pretrained``, downloaded once into torch's cache), else at random; last
    stride 2 (ECN) or 1. :attr:`Backbone.weights_origin` records which."""
    if arch not in ARCHITECTURES:
        raise EcnreidError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    if last_stride not in (1, 2):
        raise EcnreidError(f"last stride must be 1 or 2, got {last_stride}")
    if weights is not None and not pretrained:
        raise EcnreidError("--weights PATH and --no-pretrained contradict each other: give one of them")
    if weights is not None:
        network = ARCHITECTURES[arch](weights=None)
        load_backbone_weights(network, weights, arch)
        origin: dict[str, str] = {"kind": "file", "path": str(weights), "sha256": file_sha256(Path(weights))}
    elif pretrained:
        try:
            with _download_notice_held_back():
                network = ARCHITECTURES[arch](weights=_PRETRAINED_TAG)
        except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad download fails its hash check
            raise EcnreidError(
                f"cannot download torchvision's ImageNet weights for {arch} ({_download_failure(error)}); "
                "give a local state_dict with --weights PATH, or start from random weights with --no-pretrained"
            ) from None
        origin = {"kind": "torchvision", "name": f"{arch}:{_PRETRAINED_TAG}"}
    else:
        network = ARCHITECTURES[arch](weights=None)
        origin = {"kind": "random"}
    if last_stride == 1:
        _set_last_stride_one(arch, network)
    backbone = Backbone(arch, network)
    backbone.weights_origin = origin
    return backbone
