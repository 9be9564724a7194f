"""Render the fakes a fidelity score reads, for each camera-matching candidate (docs/camstyle_methods.md).

The score (``ecnreid prepare --check DIR --score``) reads only its sample's fakes: the originals it draws with
``--score-images`` and ``--seed`` and their renderings in every other camera. This script fits the camera
profiles once on all target training images, then writes exactly those fakes for each candidate into
``--out/camstyle_<dataset>_<candidate>`` (with the ``prepare.json`` that names the dataset), timing the fit and
the rendering. Score each folder with the same ``--score-images``/``--probe-images``/``--seed``:

    python experiments/camstyle_candidates.py --root DATA/market1501 --out runs/candidates
    ecnreid prepare --check runs/candidates/camstyle_market1501_tone_capture --score --arch mobilenet_v2 \
        --weights MOBILENET_V2_FILE --height 128 --width 64 --workers 2

Candidates: ``histogram`` (each image's Lab histograms matched to the camera's), ``tone`` (the own camera's
average Lab curves mapped to the target camera's), and each of them with the camera's capture (spectrum, noise,
JPEG quality): ``histogram_capture`` and ``tone_capture`` (what ``prepare --method capture`` makes). With
``--generator G.pt`` (a StarGAN checkpoint of ``ecnreid prepare``'s ``--work-dir``), also ``stargan``: the same
sample rendered by that generator, so a StarGAN is scored without generating its whole set.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_errors import refuse_bad_input  # noqa: E402

from camstyle.check import PREPARE_FILE, open_camstyle_set  # noqa: E402
from camstyle.colour import camera_styles, generate_colour_camstyle  # noqa: E402
from camstyle.fidelity import draw_real_images  # noqa: E402
from camstyle.generate import GenerationCounts, generate_camstyle, load_generator  # noqa: E402
from camstyle.matching import camera_profiles, generate_matched_camstyle  # noqa: E402
from camstyle.stargan import Generator, ModelSpec  # noqa: E402
from ecnreid.data.datasets import read_dataset  # noqa: E402
from ecnreid.data.records import ImageRecord  # noqa: E402
from ecnreid.errors import EcnreidError  # noqa: E402
from ecnreid.io import write_json  # noqa: E402

CANDIDATES = {  # name: (per_image, capture)
    "histogram": (True, False),
    "tone": (False, False),
    "histogram_capture": (True, True),
    "tone_capture": (False, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="target dataset folder")
    parser.add_argument("--dataset", default="market1501")
    parser.add_argument("--out", type=Path, required=True, help="parent folder of the candidates' folders")
    parser.add_argument(
        "--candidates", nargs="+", choices=[*CANDIDATES, "stargan"],
        help="default: every matching candidate, and stargan with --generator",
    )
    parser.add_argument("--score-images", type=int, default=600)
    parser.add_argument("--probe-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--generator", type=Path, help="also render the sample with this StarGAN checkpoint")
    parser.add_argument(
        "--time-images", type=int, default=0,
        help="instead: time colour and the candidates (fit and render) on this many images, one after another",
    )
    args = parser.parse_args()
    with refuse_bad_input(parser):
        run(args)


def run(args: argparse.Namespace) -> None:
    generator, spec = load_generator(args.generator) if args.generator else (None, None)
    names = args.candidates or [*CANDIDATES, *(["stargan"] if generator is not None else [])]
    if "stargan" in names and generator is None:
        raise EcnreidError("the stargan candidate renders with a trained generator: give --generator G.pt")
    dataset = read_dataset(args.dataset, args.root, require_test=False)
    records = list(dataset.train)
    num_cameras = max(r.camid for r in records) + 1
    if generator is not None and generator.num_cameras != num_cameras:
        raise EcnreidError(f"{args.generator}: the generator was trained for {generator.num_cameras} cameras, "
                           f"{args.root} has {num_cameras}; give the StarGAN of this dataset")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.time_images:
        time_methods(records, num_cameras, names, args, generator, spec)
        return
    cache = args.out / f"profiles_{args.dataset}.pt"
    timings: dict[str, float] = {}
    if names == ["stargan"]:
        profiles = None
    elif cache.is_file():
        profiles = torch.load(cache, weights_only=False)
    else:
        started = time.perf_counter()
        profiles = camera_profiles(records, num_cameras, workers=args.workers)
        timings["fit_seconds"] = round(time.perf_counter() - started, 1)
        torch.save(profiles, cache)
    for name in names:
        folder = args.out / f"camstyle_{args.dataset}_{name}"
        folder.mkdir(exist_ok=True)
        write_json({"dataset": dataset.name, "root": str(dataset.root), "method": name}, folder / PREPARE_FILE)
        found = open_camstyle_set(folder)
        index = {record.path: i for i, record in enumerate(found.records)}
        _, originals = draw_real_images(found, args.probe_images, args.score_images, args.seed)
        only = [index[r.path] for r in originals]
        started = time.perf_counter()
        if name == "stargan":
            counts = render_stargan(generator, spec, [found.records[i] for i in only], num_cameras, folder,
                                    args.workers)
        else:
            per_image, capture = CANDIDATES[name]
            counts, _ = generate_matched_camstyle(
                found.records, num_cameras, folder, profiles, seed=args.seed, per_image=per_image, capture=capture,
                only=only, workers=args.workers,
            )
        seconds = time.perf_counter() - started
        timings[name] = round(seconds, 1)
        print(json.dumps({"candidate": name, "written": counts.written, "seconds": round(seconds, 1),
                          "images": len(only)}), flush=True)
    print(json.dumps(timings))


def render_stargan(generator: Generator, spec: ModelSpec, records: list[ImageRecord], num_cameras: int,
                   folder: Path | str, workers: int, progress: bool = True) -> GenerationCounts:
    """The records in every other camera, by the generator at the input size it was trained at (as ``prepare``)."""
    return generate_camstyle(generator, records, num_cameras, folder, image_size=spec.image_size, workers=workers,
                             progress=progress)


def time_methods(records: list[ImageRecord], num_cameras: int, names: list[str], args: argparse.Namespace,
                 generator: Generator | None = None, spec: ModelSpec | None = None) -> None:
    """Fit and render a seeded slice of the training images with colour and each candidate (and the StarGAN
    generator's rendering, whose training is timed by ``prepare``); the seconds, and the same scaled to the
    whole training set (a fit reads every image once, a render writes C-1 fakes each)."""
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(args.seed)).tolist()
    chosen = [records[i] for i in order[: args.time_images]]
    scale = len(records) / len(chosen)
    results = []
    for name in ["colour", *names]:
        with tempfile.TemporaryDirectory(dir=args.out) as folder:
            started = time.perf_counter()
            if name == "stargan":
                fitted = started
                counts = render_stargan(generator, spec, chosen, num_cameras, folder, args.workers, progress=False)
            elif name == "colour":
                styles = camera_styles(chosen, num_cameras, workers=args.workers, progress=False)
                fitted = time.perf_counter()
                counts, _ = generate_colour_camstyle(chosen, num_cameras, folder, styles, workers=args.workers,
                                                     progress=False)
            else:
                profiles = camera_profiles(chosen, num_cameras, workers=args.workers, progress=False)
                fitted = time.perf_counter()
                per_image, capture = CANDIDATES[name]
                counts, _ = generate_matched_camstyle(chosen, num_cameras, folder, profiles, seed=args.seed,
                                                      per_image=per_image, capture=capture, workers=args.workers,
                                                      progress=False)
            done = time.perf_counter()
        fit, render = fitted - started, done - fitted
        results.append({
            "method": name, "images": len(chosen), "fakes": counts.written, "fit_seconds": round(fit, 1),
            "render_seconds": round(render, 1), "whole_set_minutes": round((fit + render) * scale / 60, 1),
        })
        print(json.dumps(results[-1]), flush=True)
    write_json(results, args.out / f"timing_{args.time_images}.json")


if __name__ == "__main__":
    main()
