"""`ecnreid extract`: the feature folder's contents, folders of any depth and suffix, dataset splits, bad
images, and an interrupted extraction that a rerun finishes into the very bytes of an uninterrupted one."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from inference_checkpoint import train_tiny_checkpoint
from PIL import Image
from rich.console import Console
from terminal_bars import ERASED, assert_finished_bar, last_frames, terminal_console
from typer.testing import CliRunner

import ecnreid.evaluation.features
import ecnreid.inference.adapted
import ecnreid.inference.extract
import ecnreid.inference.messages
from ecnreid.cli import app
from ecnreid.config import ExtractConfig
from ecnreid.data.datasets import read_dataset
from ecnreid.errors import EcnreidError
from ecnreid.evaluation.features import extract_features
from ecnreid.inference.adapted import AdaptedModel, iter_features, model_from_checkpoint
from ecnreid.inference.card import ModelCard, ecnreid_version, read_card_json
from ecnreid.inference.extract import extract_to_folder, render_extract_table, source_images
from ecnreid.inference.images import ImageEntry, list_images, parse_ids
from ecnreid.inference.store import list_sha256, open_feature_folder, read_index
from ecnreid.runstate import load_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_tiny_checkpoint(tmp_path_factory.mktemp("extract"))


def extract(checkpoint: Path, out: Path, *source: str, extra: tuple[str, ...] = ()):
    args = ["extract", "--checkpoint", str(checkpoint), *source, "--out", str(out)]
    return runner.invoke(app, [*args, "--device", "cpu", "--workers", "0", "--batch-size", "4", *extra])


@pytest.mark.slow
def test_a_dataset_split_gives_the_features_eval_scores(tiny, tmp_path: Path) -> None:
    checkpoint, target = tiny
    out = tmp_path / "feats"
    result = extract(checkpoint, out, "--dataset", "synthetic", "--root", str(target), "--split", "query")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "extract.json", "features.npy", "index.csv"]
    features = np.load(out / "features.npy")
    query = read_dataset("synthetic", target).query
    assert features.shape == (len(query), 512) and features.dtype == np.float32
    network, _ = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint, "--checkpoint")
    expected = extract_features(network, query, height=32, width=16, batch_size=128, workers=0, show_progress=False)
    assert np.allclose(features, expected.numpy(), atol=1e-5)
    index = read_index(out / "index.csv")
    assert [(e.pid, e.camid) for e in index] == [(r.pid, r.camid) for r in query]
    meta = json.loads((out / "extract.json").read_text())
    assert meta["complete"] and meta["done"] == meta["count"] == len(query)
    assert meta["source"]["split"] == "query" and read_card_json(out / "card.json").feature_dim == 512


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
@pytest.mark.slow
def test_bad_sources_are_one_line_errors(tiny, tmp_path: Path, source: tuple[str, ...], message: str) -> None:
    checkpoint, _ = tiny
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    source = tuple(str(tmp_path / "empty") if s == "EMPTY" else s for s in source)
    result = extract(checkpoint, tmp_path / "feats", *source)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_extract_reads_its_settings_from_a_config_file(tiny, tmp_path: Path) -> None:
    checkpoint, target = tiny
    settings = tmp_path / "extract.toml"
    settings.write_text(f'checkpoint = "{checkpoint}"\nimages = "{target / "query"}"\n'
                        '[features]\ndtype = "float16"\nworkers = 0\ndevice = "cpu"\n')
    result = runner.invoke(app, ["extract", "--config", str(settings), "--out", str(tmp_path / "feats")])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "feats" / "features.npy").dtype == np.float16


# extract_to_folder itself, with a small network in place of a checkpoint's (no training needed).
class ChannelMeans(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3)) + torch.tensor([0.0, 0.0, 3.0])


def small_adapted(tmp_path: Path, sha: str = "sha-a") -> AdaptedModel:
    card = ModelCard("resnet18", 8, 4, "means", 3, "ecn", "a", "b", 1, 1)
    return AdaptedModel(ChannelMeans(), card, tmp_path / "last.pt", sha)


def image_list(folder: Path, count: int) -> list[ImageEntry]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)).save(folder / f"{i:04d}_c1s1_{i}.png")
    return list_images(folder, "--images")


def to_folder(adapted: AdaptedModel, listing: list[ImageEntry], out: Path, **options):
    return extract_to_folder(adapted, listing, out, source={"images": "imgs"}, batch_size=2, workers=0, **options)


def colour_notices(monkeypatch) -> io.StringIO:
    """The notices as a colour terminal gets them: a warning is its line in yellow's escape codes."""
    shown = io.StringIO()
    terminal = Console(file=shown, force_terminal=True, color_system="standard", width=100)
    monkeypatch.setattr(ecnreid.inference.messages, "console", terminal)
    return shown


def in_yellow(line: str) -> str:
    return f"\x1b[33m{line}\x1b[0m\n"


def test_extract_to_folder_records_what_it_extracted(tmp_path: Path, capsys) -> None:
    adapted, listing = small_adapted(tmp_path), image_list(tmp_path / "imgs", 5)
    out = tmp_path / "feats"
    meta = to_folder(adapted, listing, out, dtype="float16", flip=True)
    expected = torch.cat(list(iter_features(adapted, [e.record() for e in listing], device=torch.device("cpu"),
                                            batch_size=5, workers=0, flip=True))).numpy()
    features = np.load(out / "features.npy")
    assert features.dtype == np.float16 and np.allclose(features, expected, atol=1e-3)
    assert {k: v for k, v in meta.items() if k != "seconds"} == {
        "format": "ecnreid-features", "format_version": 1, "source": {"images": "imgs"},
        "listing_sha256": list_sha256(listing), "checkpoint": str((tmp_path / "last.pt").resolve()),
        "checkpoint_sha256": "sha-a", "dim": 3, "dtype": "float16", "flip": True, "skip_bad_images": False,
        "input_size": [8, 4], "ecnreid_version": ecnreid_version(), "count": 5, "skipped": [], "done": 5,
        "complete": True,
    }
    assert meta["seconds"] > 0 and json.loads((out / "extract.json").read_text()) == meta
    assert read_index(out / "index.csv") == listing and read_card_json(out / "card.json") == adapted.card
    capsys.readouterr()
    assert to_folder(adapted, listing, out, dtype="float16", flip=True) == meta
    assert f"{out}: already extracted (5 images)" in capsys.readouterr().err
    console = Console(width=300, record=True)
    console.print(render_extract_table(meta, out))
    text = console.export_text()
    assert "features of 5 images" in text
    row = [line.replace("│", " ").split() for line in text.splitlines() if str(out) in line][0]
    assert row == [str(out), "5", "3", "float16", "yes", "0", f"{meta['seconds']:.1f}"]


def test_on_a_terminal_the_feature_bar_stays_with_an_empty_info_field(tmp_path: Path, monkeypatch) -> None:
    shown = terminal_console(monkeypatch, ecnreid.inference.extract)
    to_folder(small_adapted(tmp_path), image_list(tmp_path / "imgs", 5), tmp_path / "feats")
    frames = last_frames(shown.getvalue())
    assert len(frames) == 1
    assert_finished_bar(frames[0], "features", 5, 5, "img")
    assert not shown.getvalue().endswith(ERASED)  # the long step's bar stays on the screen


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        ({"dtype": "float16"}, "with dtype 'float32' (this one: 'float16')"),
        ({"flip": True}, "with flip False (this one: True)"),
        ({"adapted": "sha-b"}, "by another checkpoint ({checkpoint})"),
        ({"listing": 3}, "of other images ({{'images': 'imgs'}})"),
    ],
)
def test_another_extraction_in_the_folder_is_refused_or_restarted(tmp_path: Path, capsys, change, difference) -> None:
    change = dict(change)  # popped below: the parameter itself must stay whole for a rerun in one process
    listing = image_list(tmp_path / "imgs", 4)
    out = tmp_path / "feats"
    to_folder(small_adapted(tmp_path), listing, out)
    adapted = small_adapted(tmp_path, change.pop("adapted", "sha-a"))
    listing = listing[: change.pop("listing", 4)]
    with pytest.raises(EcnreidError) as info:
        to_folder(adapted, listing, out, option="--gallery", **change)
    difference = difference.format(checkpoint=(tmp_path / "last.pt").resolve())
    assert str(info.value) == (f"--gallery {out}: holds an extraction {difference}; delete the folder or choose "
                               "another --gallery")
    meta = to_folder(adapted, listing, out, restart_stale=True, **change)
    assert meta["complete"] and meta["count"] == len(listing)
    assert "starting the extraction over" in capsys.readouterr().err


def test_a_stop_resumes_where_the_record_says(tmp_path: Path, capsys, monkeypatch) -> None:
    adapted, listing = small_adapted(tmp_path), image_list(tmp_path / "imgs", 5)
    out = tmp_path / "feats"
    whole = to_folder(adapted, listing, tmp_path / "whole")
    real, calls = ecnreid.inference.extract.iter_features, []

    def stops_after_one_batch(*args, **kwargs):
        for batch in real(*args, **kwargs):
            calls.append(len(batch))
            yield batch
            raise KeyboardInterrupt

    monkeypatch.setattr(ecnreid.inference.extract, "iter_features", stops_after_one_batch)
    clock = iter(range(10, 100))  # perf_counter: one second more at each call
    monkeypatch.setattr(ecnreid.inference.extract, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        to_folder(adapted, listing, out)
    stopped = json.loads((out / "extract.json").read_text())
    assert (stopped["done"], stopped["seconds"]) == (2, 1.0)
    said = capsys.readouterr().err.splitlines()
    assert f"interrupted feature extraction into {out}: rerun with the same command to continue" in said
    stale = out / ".extract.json.k2x9q1.tmp"  # a temp file a killed write left behind
    stale.write_text("{")
    monkeypatch.setattr(ecnreid.inference.extract, "iter_features", real)
    meta = to_folder(adapted, listing, out)
    said = capsys.readouterr().err.splitlines()
    assert f"resuming the extraction into {out} at image 3 of 5" in said and meta["done"] == 5
    # The bar goes on from the 2 images done, and the time spent before the stop is kept: 1 s + 2 batches.
    progress = [re.sub(r"\), .* img/s, \d+ s$", "), R img/s", line) for line in said if line.startswith("features:")]
    assert progress == ["features: 4/5 (80%), R img/s", "features: 5/5 (100%), R img/s"], said
    assert meta["seconds"] == 3.0 and not stale.exists()
    assert (out / "features.npy").read_bytes() == (tmp_path / "whole" / "features.npy").read_bytes()
    assert {k: v for k, v in meta.items() if k != "seconds"} == {k: v for k, v in whole.items() if k != "seconds"}


def test_a_damaged_unfinished_extraction_is_refused(tmp_path: Path) -> None:
    adapted, listing = small_adapted(tmp_path), image_list(tmp_path / "imgs", 4)
    out = tmp_path / "feats"
    to_folder(adapted, listing, out)
    record = json.loads((out / "extract.json").read_text())
    (out / "extract.json").write_text(json.dumps({**record, "done": 2, "complete": False}))
    np.save(out / "features.npy", np.zeros((4, 5), np.float32))
    with pytest.raises(EcnreidError) as info:
        to_folder(adapted, listing, out)
    assert str(info.value) == (f"{out / 'features.npy'}: holds float32 (4, 5), but {out / 'extract.json'} expects "
                               f"float32 (4, 3); delete {out} and extract again")
    (out / "features.npy").write_bytes(b"junk")
    with pytest.raises(EcnreidError, match=r"cannot continue the extraction \(not a readable \.npy array: "):
        to_folder(adapted, listing, out)
    (out / "extract.json").write_text(json.dumps({**record, "done": 2, "complete": False, "count": 3}))
    with pytest.raises(EcnreidError) as info:
        to_folder(adapted, listing, out)
    assert str(info.value) == (f"{out / 'index.csv'}: 4 rows, but {out / 'extract.json'} counts 3; delete {out} "
                               "and extract again")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    np.save(foreign / "features.npy", np.zeros((1, 3), np.float32))
    with pytest.raises(EcnreidError) as info:
        to_folder(adapted, listing, foreign)
    assert str(info.value) == (f"--out {foreign}: holds a features.npy that `ecnreid extract` did not write; choose "
                               "another folder")


def test_bad_images_stop_with_the_remedy_or_are_skipped(tmp_path: Path, monkeypatch) -> None:
    shown = colour_notices(monkeypatch)
    adapted, listing = small_adapted(tmp_path), image_list(tmp_path / "imgs", 3)
    Path(listing[1].path).write_bytes(b"not an image")
    out = tmp_path / "feats"
    with pytest.raises(EcnreidError) as info:
        to_folder(adapted, listing, out)
    assert str(info.value).startswith(listing[1].path) and str(info.value).endswith(
        "; replace the file and rerun to resume, or rerun with --skip-bad-images (which starts over)")
    meta = to_folder(adapted, listing, out, skip_bad_images=True)
    assert meta["skipped"] == [listing[1].path] and meta["count"] == 2 and meta["complete"]
    assert shown.getvalue() == (in_yellow(f"{out}: starting the extraction over (skip_bad_images changed)")
                                + in_yellow(f"skipping 1 undecodable images (listed in {out / 'extract.json'})"))
    for entry in listing:
        Path(entry.path).write_bytes(b"broken")
    with pytest.raises(EcnreidError) as info:
        to_folder(adapted, listing, tmp_path / "none", skip_bad_images=True)
    assert str(info.value) == "{'images': 'imgs'}: none of the 3 images decodes"


def test_a_dataset_split_without_images_is_a_one_line_error(tmp_path: Path, monkeypatch) -> None:
    asked = []
    monkeypatch.setattr(ecnreid.inference.extract, "dataset_images", lambda *args: asked.append(args) or [])
    config = ExtractConfig(checkpoint=tmp_path / "c.pt", dataset="market1501", root=tmp_path, split="query",
                           out=tmp_path / "o")
    with pytest.raises(EcnreidError) as info:
        source_images(config)
    assert str(info.value) == f"--dataset market1501 --root {tmp_path}: the query split has no images"
    assert asked == [("market1501", tmp_path, "query")]
    monkeypatch.setattr(ecnreid.inference.extract, "dataset_images", lambda name, root, split: ["x"])
    assert source_images(config) == (["x"], {"dataset": "market1501", "root": str(tmp_path.resolve()),
                                             "split": "query"})


class HalfMeans(torch.nn.Module):
    """Unit features of the left and right halves' channel means: mirroring an image changes them."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        halves = torch.cat([images[..., :2].mean(dim=(2, 3)), images[..., 2:].mean(dim=(2, 3)) + 1.0], dim=1)
        return torch.nn.functional.normalize(halves, dim=1)


def test_the_extract_command_with_a_small_model(tmp_path: Path, monkeypatch) -> None:
    card = ModelCard("resnet18", 8, 4, "halves", 6, "ecn", "a", "b", 1, 1)
    checkpoint = tmp_path / "last.pt"
    adapted = AdaptedModel(HalfMeans(), card, checkpoint, "sha-a")
    listing = image_list(tmp_path / "imgs", 6)
    monkeypatch.setattr(ecnreid.inference.extract, "load_adapted_model",
                        lambda path: adapted if Path(path) == checkpoint else pytest.fail(str(path)))
    clock = iter(range(10, 100))  # perf_counter: 10 at the start, one second more after each batch
    monkeypatch.setattr(ecnreid.inference.extract, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    Path(listing[2].path).write_bytes(b"not an image")
    out = tmp_path / "feats"
    args = ["extract", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "imgs"), "--out", str(out),
            "--device", "cpu", "--workers", "0", "--batch-size", "2", "--dtype", "float16", "--flip",
            "--skip-bad-images"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "extract.json").read_text())
    kept = [entry for i, entry in enumerate(listing) if i != 2]
    assert meta == {
        "format": "ecnreid-features", "format_version": 1, "source": {"images": str((tmp_path / "imgs").resolve())},
        "listing_sha256": list_sha256(listing), "checkpoint": str(checkpoint.resolve()), "checkpoint_sha256": "sha-a",
        "dim": 6, "dtype": "float16", "flip": True, "skip_bad_images": True, "input_size": [8, 4],
        "ecnreid_version": ecnreid_version(), "count": 5, "skipped": [listing[2].path], "done": 5, "complete": True,
        "seconds": 3.0,  # three batches
    }
    mirrored = torch.cat(list(iter_features(adapted, [e.record() for e in kept], device=torch.device("cpu"),
                                            batch_size=5, workers=0, flip=True))).numpy()
    plain = torch.cat(list(iter_features(adapted, [e.record() for e in kept], device=torch.device("cpu"),
                                         batch_size=5, workers=0, flip=False))).numpy()
    assert not np.allclose(mirrored, plain, atol=1e-2)  # mirroring matters to this model
    assert np.allclose(np.load(out / "features.npy"), mirrored, atol=1e-3)
    said = result.output.splitlines()
    assert f"skipping 1 undecodable images (listed in {out / 'extract.json'})" in said
    # Where the console is not a terminal, a line every 10 % of the images.
    progress = [re.sub(r"\), .* img/s, \d+ s$", "), R img/s", line) for line in said if line.startswith("features:")]
    assert progress == ["features: 2/5 (40%), R img/s", "features: 4/5 (80%), R img/s",
                        "features: 5/5 (100%), R img/s"], result.output
    assert "features of 5 images" in result.output
    first = next(i for i, line in enumerate(said) if "float16" in line)
    rows = [line.split("│")[1:-1] for line in said[first:] if line.startswith("│")]
    assert [cell.strip() for cell in rows[0][1:]] == ["5", "6", "float16", "yes", "1", "3.0"], result.output
    # On the 80 columns of a non-terminal console the folder wraps onto more rows, whole.
    assert len(rows) > 1 and "".join(row[0].strip() for row in rows) == str(out), result.output
    # The same command again: already there, not extracted over.
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and f"{out}: already extracted (5 images)" in result.output.splitlines()
    assert json.loads((out / "extract.json").read_text()) == meta
    # An --out that is a file: one line naming the option.
    result = runner.invoke(app, [*args[:5], "--out", str(listing[0].path)])
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == f"error: --out {listing[0].path}: exists and is a file, not a folder"
    # An --images folder without images: one line naming the option.
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, [*args[:3], "--images", str(tmp_path / "empty"), *args[5:]])
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == (f"error: --images {tmp_path / 'empty'}: no images in the folder or "
                                               "below it (.jpg, .jpeg, .png, .bmp)")


def test_the_extract_table_names_its_columns() -> None:
    table = render_extract_table({"count": 2, "dim": 8, "dtype": "float32", "flip": False}, Path("/f"))
    assert [c.header for c in table.columns] == ["folder", "images", "dim", "dtype", "flip", "skipped", "seconds"]
    assert [c.justify for c in table.columns] == ["left"] + ["right"] * 6
    assert [list(c.cells) for c in table.columns] == [["/f"], ["2"], ["8"], ["float32"], ["no"], ["0"], ["0.0"]]
    assert table.title == "features of 2 images"


def test_an_unfinished_extraction_with_other_settings_is_refused_unless_it_is_skip_bad_images(tmp_path: Path,
                                                                                            monkeypatch) -> None:
    shown = colour_notices(monkeypatch)
    adapted, listing = small_adapted(tmp_path), image_list(tmp_path / "imgs", 4)
    out = tmp_path / "feats"
    record = to_folder(adapted, listing, out)
    # A finished extraction with other --skip-bad-images is refused; the same one is kept, even with restart_stale.
    with pytest.raises(EcnreidError, match="holds an extraction with skip_bad_images False"):
        to_folder(adapted, listing, out, skip_bad_images=True)
    assert to_folder(adapted, listing, out, restart_stale=True) == record
    assert shown.getvalue() == f"{out}: already extracted (4 images)\n"  # a plain notice, no colour
    shown.truncate(0)
    shown.seek(0)
    # Unfinished: other --skip-bad-images starts over, another dtype is still refused.
    (out / "extract.json").write_text(json.dumps({**record, "done": 2, "complete": False}))
    with pytest.raises(EcnreidError, match="holds an extraction with dtype 'float32'"):
        to_folder(adapted, listing, out, dtype="float16")
    meta = to_folder(adapted, listing, out, skip_bad_images=True)
    assert meta["complete"] and meta["skip_bad_images"]
    assert shown.getvalue() == in_yellow(f"{out}: starting the extraction over (skip_bad_images changed)")


def test_a_missing_or_unreadable_features_file_names_the_reason(tmp_path: Path) -> None:
    adapted, listing = small_adapted(tmp_path), image_list(tmp_path / "imgs", 4)
    out = tmp_path / "feats"
    record = to_folder(adapted, listing, out)
    (out / "extract.json").write_text(json.dumps({**record, "done": 2, "complete": False}))
    (out / "features.npy").unlink()
    with pytest.raises(EcnreidError) as info:
        to_folder(adapted, listing, out)
    assert str(info.value) == (f"{out / 'features.npy'}: cannot continue the extraction (not a readable .npy array: "
                               f"No such file or directory); delete {out} and extract again")
    (out / "features.npy").write_bytes(b"junk")
    with pytest.raises(EcnreidError) as info:
        to_folder(adapted, listing, out)
    reason = str(info.value).split("not a readable .npy array: ")[1].split("); delete")[0]
    assert reason not in ("", "None") and "No such file" not in reason
