"""`ecnreid eval` end to end (``ecnreid.inference.evaluate``): the model it scores, what metrics.json records, and
the reported numbers checked as values against metrics recomputed here from features computed here (plain, mirrored,
re-ranked by the loop reference), for eval and for a training run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import make_reid_tree
from PIL import Image
from ranking_reference import evaluate_ranking_reference
from test_reranking import reference_rerank
from typer.testing import CliRunner

import ecnreid.inference.evaluate as evaluate_module
from ecnreid.cli import app
from ecnreid.data.datasets import read_dataset
from ecnreid.data.transforms import build_test_transform
from ecnreid.evaluation.metrics import RankingResult
from ecnreid.inference.adapted import AdaptedModel
from ecnreid.inference.card import ECN_FEATURE, ModelCard

runner = CliRunner()
METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")


@pytest.fixture(scope="module")
def trained_64x32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch ECN run trained and evaluated at 64x32 through `ecnreid train`; (target root, run folder)."""
    root = tmp_path_factory.mktemp("runner")
    source = make_reid_tree(root / "source", ids=4, cameras=2, per_camera=2, seed=1)
    target = make_reid_tree(root / "target", ids=4, cameras=3, per_camera=2, seed=2, first_pid=50)
    run = root / "run"
    domains = ["--source", "synthetic", "--source-root", str(source), "--target", "synthetic", "--target-root"]
    sizes = ["--arch", "resnet18", "--no-pretrained", "--height", "64", "--width", "32", "--batch-size", "8"]
    result = runner.invoke(
        app,
        ["train", *domains, str(target), *sizes, "--epochs", "1", "--workers", "0", "--device", "cpu", "--no-camera",
         "--out", str(run)],
    )
    assert result.exit_code == 0, result.output
    return target, run


def eval_args(target: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--dataset", "synthetic", "--root", str(target), "--device", "cpu", "--workers", "0",
            "--out", str(out), *extra]


def error_line(result) -> str:
    """The one `error:` line of a failed command (exit code 2, nothing else printed, no traceback)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.slow
def test_eval_of_a_checkpoint_scores_the_model_its_card_describes(trained_64x32, tmp_path: Path) -> None:
    target, run = trained_64x32
    checkpoint = run / "last.pt"
    out = tmp_path / "eval"
    # No --height/--width: the card's 64x32 is used (the defaults, 256x128, would score another model).
    result = runner.invoke(app, eval_args(target, out, "--checkpoint", str(checkpoint)))
    assert result.exit_code == 0, result.output
    trained = json.loads((run / "metrics.json").read_text())["final"]
    scored = json.loads((out / "metrics.json").read_text())
    for key in METRICS:
        assert scored["results"]["plain"][key] == pytest.approx(trained[key], abs=1e-6), key
    card = torch.load(checkpoint, map_location="cpu", weights_only=False)["card"]
    model = scored["model"]
    assert {key: model[key] for key in card} == card
    assert (model["arch"], model["input_height"], model["input_width"]) == ("resnet18", 64, 32)
    assert model["checkpoint"] == str(checkpoint)
    assert model["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    # What was given is recorded as given: nothing, the card decided.
    assert scored["config"]["model"]["arch"] is None and scored["config"]["input"]["height"] is None
    # Options equal to the card's values are accepted.
    same = ["--arch", "resnet18", "--height", "64", "--width", "32", "--last-stride", "2", "--no-pretrained"]
    result = runner.invoke(app, eval_args(target, tmp_path / "same", "--checkpoint", str(checkpoint), *same))
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "same" / "metrics.json").read_text())["results"]["plain"]
    assert again["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)


@pytest.mark.parametrize(
    ("option", "fragments"),
    [
        (["--height", "256"], ["--height 256", "input height 64", "leave out --height"]),
        (["--width", "128"], ["--width 128", "input width 32", "leave out --width"]),
        (["--arch", "resnet50"], ["--arch resnet50", "architecture resnet18", "leave out --arch"]),
        (["--last-stride", "1"], ["--last-stride 1", "last stride 2", "leave out --last-stride"]),
        (["--pretrained"], ["--pretrained", "holds the trained weights", "leave out --pretrained"]),
    ],
)
@pytest.mark.slow
def test_an_option_that_contradicts_the_card_stops_with_one_line(
    trained_64x32, tmp_path: Path, option: list[str], fragments: list[str]
) -> None:
    target, run = trained_64x32
    out = tmp_path / "eval"
    line = error_line(runner.invoke(app, eval_args(target, out, "--checkpoint", str(run / "last.pt"), *option)))
    for fragment in [*fragments, str(run / "last.pt")]:
        assert fragment in line, (fragment, line)
    assert not out.exists()


@pytest.mark.slow
def test_weights_with_a_checkpoint_are_refused(trained_64x32, tmp_path: Path) -> None:
    target, run = trained_64x32
    args = eval_args(target, tmp_path / "eval", "--checkpoint", str(run / "last.pt"), "--weights", "w.pth")
    line = error_line(runner.invoke(app, args))
    assert "--weights w.pth" in line and "leave out --weights" in line


@pytest.mark.slow  # evaluates a ResNet-18 at the default 256x128: about 15 s on 2 cores
def test_eval_of_a_bare_backbone_records_the_backbone_it_built(two_domains, tmp_path: Path) -> None:
    _, target = two_domains
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    out = tmp_path / "eval"
    args = eval_args(target, out, "--arch", "resnet18", "--weights", str(weights), "--height", "32", "--width", "16")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    model = json.loads((out / "metrics.json").read_text())["model"]
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert model["weights"] == {"kind": "file", "path": str(weights), "sha256": digest}
    assert (model["arch"], model["feature_dim"]) == ("resnet18", 512)
    assert (model["input_height"], model["input_width"]) == (32, 16)
    assert model["last_stride"] == 2 and model["mean"] == pytest.approx([0.485, 0.456, 0.406])
    # Left out, the size is the default 256x128 and the weights random when --no-pretrained says so.
    out = tmp_path / "default"
    result = runner.invoke(app, eval_args(target, out, "--arch", "resnet18", "--no-pretrained"))
    assert result.exit_code == 0, result.output
    model = json.loads((out / "metrics.json").read_text())["model"]
    assert (model["input_height"], model["input_width"], model["weights"]) == (256, 128, {"kind": "random"})




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
    for key in METRICS:
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
    weights = problem["weights"]
    assert run["metrics"]["model"] == {  # the bare backbone eval built, as --arch and --weights asked
        "arch": "resnet18", "weights": {"kind": "file", "path": str(weights),
                                        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()},
        "last_stride": 2, "input_height": 32, "input_width": 16, "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225], "feature": ECN_FEATURE, "feature_dim": 512}
    results = run["metrics"]["results"]
    assert_row(results["plain"], plain)
    assert_row(results["rerank"], reranked)
    printed = table_rows(run["output"])
    for name, expected in (("plain", plain), ("rerank", reranked)):
        assert printed[name] == pytest.approx([round(expected[k], 1) for k in METRICS], abs=0.051), name


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


@pytest.mark.slow
def test_training_table_metrics_json_and_saved_features_agree(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(source, target, out, "--epochs", "2", "--eval-every", "1", "--no-camera"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert final == {"epoch": 2, **{k: log[-1][k] for k in METRICS}}
    # The final model's scores, recomputed from its query and gallery features as `ecnreid extract` saves them.
    qf, q_pids, q_cams = saved_split(out / "last.pt", target, "query", tmp_path / "query")
    gf, g_pids, g_cams = saved_split(out / "last.pt", target, "gallery", tmp_path / "gallery")
    scored = evaluate_ranking_reference(1.0 - qf.astype(np.float64) @ gf.T, q_pids, g_pids, q_cams, g_cams)
    recomputed = {"rank1": 100 * scored.cmc[0], "rank5": 100 * scored.cmc[4], "rank10": 100 * scored.cmc[9],
                  "mAP": 100 * scored.mAP, "mINP": 100 * scored.mINP}
    assert_row(final, recomputed)
    printed = table_rows(result.output)
    assert list(printed) == ["1", "2 (final)"]
    assert printed["2 (final)"] == pytest.approx([round(recomputed[k], 1) for k in METRICS], abs=0.051)
    assert printed["1"] == pytest.approx([round(log[0][k], 1) for k in METRICS], abs=0.051)


# The runner's parts on hand-made inputs.
def rendered(table) -> list[list[str]]:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table)
    return [line.replace("│", " ").split() for line in console.export_text().splitlines()]


def test_the_metrics_table_shows_percentages_and_valid_queries() -> None:
    from ecnreid.inference.evaluate import render_metrics_table

    plain = RankingResult(cmc=[0.5] + [0.75] * 4 + [0.875] * 5, mAP=0.4, mINP=0.25, num_valid_queries=3, num_queries=4)
    table = render_metrics_table({"plain": plain, "rerank": plain}, "the title")
    assert table.title == "the title" and [c.header for c in table.columns] == [
        "setting", "R1", "R5", "R10", "mAP", "mINP", "queries"]
    assert [c.justify for c in table.columns] == ["left"] + ["right"] * 6
    rows = [cells for cells in rendered(table) if cells and cells[0] in ("plain", "rerank")]
    assert rows == [["plain", "50.0", "75.0", "87.5", "40.0", "25.0", "3/4"]] + [["rerank", *rows[0][1:]]]


def test_the_training_summary_marks_only_the_last_evaluation_final() -> None:
    from ecnreid.inference.evaluate import render_train_summary

    row = {"rank1": 10.0, "rank5": 20.0, "rank10": 30.0, "mAP": 5.0, "mINP": 1.25}
    summary = {"method": "ecn", "setting": "+E+N", "source": "dukemtmc", "target": "market1501",
               "evaluations": [{"epoch": 2, **row}, {"epoch": 4, **row, "mAP": 6.5}]}
    table = render_train_summary(summary)
    assert table.title == "ecn +E+N: dukemtmc → market1501"
    assert [c.header for c in table.columns] == ["epoch", "R1", "R5", "R10", "mAP", "mINP"]
    assert all(c.justify == "right" for c in table.columns)
    body = [cells for cells in rendered(table) if cells and cells[0] in ("2", "4")]
    assert body == [["2", "10.0", "20.0", "30.0", "5.0", "1.2"], ["4", "(final)", "10.0", "20.0", "30.0", "6.5", "1.2"]]
    assert render_train_summary({**summary, "evaluations": None}).row_count == 0


def test_the_cards_pretrained_setting() -> None:
    from ecnreid.inference.evaluate import _card_pretrained

    card = ModelCard("resnet18", 32, 16, "f", 512, "ecn", "a", "b", 1, 1)
    assert _card_pretrained(card) is None
    assert _card_pretrained(dataclasses.replace(card, details={"backbone_weights": None})) is None
    assert _card_pretrained(dataclasses.replace(card, details={"backbone_weights": {"kind": "random"}})) is False
    assert _card_pretrained(dataclasses.replace(card, details={"backbone_weights": {"kind": "file"}})) is True


def test_a_bare_backbone_is_built_as_its_options_say_and_recorded_whole(tmp_path: Path) -> None:
    from ecnreid.config.commands import EvalConfig, EvalInputConfig, EvalModelConfig
    from ecnreid.inference.evaluate import build_eval_model

    config = EvalConfig(dataset="synthetic", root=tmp_path, input=EvalInputConfig(height=32, width=16),
                        model=EvalModelConfig(arch="resnet18", pretrained=False, last_stride=1))
    scored = build_eval_model(config)
    assert scored.record == {
        "arch": "resnet18", "weights": {"kind": "random"}, "last_stride": 1, "input_height": 32, "input_width": 16,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "feature": ECN_FEATURE, "feature_dim": 512}
    assert (scored.height, scored.width, scored.mean, scored.std) == (32, 16, (0.485, 0.456, 0.406),
                                                                      (0.229, 0.224, 0.225))
    # Last stride 1: a 32x16 input leaves a 2x1 final map (1x1 at stride 2).
    with torch.no_grad():
        assert scored.network.backbone(torch.zeros(1, 3, 32, 16)).shape == (1, 512, 2, 1)


def test_save_pictures_draws_the_curves_and_the_rank_lists_asked_for(tmp_path: Path, monkeypatch) -> None:
    import ecnreid.evaluation.visualize
    import ecnreid.plots
    from ecnreid.data.records import ImageRecord
    from ecnreid.inference.evaluate import save_pictures

    curves, lists = [], []
    monkeypatch.setattr(ecnreid.plots, "cmc_curve_png", lambda cmc, path, **kw: curves.append((cmc, path, kw)))

    def rank_lists(distmat, query, gallery, out, num_queries):
        lists.append((distmat, out, num_queries))
        return [out / f"{i}.png" for i in range(num_queries)]

    monkeypatch.setattr(ecnreid.evaluation.visualize, "save_rank_lists", rank_lists)
    plain = RankingResult(cmc=[0.5, 1.0], mAP=0.5, mINP=0.5, num_valid_queries=1, num_queries=1)
    reranked = RankingResult(cmc=[1.0, 1.0], mAP=1.0, mINP=1.0, num_valid_queries=1, num_queries=1)
    q, g = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    records = [ImageRecord("q.jpg", 1, 0)], [ImageRecord("a.jpg", 1, 1), ImageRecord("b.jpg", 2, 1)]
    results = {"plain": plain, "rerank": reranked}
    assert save_pictures(q, g, *records, results, tmp_path, num_rank_lists=0) == [tmp_path / "cmc.png"]
    assert curves == [([0.5, 1.0], tmp_path / "cmc.png", {"label": "plain", "extra": {"rerank": [1.0, 1.0]}})]
    assert lists == []
    written = save_pictures(q, g, *records, results, tmp_path, num_rank_lists=2, metric="euclidean")
    assert written == [tmp_path / "cmc.png", tmp_path / "ranks" / "0.png", tmp_path / "ranks" / "1.png"]
    distmat, out, num = lists[0]
    assert (out, num) == (tmp_path / "ranks", 2)
    torch.testing.assert_close(distmat, torch.tensor([[5.0, 4.0]]).sqrt())
    # One rank list is drawn too; the distances are cosine unless told otherwise.
    assert save_pictures(q, g, *records, results, tmp_path, num_rank_lists=1)[1:] == [tmp_path / "ranks" / "0.png"]
    distmat, _, num = lists[1]
    assert num == 1
    torch.testing.assert_close(distmat, torch.tensor([[1.0, 0.0]]))


# `eval --checkpoint` with a small network in place of a trained checkpoint's (no training needed).
class ChannelStats(torch.nn.Module):
    """Unit features of each channel's mean and standard deviation."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1), dim=1)


@pytest.fixture
def small_checkpoint(tmp_path: Path, monkeypatch) -> tuple[Path, AdaptedModel]:
    """A --checkpoint path whose model (24x12 input, its own normalisation, last stride 1, from a weights file)
    the eval command loads."""
    card = ModelCard("resnet18", 24, 12, "channel stats", 6, "ecn", "a", "b", 1, 1, mean=(0.5, 0.4, 0.3),
                     std=(0.2, 0.3, 0.4), details={"model": {"last_stride": 1}, "backbone_weights": {"kind": "file"}})
    path = tmp_path / "small.pt"
    adapted = AdaptedModel(ChannelStats(), card, path, "sha-small")
    monkeypatch.setattr(evaluate_module, "load_adapted_model",
                        lambda checkpoint: adapted if Path(checkpoint) == path else pytest.fail(str(checkpoint)))
    return path, adapted


def test_eval_of_a_small_checkpoint_uses_its_card(problem: dict, small_checkpoint, tmp_path: Path,
                                                  monkeypatch) -> None:
    import ecnreid.evaluation.visualize

    path, adapted = small_checkpoint
    evaluators, real_evaluator = [], evaluate_module.Evaluator
    monkeypatch.setattr(evaluate_module, "Evaluator",
                        lambda *args, **kwargs: evaluators.append(real_evaluator(*args, **kwargs)) or evaluators[-1])
    drawn, real_rank_lists = [], ecnreid.evaluation.visualize.save_rank_lists
    monkeypatch.setattr(ecnreid.evaluation.visualize, "save_rank_lists",
                        lambda distmat, *args, **kwargs: drawn.append(distmat) or real_rank_lists(distmat, *args,
                                                                                                  **kwargs))
    out = tmp_path / "eval"
    result = runner.invoke(app, eval_args(problem["tree"], out, "--checkpoint", str(path), "--metric", "euclidean",
                                          "--save-ranks", "1", "--batch-size", "4"))
    assert result.exit_code == 0, result.output
    assert f"{path}: resnet18 at 24x12, as its model card states" in " ".join(result.output.split())
    dataset = problem["dataset"]
    assert f"synthetic: query {len(dataset.query)} vs gallery {len(dataset.gallery)}" in result.output
    # The evaluator takes the card's input and the options given.
    evaluator = evaluators[0]
    assert {field.name: getattr(evaluator, field.name) for field in dataclasses.fields(evaluator)} == {
        "query": dataset.query, "gallery": dataset.gallery, "height": 24, "width": 12, "device": torch.device("cpu"),
        "mean": adapted.card.mean, "std": adapted.card.std, "batch_size": 4, "workers": 0, "flip": False,
        "metric": "euclidean", "rerank": False, "show_progress": True}
    metrics = json.loads((out / "metrics.json").read_text())
    transform = build_test_transform(24, 12, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4))

    def features(records) -> torch.Tensor:
        return ChannelStats()(torch.stack([transform(Image.open(r.path).convert("RGB")) for r in records]))

    query, gallery = features(dataset.query), features(dataset.gallery)
    euclidean = torch.cdist(query.double(), gallery.double())
    plain = metrics["results"]["plain"]
    assert_row(plain, expected_row(euclidean.numpy(), dataset))
    assert len(drawn) == 1 and torch.allclose(drawn[0].double(), euclidean, atol=1e-4)  # the rank list's distances
    assert metrics == {
        "dataset": "synthetic", "query": len(dataset.query), "gallery": len(dataset.gallery),
        "model": {"checkpoint": str(path), "checkpoint_sha256": "sha-small", **adapted.card.to_dict()},
        "results": {"plain": {**{key: plain[key] for key in METRICS}, "num_valid_queries": len(dataset.query)}},
        "cmc": {"plain": metrics["cmc"]["plain"]}, "timings": metrics["timings"],
        "pictures": [str(out / "cmc.png"), *(str(p) for p in sorted((out / "ranks").iterdir()))],
        "config": metrics["config"]}
    (q_pids, q_cams), (g_pids, g_cams) = ids(dataset.query), ids(dataset.gallery)
    reference = evaluate_ranking_reference(euclidean.numpy(), q_pids, g_pids, q_cams, g_cams)
    assert metrics["cmc"]["plain"] == pytest.approx(list(reference.cmc), abs=1e-6)
    assert list(metrics["timings"]) == ["features_s", "metrics_s"]
    assert all(0 <= seconds < 60 for seconds in metrics["timings"].values())
    assert len(metrics["pictures"]) == 2 and (out / "cmc.png").is_file()
    assert metrics["config"]["evaluation"]["metric"] == "euclidean" and metrics["config"]["input"]["batch_size"] == 4
    # Options equal to the card's are accepted; a card that does not record one accepts any value.
    same = ["--arch", "resnet18", "--height", "24", "--width", "12", "--last-stride", "1", "--pretrained"]
    result = runner.invoke(app, eval_args(problem["tree"], tmp_path / "same", "--checkpoint", str(path), *same))
    assert result.exit_code == 0, result.output
    adapted.card = dataclasses.replace(adapted.card, details={})
    result = runner.invoke(app, eval_args(problem["tree"], tmp_path / "any", "--checkpoint", str(path),
                                          "--last-stride", "2"))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--height", "256"], "--height 256: {where} input height 24; leave out --height {card}"),
        (["--width", "128"], "--width 128: {where} input width 12; leave out --width {card}"),
        (["--arch", "resnet50"], "--arch resnet50: {where} architecture resnet18; leave out --arch {card}"),
        (["--last-stride", "2"], "--last-stride 2: {where} last stride 1; leave out --last-stride {card}"),
        (["--no-pretrained"], "--no-pretrained: --checkpoint {path} holds the trained weights; leave out "
                              "--no-pretrained"),
    ],
)
def test_an_option_that_contradicts_a_small_card_stops_with_one_line(
    problem: dict, small_checkpoint, tmp_path: Path, option: list[str], message: str
) -> None:
    path = small_checkpoint[0]
    out = tmp_path / "eval"
    line = error_line(runner.invoke(app, eval_args(problem["tree"], out, "--checkpoint", str(path), *option)))
    expected = message.format(where=f"--checkpoint {path} holds a model with", path=path,
                              card="(eval takes it from the model card)")
    assert " ".join(line.split()) == f"error: {expected}"
    assert not out.exists()


def test_eval_skips_the_undecodable_images_it_is_told_to_skip(problem: dict, small_checkpoint, tmp_path) -> None:
    tree = Path(shutil.copytree(problem["tree"], tmp_path / "tree"))
    broken = sorted((tree / "bounding_box_test").glob("*.jpg"))[:2]  # in the gallery only: none in the query
    for image in broken:
        image.write_bytes(b"not a jpeg")
    out = tmp_path / "eval"
    result = runner.invoke(app, eval_args(tree, out, "--checkpoint", str(small_checkpoint[0]), "--skip-bad-images"))
    assert result.exit_code == 0, result.output
    assert "skipped 2 undecodable images" in result.output.splitlines()
    metrics = json.loads((out / "metrics.json").read_text())
    dataset = problem["dataset"]
    assert (metrics["query"], metrics["gallery"]) == (len(dataset.query), len(dataset.gallery) - 2)


def test_eval_of_a_dataset_without_its_test_split_stops_with_one_line(problem: dict, small_checkpoint,
                                                                      tmp_path) -> None:
    tree = tmp_path / "tree"
    for split in ("bounding_box_train", "bounding_box_test"):
        shutil.copytree(problem["tree"] / split, tree / split)
    out = tmp_path / "eval"
    line = error_line(runner.invoke(app, eval_args(tree, out, "--checkpoint", str(small_checkpoint[0]))))
    assert " ".join(line.split()) == (f"error: {tree / 'query'}: split folder is missing (needed to evaluate on "
                                      "synthetic; a dataset used only as a training source needs only its training "
                                      "split)")
    assert not out.exists()


def test_pretrained_against_a_card_that_does_not_say_is_refused(problem: dict, small_checkpoint, tmp_path) -> None:
    path, adapted = small_checkpoint
    adapted.card = dataclasses.replace(adapted.card, details={})
    line = error_line(runner.invoke(app, eval_args(problem["tree"], tmp_path, "--checkpoint", str(path),
                                                   "--pretrained")))
    assert line == f"error: --pretrained: --checkpoint {path} holds the trained weights; leave out --pretrained"
