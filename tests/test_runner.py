"""What `ecnreid eval` and a training run report, checked as values: metrics.json and the printed tables against
the metrics recomputed here from features computed here (plain, mirrored, re-ranked by the loop reference)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from test_reranking import reference_rerank
from typer.testing import CliRunner

from ecnreid.cli import app
from ecnreid.data.datasets import read_dataset
from ecnreid.data.transforms import build_test_transform
from ecnreid.evaluation.metrics import RankingResult, evaluate_ranking_reference

runner = CliRunner()
KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")


def write_textured_tree(root: Path, *, ids: int = 6, cameras: int = 3, seed: int = 0) -> Path:
    """A Market-style query/gallery tree whose people are left-right asymmetric random textures, mixed with
    strong per-image noise: rankings are imperfect, and mirroring an image changes its features."""
    rng = np.random.default_rng(seed)
    splits = (("query", 1), ("bounding_box_test", 2), ("bounding_box_train", 1))
    for folder, _ in splits:
        (root / folder).mkdir(parents=True)
    n = 0
    for pid in range(1, ids + 1):
        person = rng.uniform(0, 255, (32, 16, 3))
        person[:, :8] *= 0.4  # a dark left half: the mirror image differs
        for cam in range(1, cameras + 1):
            for folder, per in splits:
                for _ in range(per):
                    pixels = 0.55 * person + 0.45 * rng.uniform(0, 255, (32, 16, 3))
                    name = f"{pid:04d}_c{cam}_{n:05d}.jpg"
                    Image.fromarray(pixels.astype(np.uint8)).save(root / folder / name, quality=95)
                    n += 1
    return root


@pytest.fixture(scope="module")
def problem(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tree, a ResNet-18 weights file, and the features the test computes itself (plain and mirrored)."""
    root = tmp_path_factory.mktemp("eval")
    tree = write_textured_tree(root / "tree")
    torch.manual_seed(0)
    backbone = torchvision.models.resnet18(weights=None)
    weights = root / "resnet18.pth"
    torch.save(backbone.state_dict(), weights)
    backbone.eval()
    trunk = torch.nn.Sequential(*list(backbone.children())[:-2])  # up to layer4
    dataset = read_dataset("synthetic", tree, require_test=True)
    transform = build_test_transform(32, 16)

    def pool5(records, mirror: bool) -> torch.Tensor:
        images = torch.stack([transform(Image.open(r.path).convert("RGB")) for r in records])
        with torch.no_grad():
            plain = F.normalize(trunk(images).mean(dim=(2, 3)), dim=1)  # the test feature: unit-norm pool5
            if mirror:  # --flip: the normalised sum of the image's and its mirror's test features
                return F.normalize(plain + F.normalize(trunk(images.flip(3)).mean(dim=(2, 3)), dim=1), dim=1)
        return plain

    features = {flip: (pool5(dataset.query, flip), pool5(dataset.gallery, flip)) for flip in (False, True)}
    return {"tree": tree, "weights": weights, "dataset": dataset, "features": features, "root": root}


def ids(records) -> list[np.ndarray]:
    return [np.array([r.pid for r in records]), np.array([r.camid for r in records])]


def expected_row(distances: np.ndarray, dataset) -> dict[str, float]:
    q_pids, q_cams = ids(dataset.query)
    g_pids, g_cams = ids(dataset.gallery)
    result: RankingResult = evaluate_ranking_reference(distances, q_pids, g_pids, q_cams, g_cams)
    return {"rank1": 100 * result.cmc[0], "rank5": 100 * result.cmc[4], "rank10": 100 * result.cmc[9],
            "mAP": 100 * result.mAP, "mINP": 100 * result.mINP}


def cosine(query: torch.Tensor, gallery: torch.Tensor) -> np.ndarray:
    return (1.0 - query.double() @ gallery.double().t()).numpy()


def run_eval(problem: dict, out: Path, *extra: str) -> dict:
    args = ["eval", "--dataset", "synthetic", "--root", str(problem["tree"]), "--height", "32", "--width", "16"]
    args += ["--arch", "resnet18", "--weights", str(problem["weights"]), "--device", "cpu", "--workers", "0"]
    result = runner.invoke(app, [*args, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return {"metrics": json.loads((out / "metrics.json").read_text()), "output": result.output}


def assert_row(reported: dict, expected: dict) -> None:
    for key in KEYS:
        assert reported[key] == pytest.approx(expected[key], abs=1e-4), (key, reported, expected)


def table_rows(output: str) -> dict[str, list[float]]:
    """The printed table's rows: first cell -> the numbers of the next five cells."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) >= 6 and all(re.fullmatch(r"-?\d+\.\d", c) for c in cells[1:6]):
            rows[cells[0]] = [float(c) for c in cells[1:6]]
    return rows


def test_eval_reports_the_recomputed_plain_and_re_ranked_metrics(problem: dict, tmp_path: Path) -> None:
    dataset = problem["dataset"]
    query, gallery = problem["features"][False]
    plain = expected_row(cosine(query, gallery), dataset)
    reranked = expected_row(reference_rerank(query.numpy(), gallery.numpy(), 20, 6, 0.3), dataset)
    assert plain["mAP"] != pytest.approx(reranked["mAP"], abs=0.5)  # re-ranking changes this problem's ranking
    assert plain["rank1"] != plain["rank5"]  # ...and rank-5 is not rank-1 here
    run = run_eval(problem, tmp_path / "eval", "--rerank")
    results = run["metrics"]["results"]
    assert_row(results["plain"], plain)
    assert_row(results["rerank"], reranked)
    printed = table_rows(run["output"])
    for name, expected in (("plain", plain), ("rerank", reranked)):
        assert printed[name] == pytest.approx([round(expected[k], 1) for k in KEYS], abs=0.051), name


def test_eval_euclidean_ranks_unit_features_as_cosine_does(problem: dict, tmp_path: Path) -> None:
    query, gallery = problem["features"][False]
    euclidean = torch.cdist(query.double(), gallery.double()).numpy()
    # sqrt(2 − 2 cos) is increasing in 1 − cos: the same order, so the same metrics.
    assert np.array_equal(np.argsort(euclidean, axis=1, kind="stable"), np.argsort(cosine(query, gallery), axis=1,
                                                                                    kind="stable"))
    run = run_eval(problem, tmp_path / "eval", "--metric", "euclidean", "--save-ranks", "1")
    assert run["metrics"]["config"]["evaluation"]["metric"] == "euclidean"
    assert_row(run["metrics"]["results"]["plain"], expected_row(euclidean, problem["dataset"]))


def test_eval_flip_scores_the_normalised_sum_of_image_and_mirror_features(problem: dict, tmp_path: Path) -> None:
    dataset = problem["dataset"]
    flipped = expected_row(cosine(*problem["features"][True]), dataset)
    unflipped = expected_row(cosine(*problem["features"][False]), dataset)
    assert flipped["mAP"] != pytest.approx(unflipped["mAP"], abs=0.5)  # mirroring matters on these people
    run = run_eval(problem, tmp_path / "eval", "--flip")
    assert run["metrics"]["config"]["evaluation"]["flip"] is True
    assert_row(run["metrics"]["results"]["plain"], flipped)


def train_args(source: Path, target: Path, out: Path, *extra: str) -> list[str]:
    """`ecnreid train` on the tiny trees of conftest: ResNet-18 from random weights, 32x16, on the CPU."""
    args = ["train", "--source", "synthetic", "--source-root", str(source), "--target", "synthetic"]
    args += ["--target-root", str(target), "--arch", "resnet18", "--no-pretrained", "--height", "32", "--width", "16"]
    args += ["--batch-size", "8", "--workers", "0", "--device", "cpu", "--out", str(out)]
    return [*args, *extra]


def saved_split(checkpoint: Path, target: Path, split: str, out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of a target split saved by `ecnreid extract`, with their ids and cameras."""
    args = ["extract", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--root", str(target)]
    args += ["--split", split, "--out", str(out), "--device", "cpu", "--workers", "0", "--dtype", "float32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in (out / "index.csv").read_text().splitlines()[1:]]
    return np.load(out / "features.npy"), np.array([int(r[1]) for r in rows]), np.array([int(r[2]) for r in rows])


def test_training_table_metrics_json_and_saved_features_agree(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(source, target, out, "--epochs", "2", "--eval-every", "1", "--no-camera"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert final == {"epoch": 2, **{k: log[-1][k] for k in KEYS}}
    # The final model's scores, recomputed from its query and gallery features as `ecnreid extract` saves them.
    qf, q_pids, q_cams = saved_split(out / "last.pt", target, "query", tmp_path / "query")
    gf, g_pids, g_cams = saved_split(out / "last.pt", target, "gallery", tmp_path / "gallery")
    scored = evaluate_ranking_reference(1.0 - qf.astype(np.float64) @ gf.T, q_pids, g_pids, q_cams, g_cams)
    recomputed = {"rank1": 100 * scored.cmc[0], "rank5": 100 * scored.cmc[4], "rank10": 100 * scored.cmc[9],
                  "mAP": 100 * scored.mAP, "mINP": 100 * scored.mINP}
    assert_row(final, recomputed)
    printed = table_rows(result.output)
    assert list(printed) == ["1", "2 (final)"]
    assert printed["2 (final)"] == pytest.approx([round(recomputed[k], 1) for k in KEYS], abs=0.051)
    assert printed["1"] == pytest.approx([round(log[0][k], 1) for k in KEYS], abs=0.051)
