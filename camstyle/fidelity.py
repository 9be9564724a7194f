"""CamStyle fidelity (``ecnreid prepare --check DIR --score``): does a CamStyle set carry the target cameras'
style, and does it keep the person? Minutes on a CPU instead of a training run.

Camera fidelity. A *camera probe* learns the camera of real target training images and then classifies
(a) held-out real images: the ceiling, how well cameras can be told apart at all in these features;
(b) every fake, against the camera it was made for: the camera fidelity, the main number;
and counts how often a fake is still classified as its original camera.

The probe is multinomial logistic regression on frozen, pooled ImageNet features (``--arch``), fitted by
full-batch L-BFGS with balanced class weights and a small L2 penalty. It costs one forward pass and seconds of
fitting, needs no tuning, and reads the cameras from the kind of features ECN's network starts from, so a fake
it cannot place is likely one the re-ID network does not see as the other camera either. A small CNN trained
from scratch would also see texture and blur, at the price of minutes of training and choices of its own.
Pooled deep features are partly colour-invariant, so the same probe on hand-made colour and sharpness
statistics (per-channel mean, spread and quantiles; gradient energy) stands beside it to explain results.

Split. The identities are split, not the images: the probe learns from images of about 70 % of the training
identities, the scored originals are images of the rest. Ceiling and fidelity are measured on the same
originals (the fakes are made from them).

Identity kept: cosine similarity of re-ID features between each fake and its original, beside that of the
same person in two cameras and of different people in one camera, all among the scored originals. The
identities come from the file names and serve this diagnosis only. Features: ``--checkpoint``'s adapted model
(``ecnreid.inference.adapted``), else the frozen backbone's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from camstyle.check import CamStyleSet
from camstyle.fidelity_config import FidelityConfig
from ecnreid.config import config_to_dict
from ecnreid.data.camstyle_names import camstyle_path
from ecnreid.data.image_dataset import ImageDataset
from ecnreid.data.records import ImageRecord
from ecnreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform
from ecnreid.errors import EcnreidError
from ecnreid.progress import make_progress
from ecnreid.runtime import resolve_device, seed_everything

PROBE_KIND = "linear probe: multinomial logistic regression on frozen pooled ImageNet features (L-BFGS)"
PROBE_WHY = (
    "one forward pass and seconds of fitting, no tuning; it reads cameras from the features a re-ID network "
    "starts from (pooled features are partly colour-invariant: see the colour/sharpness statistics probe)"
)
HELD_OUT_SHARE = 0.3  # of the identities: their images are scored, the others' teach the probe
PER_PERSON = 4  # scored originals per person, from as many cameras as it has: same-person pairs across cameras
PROBE_STEPS = 300  # L-BFGS iterations (converges well before on a few thousand vectors)
PROBE_L2 = 1e-2  # on standardised features: keeps a probe with more dimensions than images from memorising


@dataclass(frozen=True)
class Sample:
    """The images scored: the probe's real images, the originals, and the fakes (camid = the camera each was
    made for) with the index of their original."""

    probe: list[ImageRecord]
    originals: list[ImageRecord]
    fakes: list[ImageRecord]
    fake_source: torch.Tensor


def draw_sample(found: CamStyleSet, probe_images: int, score_images: int, seed: int) -> Sample:
    """Split the identities, pick the probe's images and the originals, and name each original's fakes."""
    records = found.records
    ids = sorted({r.pid for r in records})
    if len(ids) < 2:
        raise EcnreidError(f"{found.camstyle_dir}: scoring needs training images of 2 people or more, not {len(ids)}")
    rng = np.random.default_rng(seed)
    shuffled = [ids[i] for i in rng.permutation(len(ids))]
    held_rank = {pid: rank for rank, pid in enumerate(shuffled[: max(1, round(HELD_OUT_SHARE * len(ids)))])}
    order = rng.permutation(len(records))
    taught = [int(i) for i in order if records[i].pid not in held_rank][:probe_images]
    # Each held-out person in turn: first one image per camera, then a second per camera, and so on.
    seen: dict[tuple[int, int], int] = {}
    keys = []
    for position, index in enumerate(order):
        record = records[index]
        if record.pid in held_rank:
            turn = seen.get((record.pid, record.camid), 0)
            seen[(record.pid, record.camid)] = turn + 1
            keys.append((held_rank[record.pid], turn, position, int(index)))
    per_person: dict[int, int] = {}
    chosen = []
    for rank, _, _, index in sorted(keys):
        if per_person.get(rank, 0) < PER_PERSON and len(chosen) < score_images:
            per_person[rank] = per_person.get(rank, 0) + 1
            chosen.append(index)
    originals = [records[i] for i in chosen]
    fakes, source = [], []
    for j, record in enumerate(originals):
        for target in range(found.num_cameras):
            if target != record.camid:
                path = camstyle_path(found.camstyle_dir, record, target, found.scheme)
                fakes.append(ImageRecord(str(path), record.pid, target))
                source.append(j)
    _require_present(found.camstyle_dir, fakes)
    return Sample([records[i] for i in sorted(taught)], originals, fakes, torch.tensor(source, dtype=torch.long))


def _require_present(camstyle_dir: Path, fakes: Sequence[ImageRecord]) -> None:
    present = {entry.name for entry in os.scandir(camstyle_dir) if entry.is_file()}
    missing = [Path(r.path).name for r in fakes if Path(r.path).name not in present]
    if missing:
        raise EcnreidError(
            f"{camstyle_dir}: {len(missing)} of the {len(fakes)} CamStyle images to score are missing (first: "
            f"{missing[0]}); complete the set with `ecnreid prepare`, or list what is missing with --check alone"
        )


def camera_statistics(images: torch.Tensor) -> torch.Tensor:
    """Hand-made camera cues of images ``[B, 3, H, W]`` in [0, 1]: per-channel mean, spread and 10/50/90 %
    quantiles, and the horizontal and vertical gradient energy of the grey image (sharpness, noise) → ``[B, 17]``."""
    flat = images.flatten(2)
    quantiles = torch.quantile(flat, torch.tensor([0.1, 0.5, 0.9], device=images.device), dim=2)
    grey = images.mean(dim=1)
    sharp_x = (grey[:, :, 1:] - grey[:, :, :-1]).abs().mean(dim=(1, 2))
    sharp_y = (grey[:, 1:, :] - grey[:, :-1, :]).abs().mean(dim=(1, 2))
    parts = [flat.mean(2), flat.std(2), quantiles.permute(1, 0, 2).flatten(1), sharp_x[:, None], sharp_y[:, None]]
    return torch.cat(parts, dim=1)


def _batches(
    records: Sequence[ImageRecord], transform: Any, config: FidelityConfig, description: str, show: bool
) -> Iterator[torch.Tensor]:
    """Image batches of ``records`` in order (``transform``: a test transform), with a progress bar."""
    loader = DataLoader(ImageDataset(records, transform), batch_size=config.batch_size, num_workers=config.workers)
    with make_progress(transient=True) as bar:
        task = bar.add_task(description, total=len(records), unit="img", info="", visible=show)
        for images, *_ in loader:
            yield images
            bar.update(task, advance=len(images))


@torch.no_grad()
def frozen_features(
    backbone: torch.nn.Module, records: Sequence[ImageRecord], config: FidelityConfig, device: torch.device,
    show: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone features ``[N, D]`` and camera statistics ``[N, 17]`` of ``records`` (one pass, on the CPU)."""
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()
    pooled, stats = [], []
    transform = build_test_transform(config.height, config.width)
    for images in _batches(records, transform, config, "fidelity features", show):
        images = images.to(device)
        with autocast:
            pooled.append(backbone(images).float().mean(dim=(2, 3)).cpu())
        stats.append(camera_statistics((images * std + mean).clamp(0, 1)).cpu())
    return torch.cat(pooled), torch.cat(stats)


@dataclass(frozen=True)
class LinearProbe:
    """Multinomial logistic regression on standardised features."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return (((features - self.mean) / self.scale) @ self.weight + self.bias).argmax(dim=1)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> LinearProbe:
    """Fit the probe by full-batch L-BFGS; classes are weighted by inverse frequency, so that a camera's share
    of the training images does not decide between cameras."""
    features = features.double()  # the fit is tiny; double precision keeps it the same on every CPU
    mean, spread = features.mean(dim=0), features.std(dim=0)
    scale = torch.where(spread > 0, spread, torch.ones_like(spread))  # a constant feature stays 0
    standard = (features - mean) / scale
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).double()
    class_weight = counts.sum() / (num_classes * counts)
    weight = torch.zeros(features.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=PROBE_STEPS, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(standard @ weight + bias, labels, weight=class_weight) + PROBE_L2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(mean, scale, weight.detach(), bias.detach())


def _share(hits: torch.Tensor) -> float | None:
    return round(float(hits.double().mean()), 4) if hits.numel() else None


def camera_scores(
    probe: LinearProbe, probe_train: tuple[torch.Tensor, torch.Tensor], originals: torch.Tensor,
    fakes: torch.Tensor, sample: Sample, num_cameras: int,
) -> dict[str, Any]:
    """Accuracies of ``probe`` on its training images, the held-out originals (ceiling) and the fakes."""
    own = torch.tensor([r.camid for r in sample.originals])
    target = torch.tensor([r.camid for r in sample.fakes])
    real_pred, fake_pred = probe.predict(originals.double()), probe.predict(fakes.double())
    fake_own = own[sample.fake_source]
    confusion = torch.zeros(num_cameras, num_cameras, dtype=torch.long)
    confusion.index_put_((target, fake_pred), torch.ones_like(target), accumulate=True)
    per_camera = [
        {
            "camera": c + 1,
            "real_accuracy": _share(real_pred[own == c] == c),
            "fake_accuracy": _share(fake_pred[target == c] == c),
            "fake_still_original": _share((fake_pred == fake_own)[target == c]),
            "fakes": int((target == c).sum()),
        }
        for c in range(num_cameras)
    ]
    return {
        "probe_train_accuracy": _share(probe.predict(probe_train[0].double()) == probe_train[1]),
        "real_accuracy": _share(real_pred == own),
        "fake_accuracy": _share(fake_pred == target),
        "fake_still_original": _share(fake_pred == fake_own),
        "chance": round(1 / num_cameras, 4),
        "per_camera": per_camera,
        "fake_confusion": confusion.tolist(),
        "predicted": {"originals": real_pred, "fakes": fake_pred},
    }


def _pairs(values: torch.Tensor) -> dict[str, Any]:
    if not values.numel():
        return {"mean": None, "std": None, "pairs": 0}
    std = float(values.std()) if values.numel() > 1 else 0.0
    return {"mean": round(float(values.mean()), 4), "std": round(std, 4), "pairs": int(values.numel())}


def identity_scores(originals: torch.Tensor, fakes: torch.Tensor, sample: Sample) -> dict[str, Any]:
    """Cosine similarities (unit features) of fake–original pairs, same-person pairs across cameras and
    different-person pairs in one camera (the last two among the originals, each pair once)."""
    originals, fakes = F.normalize(originals.double(), dim=1), F.normalize(fakes.double(), dim=1)
    pids = torch.tensor([r.pid for r in sample.originals])
    cams = torch.tensor([r.camid for r in sample.originals])
    similarity = originals @ originals.T
    upper = torch.ones_like(similarity, dtype=torch.bool).triu(diagonal=1)
    same_pid, same_cam = pids[:, None] == pids[None, :], cams[:, None] == cams[None, :]
    return {
        "fake_vs_original": _pairs((fakes * originals[sample.fake_source]).sum(dim=1)),
        "same_person_other_camera": _pairs(similarity[upper & same_pid & ~same_cam]),
        "other_person_same_camera": _pairs(similarity[upper & ~same_pid & same_cam]),
    }


def _identity_features(
    config: FidelityConfig, sample: Sample, frozen: torch.Tensor, device: torch.device, show: bool
) -> tuple[torch.Tensor, str]:
    """Re-ID features of originals then fakes: ``--checkpoint``'s adapted model, else the frozen ones given."""
    if config.checkpoint is None:
        return frozen, "frozen backbone (as the camera probe)"
    from ecnreid.evaluation.features import embed
    from ecnreid.inference.adapted import load_adapted_model

    adapted = load_adapted_model(config.checkpoint).to(device)
    card = adapted.card
    transform = build_test_transform(card.input_height, card.input_width, card.mean, card.std)
    batches = _batches([*sample.originals, *sample.fakes], transform, config, "identity features", show)
    chunks = [embed(adapted.network, images.to(device)).cpu() for images in batches]
    name = f"checkpoint {config.checkpoint} ({card.arch}, {card.setting or card.method}, {card.source}→{card.target})"
    return torch.cat(chunks), name


def score_fidelity(
    config: FidelityConfig, found: CamStyleSet, *, progress: bool = True
) -> tuple[dict[str, Any], Sample, dict[str, torch.Tensor]]:
    """Score the CamStyle set ``found``: the summary (what ``fidelity.json`` holds), the sample it scored and
    the camera probe's verdicts on its originals and fakes. Writes nothing."""
    from ecnreid.models.backbones import build_backbone

    started = time.perf_counter()
    if found.num_cameras < 2:
        raise EcnreidError(f"{found.camstyle_dir}: the training images are all in one camera; nothing to score")
    sample = draw_sample(found, config.probe_images, config.score_images, config.runtime.seed)
    device = resolve_device(config.runtime.device)
    seed_everything(config.runtime.seed)  # random weights (--no-pretrained) follow the seed
    backbone = build_backbone(config.arch, weights=config.weights, pretrained=config.pretrained).to(device).eval()
    origin = backbone.weights_origin
    backbone_name = f"{config.arch} ({origin.get('name') or origin.get('path') or 'random weights'})"
    records = [*sample.probe, *sample.originals, *sample.fakes]
    pooled, stats = frozen_features(backbone, records, config, device, progress)
    n_probe, n_orig = len(sample.probe), len(sample.originals)
    labels = torch.tensor([r.camid for r in sample.probe])
    cameras: dict[str, dict[str, Any]] = {}
    for kind, features in (("deep", pooled), ("statistics", stats)):
        taught, originals, fakes = features.split([n_probe, n_orig, len(sample.fakes)])
        probe = fit_probe(taught, labels, found.num_cameras)
        cameras[kind] = camera_scores(probe, (taught, labels), originals, fakes, sample, found.num_cameras)
    verdicts = cameras["deep"].pop("predicted")
    cameras["statistics"].pop("predicted")
    identity, identity_model = _identity_features(config, sample, pooled[n_probe:], device, progress)
    summary: dict[str, Any] = {
        "camstyle_dir": str(found.camstyle_dir),
        "dataset": found.dataset,
        "scheme": found.scheme,
        "cameras": found.num_cameras,
        "sample": {
            "probe_images": n_probe,
            "probe_people": len({r.pid for r in sample.probe}),
            "originals": n_orig,
            "original_people": len({r.pid for r in sample.originals}),
            "fakes": len(sample.fakes),
            "seed": config.runtime.seed,
        },
        "camera_probe": {"classifier": PROBE_KIND, "why": PROBE_WHY, "features": backbone_name, **cameras["deep"]},
        "statistics_probe": {"features": "colour and sharpness statistics (17 per image)", **cameras["statistics"]},
        "identity": {"model": identity_model, **identity_scores(identity[:n_orig], identity[n_orig:], sample)},
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 3),
        "config": config_to_dict(config),
    }
    return summary, sample, verdicts
