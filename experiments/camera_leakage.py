"""Diagnosis only: how much of the camera the test features of a model still carry (lower is more invariant).

For each model (trained checkpoints, ``--run LABEL=CHECKPOINT``, and the ImageNet-only backbone as a reference
row, ``--weights FILE --arch NAME``), extracts the test feature of the target's query and gallery images (pool5,
L2-normalised, with the input size and normalisation of the checkpoint's model card, as ``ecnreid eval`` does)
and reports

- a linear camera probe: multinomial logistic regression (``camstyle.fidelity.fit_probe``) taught the camera
  of the images of one half of the identities and tested on the other half (identities split at random with a
  fixed seed; person id 0, Market's distractors, has no identity to keep apart and stays out). Its test
  accuracy, balanced accuracy (mean of the per-camera accuracies; the probe weights cameras equally) and the
  chance level 1 / cameras: a probe near chance finds no camera in the features;
- the neighbours' other-camera share: for each query, the share of its k nearest gallery images (cosine) taken
  in another camera than the query's, beside the gallery's own share (what camera-blind features would give),
  and, among the true matches found in the top k, the share in another camera, beside the gallery's.

The person ids split the probe's images and count matches here only; nothing is selected with them. Nothing
is removed from the gallery (the ranking protocol ignores same-camera true matches; here they are what is
counted).

    python experiments/camera_leakage.py --dataset market1501 --root DIR \\
        --run "+E+C+N=runs/budget/ECN/last.pt" --weights mobilenet_v2_imagenet_features.pth \\
        --arch mobilenet_v2 --height 128 --width 64 --out leakage.json --png leakage.png

``--root`` defaults to ``$ECNREID_DATA/<dataset>``.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from neighbour_precision import dataset_root  # noqa: E402
from script_errors import refuse_bad_input  # noqa: E402

from camstyle.fidelity import fit_probe  # noqa: E402
from ecnreid.data.datasets import read_dataset  # noqa: E402
from ecnreid.data.records import ImageRecord  # noqa: E402
from ecnreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from ecnreid.errors import EcnreidError  # noqa: E402
from ecnreid.evaluation.distances import iter_distance_blocks  # noqa: E402
from ecnreid.evaluation.features import extract_features  # noqa: E402
from ecnreid.inference.adapted import load_adapted_model  # noqa: E402
from ecnreid.io import atomic_write_bytes, write_json  # noqa: E402
from ecnreid.models.backbones import build_backbone  # noqa: E402
from ecnreid.models.pooled import PooledBackbone  # noqa: E402

DISTRACTOR_PID = 0  # Market-1501's distractors: images of no person, left out of the identity split


@dataclass
class FeatureModel:
    """A network mapping normalised images to unit features, and the input it takes."""

    label: str
    network: torch.nn.Module
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: dict[str, Any]


def labelled_checkpoint(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=CHECKPOINT")
    return label, Path(path)


def checkpoint_model(label: str, path: Path) -> FeatureModel:
    """The adapted model of an ecnreid checkpoint, at the input its model card states."""
    adapted = load_adapted_model(path, option="--run")
    card = adapted.card
    source = {"checkpoint": str(path), "arch": card.arch, "setting": card.setting, "epoch": card.epoch}
    return FeatureModel(label, adapted.network, card.input_height, card.input_width, card.mean, card.std, source)


def imagenet_model(label: str, arch: str, weights: Path | None, height: int, width: int) -> FeatureModel:
    """The bare backbone (``--weights`` file, else torchvision's ImageNet weights), pooled as ``ecnreid eval``."""
    backbone = build_backbone(arch, weights=weights, pretrained=True)
    source = {"arch": arch, "weights": backbone.weights_origin}
    return FeatureModel(label, PooledBackbone(backbone).eval(), height, width, IMAGENET_MEAN, IMAGENET_STD, source)


def features_of(
    model: FeatureModel, records: Sequence[ImageRecord], batch_size: int, workers: int, show: bool = True
) -> torch.Tensor:
    return extract_features(
        model.network, records, height=model.height, width=model.width, mean=model.mean, std=model.std,
        batch_size=batch_size, workers=workers, description=f"{model.label} features", show_progress=show,
    )


def identity_halves(pids: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks (teach, test) over images: the identities shuffled with ``seed`` and cut in two halves;
    distractor images are in neither."""
    ids = sorted(set(pids.tolist()) - {DISTRACTOR_PID})
    if len(ids) < 2:
        raise EcnreidError(f"the camera probe needs images of 2 people or more, found {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    taught = torch.tensor([ids[i] for i in order[: len(ids) // 2]])
    teach = torch.isin(pids, taught)
    return teach, ~teach & (pids != DISTRACTOR_PID)


def _share(hits: torch.Tensor) -> float | None:
    return round(float(hits.double().mean()), 4) if hits.numel() else None


def camera_probe(
    features: torch.Tensor, pids: torch.Tensor, cams: torch.Tensor, num_cameras: int, seed: int = 0
) -> dict[str, Any]:
    """The linear camera probe taught on one half of the identities and tested on the other."""
    teach, test = identity_halves(pids, seed)
    probe = fit_probe(features[teach], cams[teach], num_cameras)
    predicted = probe.predict(features[test].double())
    truth = cams[test]
    per_camera = [float((predicted[truth == c] == c).double().mean()) for c in truth.unique().tolist()]
    counts = torch.bincount(truth, minlength=num_cameras)
    return {
        "accuracy": _share(predicted == truth),
        "balanced_accuracy": round(float(np.mean(per_camera)), 4),
        "chance": round(1 / num_cameras, 4),
        "majority": round(float(counts.max()) / len(truth), 4),
        "train_accuracy": _share(probe.predict(features[teach].double()) == cams[teach]),
        "taught_images": int(teach.sum()),
        "tested_images": int(test.sum()),
        "taught_people": len(set(pids[teach].tolist())),
        "tested_people": len(set(pids[test].tolist())),
    }


@torch.no_grad()
def neighbour_camera_share(
    query: torch.Tensor, gallery: torch.Tensor, query_ids: tuple[torch.Tensor, torch.Tensor],
    gallery_ids: tuple[torch.Tensor, torch.Tensor], k: int = 10,
) -> dict[str, Any]:
    """Other-camera shares of each query's k nearest gallery images (``*_ids``: person and camera ids)."""
    (qp, qc), (gp, gc) = query_ids, gallery_ids
    k = min(k, len(gallery))
    other_in_topk, true_in_topk, true_other_in_topk = [], [], []
    for start, distances in iter_distance_blocks(query, gallery, "cosine", block_size=1024):
        top = distances.topk(k, dim=1, largest=False).indices
        rows = slice(start, start + len(top))
        other = gc[top] != qc[rows, None]
        true = gp[top] == qp[rows, None]
        other_in_topk.append(other.double().mean(dim=1))
        true_in_topk.append(true.sum(dim=1))
        true_other_in_topk.append((true & other).sum(dim=1))
    other_share = torch.cat(other_in_topk)
    found, found_other = torch.cat(true_in_topk), torch.cat(true_other_in_topk)
    # The gallery's own shares per query, from counts per camera and per (person, camera): no [Q, G] matrix.
    cameras = int(max(qc.max(), gc.max())) + 1
    per_camera = torch.bincount(gc, minlength=cameras)
    gallery_other = 1 - per_camera[qc].double() / len(gc)
    people, person = torch.unique(torch.cat([qp, gp]), return_inverse=True)
    q_person, g_person = person[: len(qp)], person[len(qp) :]
    per_person = torch.bincount(g_person, minlength=len(people))
    per_person_camera = torch.bincount(g_person * cameras + gc, minlength=len(people) * cameras)
    matches = per_person[q_person]
    matches_other = matches - per_person_camera[q_person * cameras + qc]
    return {
        "k": k,
        "topk_other_camera": round(float(other_share.mean()), 4),
        "gallery_other_camera": round(float(gallery_other.mean()), 4),
        "topk_true_per_query": round(float(found.double().mean()), 3),
        "true_found_other_camera": round(float(found_other.sum()) / max(int(found.sum()), 1), 4),
        "true_in_gallery_other_camera": round(int(matches_other.sum()) / max(int(matches.sum()), 1), 4),
        "queries": len(query),
    }


def _ids(records: Sequence[ImageRecord]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([r.pid for r in records]), torch.tensor([r.camid for r in records])


def diagnose(
    model: FeatureModel, query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], num_cameras: int, *,
    k: int, seed: int, batch_size: int, workers: int, show: bool = True,
) -> dict[str, Any]:
    """The probe and neighbour figures of one model, with its extraction and scoring times."""
    started = time.perf_counter()
    features = features_of(model, [*query, *gallery], batch_size, workers, show)
    extracted = time.perf_counter()
    (qp, qc), (gp, gc) = _ids(query), _ids(gallery)
    probe = camera_probe(features, torch.cat([qp, gp]), torch.cat([qc, gc]), num_cameras, seed)
    neighbours = neighbour_camera_share(features[: len(query)], features[len(query) :], (qp, qc), (gp, gc), k)
    return {
        "label": model.label,
        "model": model.source,
        "input": f"{model.height}x{model.width}",
        "feature_dim": int(features.shape[1]),
        "camera_probe": probe,
        "neighbours": neighbours,
        "seconds": {"features": round(extracted - started, 1), "scores": round(time.perf_counter() - extracted, 1)},
    }


def render_table(rows: Sequence[dict[str, Any]], k: int) -> Any:
    from rich.table import Table

    table = Table(title="Camera leakage (probe: identity-disjoint halves; lower is more camera-invariant)")
    columns = (
        "model", "probe acc", "balanced", "chance", f"top-{k} other cam", "gallery other cam",
        f"true in top-{k}", "true: other cam", "gallery true: other cam",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        p, n = row["camera_probe"], row["neighbours"]
        table.add_row(
            row["label"],
            *(f"{100 * p[key]:.1f}" for key in ("accuracy", "balanced_accuracy", "chance")),
            *(f"{100 * n[key]:.1f}" for key in ("topk_other_camera", "gallery_other_camera")),
            f"{n['topk_true_per_query']:.2f}",
            *(f"{100 * n[key]:.1f}" for key in ("true_found_other_camera", "true_in_gallery_other_camera")),
        )
    return table


def bar_chart(rows: Sequence[dict[str, Any]], path: Path, k: int) -> None:
    """Grouped bars (per model) of the probe's balanced accuracy and the top-k other-camera shares, in %."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bars = {
        "probe balanced accuracy": [r["camera_probe"]["balanced_accuracy"] for r in rows],
        f"top-{k} neighbours in another camera": [r["neighbours"]["topk_other_camera"] for r in rows],
        f"true matches in top-{k} in another camera": [r["neighbours"]["true_found_other_camera"] for r in rows],
    }
    figure = Figure(figsize=(max(6.0, 2.2 * len(rows) + 2), 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(bars)
    x = np.arange(len(rows))
    for i, (name, values) in enumerate(bars.items()):
        axes.bar(x + (i - (len(bars) - 1) / 2) * width, [100 * v for v in values], width, label=name)
    chance = 100 * rows[0]["camera_probe"]["chance"]
    axes.axhline(chance, color="0.3", linestyle="--", linewidth=1, label=f"probe chance ({chance:.1f} %)")
    axes.set_xticks(x, [r["label"] for r in rows])
    axes.set_ylabel("%")
    axes.set_ylim(0, 125)  # headroom above 100 % for the legend
    axes.set_yticks(range(0, 101, 20))
    axes.set_title("Camera leakage of the test features")
    axes.legend(loc="upper center", ncol=2, fontsize="small")
    buffer = io.BytesIO()
    figure.canvas.print_png(buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=labelled_checkpoint, action="append", default=[], help="LABEL=CHECKPOINT")
    parser.add_argument("--weights", type=Path, help="ImageNet state_dict of the reference backbone (--arch)")
    parser.add_argument("--arch", help="reference row: the ImageNet-only backbone of this architecture")
    parser.add_argument("--reference-label", default="ImageNet only")
    parser.add_argument("--height", type=int, help="reference input height (default: the first run's card, else 256)")
    parser.add_argument("--width", type=int, help="reference input width (default: the first run's card, else 128)")
    parser.add_argument("--dataset", default="market1501")
    parser.add_argument("--root", type=Path, help="the dataset folder (default: $ECNREID_DATA/<dataset>)")
    parser.add_argument("--k", type=int, default=10, help="gallery neighbours per query")
    parser.add_argument("--seed", type=int, default=0, help="of the identity split")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--png", type=Path, help="bar chart to write (.png)")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The options, with their contradictions stopped before any work (one line, exit code 2)."""
    args = parser.parse_args(argv)
    if args.weights is not None and args.arch is None:
        parser.error("--weights needs --arch (the architecture the weights are for)")
    if not args.run and args.arch is None:
        parser.error("give at least one --run LABEL=CHECKPOINT or a reference backbone with --arch")
    if args.k < 1:
        parser.error(f"--k {args.k}: must be at least 1")
    if args.png is not None and args.png.suffix.lower() != ".png":
        parser.error(f"--png {args.png}: the name must end in .png")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parse_args(parser, argv)
    started = time.perf_counter()
    with refuse_bad_input(parser):
        dataset = read_dataset(args.dataset, dataset_root(args.root, args.dataset), require_test=True)
        models = [checkpoint_model(label, path) for label, path in args.run]
        if args.arch is not None:
            first = models[0] if models else None
            height = args.height or (first.height if first else 256)
            width = args.width or (first.width if first else 128)
            models.insert(0, imagenet_model(args.reference_label, args.arch, args.weights, height, width))
    rows = [
        diagnose(
            model, dataset.query, dataset.gallery, dataset.num_cameras,
            k=args.k, seed=args.seed, batch_size=args.batch_size, workers=args.workers,
        )
        for model in models
    ]
    report = {
        "dataset": args.dataset,
        "query": len(dataset.query),
        "gallery": len(dataset.gallery),
        "cameras": dataset.num_cameras,
        "k": args.k,
        "seed": args.seed,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    from rich.console import Console

    # The table is the script's output, on stdout; wide enough for its columns when stdout is a file.
    Console(width=None if sys.stdout.isatty() else 170).print(render_table(rows, args.k))
    if args.out is not None:
        write_json(report, args.out)
    if args.png is not None:
        bar_chart(rows, args.png, args.k)
    return report


if __name__ == "__main__":
    main()
