"""`ecnreid extract`: the feature folder's contents, folders of any depth and suffix, dataset splits, bad
images, and an interrupted extraction that a rerun finishes into the very bytes of an uninterrupted one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from inference_checkpoint import train_tiny_checkpoint
from PIL import Image
from typer.testing import CliRunner

import ecnreid.evaluation.features
from ecnreid.cli import app
from ecnreid.data.datasets import read_dataset
from ecnreid.evaluation.features import extract_features
from ecnreid.inference.adapted import model_from_checkpoint
from ecnreid.inference.card import read_card_json
from ecnreid.inference.images import parse_ids
from ecnreid.inference.store import open_feature_folder, read_index
from ecnreid.runstate import load_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_tiny_checkpoint(tmp_path_factory.mktemp("extract"))


def extract(checkpoint: Path, out: Path, *source: str, extra: tuple[str, ...] = ()):
    args = ["extract", "--checkpoint", str(checkpoint), *source, "--out", str(out)]
    return runner.invoke(app, [*args, "--device", "cpu", "--workers", "0", "--batch-size", "4", *extra])


def test_a_dataset_split_gives_the_features_eval_scores(tiny, tmp_path: Path) -> None:
    checkpoint, target = tiny
    out = tmp_path / "feats"
    result = extract(checkpoint, out, "--dataset", "synthetic", "--root", str(target), "--split", "query")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "extract.json", "features.npy", "index.csv"]
    features = np.load(out / "features.npy")
    query = read_dataset("synthetic", target).query
    assert features.shape == (len(query), 512) and features.dtype == np.float32
    network, _ = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    expected = extract_features(network, query, height=32, width=16, workers=0, show_progress=False)
    assert np.allclose(features, expected.numpy(), atol=1e-5)
    index = read_index(out / "index.csv")
    assert [(e.pid, e.camid) for e in index] == [(r.pid, r.camid) for r in query]
    meta = json.loads((out / "extract.json").read_text())
    assert meta["complete"] and meta["done"] == meta["count"] == len(query)
    assert meta["source"]["split"] == "query" and read_card_json(out / "card.json").feature_dim == 512


def test_folders_of_any_depth_and_suffix_in_float16(tiny, tmp_path: Path) -> None:
    checkpoint, target = tiny
    images = tmp_path / "site"
    source = sorted((target / "query").glob("*.jpg"))[:3]
    (images / "day1" / "cam2").mkdir(parents=True)
    Image.open(source[0]).save(images / "day1" / "cam2" / "frame_0007.png")
    Image.open(source[1]).save(images / "day1" / "0003_c2_extra.bmp")
    shutil.copy(source[2], images / "person.JPG")
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "feats"
    result = extract(checkpoint, out, "--images", str(images), extra=("--dtype", "float16"))
    assert result.exit_code == 0, result.output
    folder = open_feature_folder(out, "--gallery")
    assert folder.features.dtype == np.float16 and folder.features.shape == (3, 512)
    assert np.allclose(np.linalg.norm(folder.features.astype(np.float32), axis=1), 1, atol=1e-2)
    names = [Path(e.path).name for e in folder.entries]
    assert names == ["0003_c2_extra.bmp", "frame_0007.png", "person.JPG"]
    assert [(e.pid, e.camid) for e in folder.entries] == [(3, 1), (None, None), (None, None)]


def test_name_parsers() -> None:
    assert parse_ids("0002_c1s1_000451_03.jpg") == (2, 0)
    assert parse_ids("0005_c2_f0046985.jpg") == (5, 1)
    assert parse_ids("0000_000_01_0303morning_0015_0.jpg") == (0, 0)
    assert parse_ids("IMG_2041.jpg") == (None, None)


def test_a_killed_extraction_resumes_to_the_same_bytes(tiny, tmp_path: Path, monkeypatch) -> None:
    checkpoint, target = tiny
    gallery = ("--images", str(target / "bounding_box_test"))  # 18 images: 5 batches of 4
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert extract(checkpoint, straight, *gallery).exit_code == 0
    real_embed, calls = ecnreid.evaluation.features.embed, []

    def dies_in_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C or SIGTERM raise under the CLI
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(ecnreid.evaluation.features, "embed", dies_in_third_batch)
    result = extract(checkpoint, killed, *gallery)
    assert result.exit_code == 130 and "rerun with the same command" in result.output
    meta = json.loads((killed / "extract.json").read_text())
    assert meta["done"] == 8 and not meta["complete"]
    result = runner.invoke(app, ["search", "--checkpoint", str(checkpoint), "--query", str(target / "query"),
                                 "--gallery", str(killed), "--out", str(tmp_path / "s"), "--device", "cpu"])
    assert result.exit_code == 2 and "unfinished extraction (8 of 18" in result.output

    monkeypatch.setattr(ecnreid.evaluation.features, "embed", real_embed)
    calls.clear()
    result = extract(checkpoint, killed, *gallery)
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "image 9 of 18" in result.output
    for name in ("features.npy", "index.csv", "card.json"):
        assert (killed / name).read_bytes() == (straight / name).read_bytes(), name
    assert json.loads((killed / "extract.json").read_text())["complete"]


def test_a_finished_extraction_is_kept_and_other_settings_are_refused(tiny, tmp_path: Path) -> None:
    checkpoint, target = tiny
    out, query = tmp_path / "feats", ("--images", str(target / "query"))
    assert extract(checkpoint, out, *query).exit_code == 0
    before = (out / "features.npy").stat().st_mtime_ns
    result = extract(checkpoint, out, *query)
    assert result.exit_code == 0 and "already extracted" in result.output
    assert (out / "features.npy").stat().st_mtime_ns == before
    result = extract(checkpoint, out, *query, extra=("--flip",))
    assert result.exit_code == 2 and "with flip False (this one: True)" in result.output
    result = extract(checkpoint, out, "--images", str(target / "bounding_box_test"))
    assert result.exit_code == 2 and "of other images" in result.output


def test_a_bad_image_stops_with_one_line_or_is_skipped(tiny, tmp_path: Path) -> None:
    checkpoint, target = tiny
    images = tmp_path / "images"
    shutil.copytree(target / "query", images)
    bad = images / "0099_c1_broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "feats"
    result = extract(checkpoint, out, "--images", str(images))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(bad) in result.output and "--skip-bad-images" in result.output
    result = extract(checkpoint, out, "--images", str(images), extra=("--skip-bad-images",))
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "extract.json").read_text())
    assert meta["skipped"] == [str(bad)] and meta["count"] == 9 and meta["complete"]
    assert str(bad) not in (out / "index.csv").read_text()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (("--images", "EMPTY"), "no images in the folder"),
        (("--images", "EMPTY", "--dataset", "synthetic", "--root", "."), "either --images DIR or --dataset"),
        (("--dataset", "synthetic"), "needs --root"),
    ],
)
def test_bad_sources_are_one_line_errors(tiny, tmp_path: Path, source: tuple[str, ...], message: str) -> None:
    checkpoint, _ = tiny
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    source = tuple(str(tmp_path / "empty") if s == "EMPTY" else s for s in source)
    result = extract(checkpoint, tmp_path / "feats", *source)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_extract_reads_its_settings_from_a_config_file(tiny, tmp_path: Path) -> None:
    checkpoint, target = tiny
    settings = tmp_path / "extract.toml"
    settings.write_text(f'checkpoint = "{checkpoint}"\nimages = "{target / "query"}"\n'
                        '[features]\ndtype = "float16"\nworkers = 0\ndevice = "cpu"\n')
    result = runner.invoke(app, ["extract", "--config", str(settings), "--out", str(tmp_path / "feats")])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "feats" / "features.npy").dtype == np.float16
