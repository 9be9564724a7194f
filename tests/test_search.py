"""`ecnreid search`: the true match of an easy query comes first, the outputs, galleries given as images or
as features, the saved IVF index, re-ranking and its memory check, and one-line errors."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from inference_checkpoint import train_tiny_checkpoint
from PIL import Image
from typer.testing import CliRunner

import ecnreid.inference.extract as extract_module
import ecnreid.inference.index as index_module
import ecnreid.inference.messages as messages_module
import ecnreid.inference.search as search_module
import ecnreid.progress as progress_module
from ecnreid.cli import app
from ecnreid.config import FeatureRunConfig, SearchConfig
from ecnreid.errors import EcnreidError
from ecnreid.inference.adapted import AdaptedModel
from ecnreid.inference.card import ModelCard
from ecnreid.inference.images import ImageEntry, list_images
from ecnreid.inference.index import build_ivf, calibrate_nprobe, flat_search, index_kind, nlist_for
from ecnreid.inference.results import Match, QueryResult
from ecnreid.inference.search import rerank_peak_bytes
from ecnreid.inference.store import FeatureFolder, open_feature_folder, write_index

runner = CliRunner()


def text(result) -> str:
    """The command's output as one line (rich wraps long lines)."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint, query images, and a gallery folder holding each query's re-encoded copy plus the test
    tree's gallery, with its features extracted once."""
    root = tmp_path_factory.mktemp("search")
    checkpoint, target = train_tiny_checkpoint(root)
    queries = sorted((target / "query").glob("*.jpg"))[:4]
    gallery = root / "gallery"
    shutil.copytree(target / "bounding_box_test", gallery / "cams")
    (gallery / "copies").mkdir()
    for query in queries:  # lossless re-encoding of the decoded pixels: the same features under another name
        Image.open(query).convert("RGB").save(gallery / "copies" / f"copy_of_{query.stem}.png")
    query_dir = root / "queries"
    query_dir.mkdir()
    for query in queries:
        shutil.copy(query, query_dir / query.name)
    feats = root / "feats"
    result = runner.invoke(app, ["extract", "--checkpoint", str(checkpoint), "--images", str(gallery), "--out",
                                 str(feats), "--device", "cpu", "--workers", "0", "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    return {"checkpoint": checkpoint, "queries": query_dir, "gallery": gallery, "feats": feats, "root": root}


def search(site: dict[str, Path], out: Path, *extra: str, gallery: Path | None = None, query: Path | None = None):
    args = ["search", "--checkpoint", str(site["checkpoint"]), "--query", str(query or site["queries"])]
    args += ["--gallery", str(gallery or site["feats"]), "--out", str(out), "--device", "cpu", "--workers", "0"]
    return runner.invoke(app, [*args, *extra])


@pytest.mark.slow
def test_the_copy_of_each_query_comes_first(site, tmp_path: Path) -> None:
    out = tmp_path / "found"
    result = search(site, out, "--top-k", "5")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["search"] == {"kind": "flat"} and summary["top_k"] == 5 and summary["gallery"]["count"] == 22
    for entry in summary["results"]:
        first = entry["matches"][0]
        assert Path(first["path"]).name == f"copy_of_{Path(entry['query']['path']).stem}.png"
        assert first["similarity"] > 0.999 and first["pid"] is None  # the copy's name gives no id
        sims = [m["similarity"] for m in entry["matches"]]
        assert sims == sorted(sims, reverse=True) and [m["rank"] for m in entry["matches"]] == [1, 2, 3, 4, 5]
        # Below the copy, the query's person (its gallery images) comes before everyone else.
        assert entry["matches"][1]["pid"] == entry["query"]["pid"] and entry["matches"][1]["same_person"]
    assert sorted(p.name for p in (out / "ranks").iterdir()) == [f"rank_{i:05d}.png" for i in range(4)]
    page = (out / "index.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 4 * 6 and "copy_of_" in page


@pytest.mark.slow
def test_a_single_query_image_against_a_gallery_folder_extracts_it_once(site, tmp_path: Path) -> None:
    out = tmp_path / "folder"
    query = next(site["queries"].iterdir())
    result = search(site, out, gallery=site["gallery"], query=query)
    assert result.exit_code == 0, result.output
    assert (out / "gallery" / "features.npy").is_file()
    first = json.loads((out / "results.json").read_text())["results"][0]["matches"][0]
    assert Path(first["path"]).name == f"copy_of_{query.stem}.png"
    result = search(site, out, gallery=site["gallery"], query=query)
    assert result.exit_code == 0 and "already extracted" in text(result)
    assert sorted(p.name for p in (out / "ranks").iterdir()) == ["rank_00000.png"]


@pytest.mark.slow
def test_rerank_orders_by_the_re_ranked_distance(site, tmp_path: Path) -> None:
    out = tmp_path / "rerank"
    result = search(site, out, "--rerank", "--top-k", "22")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["search"]["kind"] == "rerank"
    for entry in summary["results"]:
        distances = [m["rerank_distance"] for m in entry["matches"]]
        assert distances == sorted(distances) and len(distances) == 22
        assert Path(entry["matches"][0]["path"]).name.startswith("copy_of_")


@pytest.mark.slow
def test_rerank_gives_the_reference_re_ranked_order_not_the_plain_one(site, tmp_path: Path) -> None:
    from test_reranking import reference_rerank

    queries = tmp_path / "query_feats"
    args = ["extract", "--checkpoint", str(site["checkpoint"]), "--images", str(site["queries"]), "--out"]
    result = runner.invoke(app, [*args, str(queries), "--device", "cpu", "--workers", "0", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    query_names = [line.split(",")[0] for line in (queries / "index.csv").read_text().splitlines()[1:]]
    query_features = np.load(queries / "features.npy")
    gallery_features = np.load(site["feats"] / "features.npy").astype(np.float32)  # what search reads
    expected = reference_rerank(query_features, gallery_features, 20, 6, 0.3)
    plain = 1.0 - query_features.astype(np.float64) @ gallery_features.T.astype(np.float64)
    out = tmp_path / "rerank"
    result = search(site, out, "--rerank", "--top-k", "22")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    differs = False
    for entry in summary["results"]:
        q = next(i for i, name in enumerate(query_names) if Path(name).name == Path(entry["query"]["path"]).name)
        rows = [m["row"] for m in entry["matches"]]
        distances = np.array([m["rerank_distance"] for m in entry["matches"]])
        np.testing.assert_allclose(distances, np.sort(expected[q]), atol=1e-4)
        np.testing.assert_allclose(expected[q][rows], distances, atol=1e-4)  # each row has its own distance
        differs |= rows != np.argsort(plain[q], kind="stable").tolist()
    assert differs  # the re-ranked order is not the plain one on this gallery


@pytest.mark.slow
def test_rerank_that_would_not_fit_is_refused_in_one_line(site, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(search_module, "available_memory", lambda device: 1 << 20)
    result = search(site, tmp_path / "out", "--rerank")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--rerank: re-ranking 4 queries against 22 gallery images needs about" in text(result)


def test_the_rerank_estimate_covers_the_measured_peaks() -> None:
    # README, Speed: Market 2.2 GB and MSMT17 3.8 GB peak resident memory, 2048-d, interpreter included.
    assert 1.8e9 <= rerank_peak_bytes(3_368, 15_913, 2048) <= 3e9
    assert rerank_peak_bytes(11_659, 82_161, 2048) >= 3.8e9
    assert rerank_peak_bytes(1_000, 1_000_000, 2048) > 20e9  # a million-image gallery is refused on most machines


@pytest.mark.slow
def test_the_ivf_index_is_saved_reused_and_rebuilt_when_the_features_change(site, tmp_path: Path) -> None:
    feats = tmp_path / "feats"
    shutil.copytree(site["feats"], feats)
    first = search(site, tmp_path / "a", "--index", "ivf", gallery=feats)
    assert first.exit_code == 0, first.output
    assert "training an IVF index" in text(first) and (feats / "ivf.faiss").is_file()
    how = json.loads((tmp_path / "a" / "results.json").read_text())["search"]
    assert how["kind"] == "ivf" and how["built_now"] and how["calibrated_recall"] >= 0.95
    second = search(site, tmp_path / "b", "--index", "ivf", gallery=feats)
    assert second.exit_code == 0 and "training an IVF index" not in text(second)
    assert not json.loads((tmp_path / "b" / "results.json").read_text())["search"]["built_now"]
    exact = search(site, tmp_path / "c", gallery=feats)
    ranked = [[m["row"] for m in r["matches"]] for r in json.loads((tmp_path / "c" / "results.json").read_text())[
        "results"]]
    approx = [[m["row"] for m in r["matches"]] for r in json.loads((tmp_path / "b" / "results.json").read_text())[
        "results"]]
    assert exact.exit_code == 0 and ranked == approx  # 22 features: one cell, so IVF is exact here
    features = np.load(feats / "features.npy")
    np.save(feats / "features.npy", features[::-1].copy())
    third = search(site, tmp_path / "d", "--index", "ivf", gallery=feats)
    assert third.exit_code == 0 and "features changed since the IVF index was built" in text(third)


@pytest.mark.slow
def test_a_gallery_of_another_dimension_is_a_one_line_error(site, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    np.save(other / "features.npy", np.eye(3, 16, dtype=np.float32))
    write_index([ImageEntry(f"/x/{i}.jpg", None, None) for i in range(3)], other / "index.csv")
    result = search(site, tmp_path / "out", gallery=other)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "features have dimension 16, but the model" in text(result) and "gives 512" in text(result)


@pytest.mark.slow
def test_features_of_another_checkpoint_are_refused(site, tmp_path: Path) -> None:
    feats = tmp_path / "feats"
    shutil.copytree(site["feats"], feats)
    meta = json.loads((feats / "extract.json").read_text())
    (feats / "extract.json").write_text(json.dumps({**meta, "checkpoint_sha256": "0" * 64, "checkpoint": "old.pt"}))
    result = search(site, tmp_path / "out", gallery=feats)
    assert result.exit_code == 2 and "features of another checkpoint (old.pt)" in text(result)


@pytest.mark.slow
def test_an_empty_query_folder_is_a_one_line_error(site, tmp_path: Path) -> None:
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no pictures")
    result = search(site, tmp_path / "out", query=tmp_path / "empty")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"--query {tmp_path / 'empty'}: no images in the folder or below it" in text(result)


@pytest.mark.slow
def test_a_gallery_that_is_neither_images_nor_features_is_a_one_line_error(site, tmp_path: Path) -> None:
    result = search(site, tmp_path / "out", gallery=tmp_path / "missing")
    assert result.exit_code == 2 and "expected a folder of images or a feature folder" in text(result)


def clustered(num: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centres, dim)).astype(np.float32)
    points = means[rng.integers(0, centres, num)] + 0.5 * rng.standard_normal((num, dim)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def test_flat_search_in_blocks_is_exact(monkeypatch) -> None:
    gallery, queries = clustered(300, 8, 10), clustered(7, 8, 10, seed=1)
    monkeypatch.setattr(index_module, "BLOCK_BYTES", 4 * 8 * 64)  # blocks of 64 rows
    sims, rows = flat_search(queries, gallery.astype(np.float16), 5)
    expected = queries @ gallery.astype(np.float16).astype(np.float32).T
    assert np.array_equal(rows, np.argsort(-expected, axis=1, kind="stable")[:, :5])
    assert np.allclose(sims, np.take_along_axis(expected, rows, axis=1), atol=1e-6)


def test_ivf_calibration_reaches_the_target_recall() -> None:
    gallery = clustered(4000, 16, 50)
    assert nlist_for(4000) == 100 and nlist_for(100) == 2 and nlist_for(10) == 1
    assert index_kind("auto", 1_000_000) == "flat" and index_kind("auto", 1_000_001) == "ivf"
    index = build_ivf(gallery, show_progress=False)
    nprobe, recall = calibrate_nprobe(index, gallery)
    assert recall >= 0.95 and 1 <= nprobe < index.nlist


def test_the_rerank_memory_estimate_and_its_refusal(monkeypatch) -> None:
    gib = 1 << 30
    # 1 GiB + two float32 copies + 16 KiB per image + three query blocks of distances (2048 rows when they fit)
    assert rerank_peak_bytes(10, 1000, 8) == gib + 2 * 1010 * 8 * 4 + 1010 * 16 * 1024 + 3 * 2048 * 1000 * 4
    assert rerank_peak_bytes(1, 1 << 20, 4) == gib + 2 * ((1 << 20) + 1) * 16 + ((1 << 20) + 1) * 16384 + 3 * 64 * (
        1 << 20) * 4
    huge = (1 << 27) + 1
    assert rerank_peak_bytes(1, 1 << 27, 1) == gib + 2 * huge * 4 + huge * 16384 + 3 * (1 << 27) * 4
    assert rerank_peak_bytes(3, 0, 2) == gib + 2 * 3 * 2 * 4 + 3 * 16384
    cpu = torch.device("cpu")
    free = search_module.available_memory(cpu)
    meminfo = Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]
    assert free is not None and abs(free - int(meminfo) * 1024) < 2 * gib  # the kernel's figure, in bytes
    monkeypatch.setattr(search_module, "available_memory", lambda device: 3 * gib)
    search_module.check_rerank_fits(1, 1000, 8, cpu)  # about 1.03 GiB fits
    with pytest.raises(EcnreidError) as info:
        search_module.check_rerank_fits(2000, 100_000, 512, cpu)
    need = rerank_peak_bytes(2000, 100_000, 512) / gib
    assert str(info.value) == (f"--rerank: re-ranking 2,000 queries against 100,000 gallery images needs about "
                               f"{need:.1f} GiB and cpu has 3.0 GiB free; search without --rerank")
    monkeypatch.setattr(search_module, "available_memory", lambda device: None)
    search_module.check_rerank_fits(10**6, 10**7, 2048, cpu)  # unknown free memory: not refused


def test_available_memory_without_proc_meminfo(monkeypatch) -> None:
    import builtins

    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path) == "/proc/meminfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert search_module.available_memory(torch.device("cpu")) == os.sysconf("SC_AVPHYS_PAGES") * os.sysconf(
        "SC_PAGE_SIZE")
    monkeypatch.setattr(os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert search_module.available_memory(torch.device("cpu")) is None


def unit_gallery(folder: Path, features: np.ndarray, meta: dict | None = None) -> FeatureFolder:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "features.npy", features)
    write_index([ImageEntry(f"/g/{i:04d}_c{i % 3 + 1}.jpg", i // 2, i % 3) for i in range(len(features))],
                folder / "index.csv")
    if meta is not None:
        (folder / "extract.json").write_text(json.dumps(meta))
    return open_feature_folder(folder, "--gallery")


def random_unit(num: int, dim: int, seed: int) -> np.ndarray:
    points = np.random.default_rng(seed).standard_normal((num, dim)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def test_check_gallery_wants_this_models_dimension_and_checkpoint(tmp_path: Path) -> None:
    card = ModelCard("resnet18", 32, 16, "pool5", 8, "ecn", "a", "b", 1, 1)
    adapted = AdaptedModel(torch.nn.Identity(), card, tmp_path / "last.pt", "abc")
    search_module.check_gallery(unit_gallery(tmp_path / "plain", random_unit(4, 8, 0)), adapted)
    mine = {"complete": True, "checkpoint": "x.pt", "checkpoint_sha256": "abc"}
    search_module.check_gallery(unit_gallery(tmp_path / "mine", random_unit(4, 8, 0), mine), adapted)
    other = unit_gallery(tmp_path / "other", random_unit(4, 8, 0), {**mine, "checkpoint_sha256": "def"})
    with pytest.raises(EcnreidError) as info:
        search_module.check_gallery(other, adapted, "--queries")
    assert str(info.value) == (f"--queries {tmp_path / 'other'}: features of another checkpoint (x.pt); extract the "
                               f"gallery with {tmp_path / 'last.pt'}")
    wide = unit_gallery(tmp_path / "wide", random_unit(4, 6, 0))
    with pytest.raises(EcnreidError) as info:
        search_module.check_gallery(wide, adapted)
    assert str(info.value) == (f"--gallery {tmp_path / 'wide'}: features have dimension 6, but the model of "
                               f"{tmp_path / 'last.pt'} gives 8; extract the gallery with this checkpoint")


def test_rank_flat_ivf_and_rerank_against_numpy(tmp_path: Path) -> None:
    from test_reranking import reference_rerank

    gallery = unit_gallery(tmp_path / "g", random_unit(120, 8, 0))
    queries = random_unit(5, 8, 1)
    cpu = torch.device("cpu")
    similarity = queries @ np.asarray(gallery.features).T
    order = np.argsort(-similarity, axis=1)
    config = SearchConfig(checkpoint=tmp_path / "c.pt", query=tmp_path, gallery=tmp_path, out=tmp_path, top_k=4)
    sims, rows, distances, how = search_module.rank(config, queries, gallery, cpu)
    assert how == {"kind": "flat"} and distances is None and np.array_equal(rows, order[:, :4])
    np.testing.assert_allclose(sims, np.take_along_axis(similarity, rows, axis=1), atol=1e-5)
    many = dataclasses.replace(config, top_k=500)
    assert search_module.rank(many, queries, gallery, cpu)[1].shape == (5, 120)
    ivf_config = dataclasses.replace(config, index="ivf", nprobe=1000)
    sims, rows, distances, how = search_module.rank(ivf_config, queries, gallery, cpu)
    assert np.array_equal(rows, order[:, :4]) and distances is None  # every cell visited: exact
    assert {k: how[k] for k in ("kind", "nlist", "nprobe", "built_now")} == {"kind": "ivf", "nlist": 3, "nprobe": 3,
                                                                            "built_now": True}
    saved = json.loads((tmp_path / "g" / "ivf.json").read_text())
    assert (how["calibrated_nprobe"], how["calibrated_recall"]) == (saved["nprobe"], saved["recall"])
    calibrated = search_module.rank(dataclasses.replace(ivf_config, nprobe=None), queries, gallery, cpu)[3]
    assert calibrated["nprobe"] == saved["nprobe"] and not calibrated["built_now"]
    rerank_config = dataclasses.replace(config, rerank=True)
    sims, rows, distances, how = search_module.rank(rerank_config, queries, gallery, cpu)
    assert how == {"kind": "rerank", "k1": 20, "k2": 6, "lambda": 0.3}
    expected = reference_rerank(queries, np.asarray(gallery.features), 20, 6, 0.3)
    np.testing.assert_allclose(distances, np.sort(expected, axis=1)[:, :4], atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(expected, rows, axis=1), distances, atol=1e-4)
    np.testing.assert_allclose(sims, np.take_along_axis(similarity, rows, axis=1), atol=1e-5)


def test_collect_skips_ivf_padding_and_numbers_the_matches(tmp_path: Path) -> None:
    gallery = unit_gallery(tmp_path / "g", random_unit(4, 2, 0))
    queries = [ImageEntry("/q/a.jpg", 1, 0), ImageEntry("/q/b.jpg", None, None)]
    sims = np.array([[0.9, 0.5, 0.1], [0.8, 0.0, 0.0]], dtype=np.float32)
    rows = np.array([[3, -1, 0], [2, -1, -1]])
    results = search_module.collect(queries, gallery, sims, rows, None)
    assert [r.query for r in results] == queries
    assert [(m.rank, m.row, m.image, m.rerank_distance) for m in results[0].matches] == [
        (1, 3, gallery.entries[3], None), (2, 0, gallery.entries[0], None)]
    assert [m.similarity for m in results[0].matches] == pytest.approx([0.9, 0.1])
    reranked = search_module.collect(queries, gallery, sims, rows, np.array([[0.25, 0.0, 0.5], [0.75, 0, 0]]))
    assert [m.rerank_distance for m in reranked[0].matches] == [0.25, 0.5]
    assert [m.rerank_distance for m in reranked[1].matches] == [0.75]


def test_the_console_table_shows_the_first_queries_and_counts_the_rest(tmp_path: Path) -> None:
    from rich.console import Console

    gallery = [ImageEntry("/g/0001_c1.jpg", 1, 0), ImageEntry("/g/other.jpg", None, None)]
    results = [QueryResult(ImageEntry(f"/q/{i:02d}.jpg", 1 if i % 2 else 2, 0),
                           [Match(1, i % 2, gallery[i % 2], 0.5 + i / 100)]) for i in range(22)]
    results[1] = QueryResult(ImageEntry("/q/01.jpg", 1, 0), [])
    table = search_module.render_search_table(results, "t")
    assert table.caption == "2 more queries in results.json and index.html" and table.row_count == 20
    console = Console(width=200, record=True)
    console.print(table)
    lines = console.export_text().splitlines()
    cells = [line.replace("│", " ").split() for line in lines if ".jpg" in line]
    body = {cell[0]: cell[1:] for cell in cells}
    assert body["00.jpg"] == ["0001_c1.jpg", "0.500", "no"]
    assert body["01.jpg"] == ["-", "-", "-"]
    assert body["03.jpg"] == ["other.jpg", "0.530", "-"]
    assert body["02.jpg"] == ["0001_c1.jpg", "0.520", "no"] and "19.jpg" in body and "20.jpg" not in body
    assert [c.header for c in table.columns] == ["query", "top-1", "similarity", "same id"]
    assert [c.justify for c in table.columns] == ["left", "left", "right", "right"]
    few = search_module.render_search_table(results[:20], "t")
    assert few.caption is None and few.title == "t"
    one = search_module.render_search_table([QueryResult(ImageEntry("/q/x.jpg", 2, 0),
                                                         [Match(1, 0, ImageEntry("/g/y.jpg", 2, 1), 0.25)])], "t")
    console = Console(width=200, record=True)
    console.print(one)
    assert "yes" in console.export_text()


def test_old_rank_lists_are_cleared_and_kept_ones_stay(tmp_path: Path) -> None:
    for name in ("rank_00000.png", "rank_00001.png", "rank_00002.png", "notes.png"):
        (tmp_path / name).write_bytes(b"x")
    search_module._clear_old_rank_lists(tmp_path, {tmp_path / "rank_00000.png"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.png", "rank_00000.png"]


# run_search itself, through the CLI, with a small network in place of a trained checkpoint's.
class HalfMeans(torch.nn.Module):
    """Unit features of the left and right halves' channel means: mirroring an image changes them."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        halves = torch.cat([images[..., :2].mean(dim=(2, 3)), images[..., 2:].mean(dim=(2, 3)) + 1.0], dim=1)
        return torch.nn.functional.normalize(halves, dim=1)


@pytest.fixture
def small_site(tmp_path: Path, monkeypatch) -> dict:
    """Three queries, a gallery folder of their lossless copies (other cameras) and five other people, and a
    small model that run_search loads for the checkpoint path."""
    card = ModelCard("resnet18", 8, 4, "half means", 6, "ecn", "a", "b", 1, 1)
    checkpoint = tmp_path / "small.pt"
    adapted = AdaptedModel(HalfMeans(), card, checkpoint, "sha-small")
    monkeypatch.setattr(search_module, "load_adapted_model",
                        lambda path: adapted if Path(path) == checkpoint else pytest.fail(str(path)))
    rng = np.random.default_rng(0)
    queries, gallery = tmp_path / "queries", tmp_path / "gallery"
    queries.mkdir()
    gallery.mkdir()
    for pid in range(1, 9):
        pixels = Image.fromarray(rng.integers(0, 256, (8, 4, 3), dtype=np.uint8))
        if pid <= 3:
            pixels.save(queries / f"{pid:04d}_c1s1_000001_00.png")
        pixels.save(gallery / f"{pid:04d}_c2s1_000002_00.png")
    return {"checkpoint": checkpoint, "adapted": adapted, "queries": queries, "gallery": gallery}


def small_search(site: dict, out: Path, *extra: str, query: Path | None = None, gallery: Path | None = None):
    args = ["search", "--checkpoint", str(site["checkpoint"]), "--query", str(query or site["queries"]),
            "--gallery", str(gallery or site["gallery"]), "--out", str(out), "--device", "cpu", "--workers", "0",
            "--batch-size", "2", *extra]
    return runner.invoke(app, args)


def image_entry(path: Path) -> dict:
    pid, cam = int(path.name[:4]), int(path.name[6]) - 1
    return {"path": str(path.resolve()), "pid": pid, "camid": cam}


def test_search_of_an_image_gallery_with_a_small_model(small_site: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(index_module, "BLOCK_BYTES", 4 * 6 * 2)  # exact search in blocks of 2 gallery rows
    clock = iter(range(10, 100))  # perf_counter: one second more at each reading
    monkeypatch.setattr(search_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    loaders, drawn = [], []
    extract_features, draw_rank_list = extract_module.iter_features, search_module.rank_list_png

    def gallery_loader(*args, **kwargs):
        loaders.append({key: kwargs[key] for key in ("batch_size", "workers", "flip")})
        return extract_features(*args, **kwargs)

    def rank_list(result, number, top_k, path):
        drawn.append((number, top_k, path.name))
        return draw_rank_list(result, number, top_k, path)

    monkeypatch.setattr(extract_module, "iter_features", gallery_loader)
    monkeypatch.setattr(search_module, "rank_list_png", rank_list)
    out = tmp_path / "found"
    result = small_search(small_site, out, "--top-k", "3")
    assert result.exit_code == 0, result.output
    assert loaders == [{"batch_size": 2, "workers": 0, "flip": False}]  # the gallery's extraction, as asked
    assert drawn == [(n, 3, f"rank_{n:05d}.png") for n in range(3)]  # each PNG's caption says "query <n>"
    # Where the console is not a terminal, the gallery's extraction prints a line every 10 % (here each batch)
    # and the short steps a line at half way and at the end.
    progress = [re.sub(r"\), .* (\w+)/s, \d+ s$", r"), R \1/s", line) for line in result.output.splitlines()
                if line.startswith(("features", "search", "query features", "rank lists"))]
    assert progress == [
        "features: 2/8 (25%), R img/s", "features: 4/8 (50%), R img/s", "features: 6/8 (75%), R img/s",
        "features: 8/8 (100%), R img/s",
        "query features: 2/3 (67%), R img/s", "query features: 3/3 (100%), R img/s",
        "search (exact): 4/8 (50%), R vec/s", "search (exact): 8/8 (100%), R vec/s",
        "rank lists: 2/3 (67%), R img/s", "rank lists: 3/3 (100%), R img/s",
    ], result.output
    said = text(result)
    cache = out / "gallery"
    assert f"gallery features in {cache}: pass --gallery {cache} to search them again without images" in said
    assert said.endswith(f"results: {out / 'results.json'}, {out / 'index.html'}, {out / 'ranks'}/")
    assert "3 queries in 8 gallery images (flat)" in said
    table = [line.replace("│", " ").split() for line in result.output.splitlines() if "_c1s1_" in line]
    assert [row[0] for row in table] == [f"{pid:04d}_c1s1_000001_00.png" for pid in (1, 2, 3)]
    assert all(row[1:] == [f"{row[0][:4]}_c2s1_000002_00.png", "1.000", "yes"] for row in table), table
    summary = json.loads((out / "results.json").read_text())
    assert summary.pop("timings") == {"query_features_s": 1.0, "search_s": 1.0}  # each step's own seconds
    results = summary.pop("results")
    assert summary == {
        "checkpoint": str(small_site["checkpoint"]), "checkpoint_sha256": "sha-small",
        "card": small_site["adapted"].card.to_dict(), "query": str(small_site["queries"]),
        "gallery": {"given": str(small_site["gallery"]), "features": str(cache), "count": 8, "dtype": "float32"},
        "flip": False, "top_k": 3, "search": {"kind": "flat"}, "html": str(out / "index.html"),
        "rank_lists": str(out / "ranks"),
    }
    gallery = sorted(small_site["gallery"].iterdir())
    features = HalfMeans()(torch.stack([torch.from_numpy(np.asarray(Image.open(p), np.float32)).permute(2, 0, 1)
                                        for p in gallery]))
    assert len(results) == 3
    for number, (query, found) in enumerate(zip(sorted(small_site["queries"].iterdir()), results, strict=True)):
        assert found["query"] == image_entry(query)
        assert [m["rank"] for m in found["matches"]] == [1, 2, 3]
        best = found["matches"][0]  # the query's own copy: the same features
        assert {k: best[k] for k in ("row", "path", "pid", "camid", "same_person")} == {
            "row": number, **image_entry(gallery[number]), "same_person": True}
        assert best["similarity"] == pytest.approx(1.0, abs=1e-5) and "rerank_distance" not in best
        assert all(m["same_person"] is False for m in found["matches"][1:])
        similarities = [m["similarity"] for m in found["matches"]]
        assert similarities == sorted(similarities, reverse=True) and similarities[1] < 0.9999
        assert (out / "ranks" / f"rank_{number:05d}.png").is_file()
    assert len(features) == 8 and (out / "index.html").is_file()
    assert sorted(p.name for p in (out / "ranks").iterdir()) == [f"rank_{n:05d}.png" for n in range(3)]


def test_search_of_a_feature_folder_follows_its_flip_and_reranks(small_site: dict, tmp_path: Path) -> None:
    out = tmp_path / "found"
    assert small_search(small_site, out, "--flip", "--dtype", "float16").exit_code == 0
    cache = out / "gallery"
    one = next(iter(sorted(small_site["queries"].iterdir())))
    result = small_search(small_site, out, "--flip", "--rerank", "--top-k", "4", gallery=cache, query=one)
    assert result.exit_code == 0, result.output
    assert "queries embedded" not in text(result) and "gallery features in" not in text(result), result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["flip"] is True and summary["search"] == {"kind": "rerank", "k1": 20, "k2": 6, "lambda": 0.3}
    assert summary["gallery"] == {"given": str(cache), "features": str(cache), "count": 8, "dtype": "float16"}
    assert summary["top_k"] == 4
    matches = summary["results"][0]["matches"]
    assert matches[0]["row"] == 0 and matches[0]["similarity"] == pytest.approx(1.0, abs=1e-3)  # float16
    distances = [m["rerank_distance"] for m in matches]
    assert len(distances) == 4 and distances == sorted(distances)
    # One query now: the rank lists of the earlier three are gone.
    assert sorted(p.name for p in (out / "ranks").iterdir()) == ["rank_00000.png"]
    # Without --flip, the queries still follow the gallery's features (embedded with --flip) and say so.
    result = small_search(small_site, tmp_path / "plain", gallery=cache)
    assert result.exit_code == 0, result.output
    assert "queries embedded with flip=True, as the gallery features were" in text(result)
    summary = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert summary["flip"] is True
    assert [r["matches"][0]["similarity"] for r in summary["results"]] == pytest.approx([1.0] * 3, abs=1e-3)


def test_search_skips_bad_query_and_gallery_images_when_asked(small_site: dict, tmp_path: Path) -> None:
    (small_site["queries"] / "0009_c1s1_000009_00.png").write_bytes(b"not an image")
    (small_site["gallery"] / "0010_c2s1_000010_00.png").write_bytes(b"not an image")
    result = small_search(small_site, tmp_path / "found", "--skip-bad-images")
    assert result.exit_code == 0, result.output
    assert "skipped 1 undecodable query images" in text(result)
    assert "skipping 1 undecodable images" in text(result)  # the gallery's extraction skips too
    summary = json.loads((tmp_path / "found" / "results.json").read_text())
    assert len(summary["results"]) == 3 and summary["gallery"]["count"] == 8
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not an image")
    result = small_search(small_site, tmp_path / "none", "--skip-bad-images", query=bad)
    assert result.exit_code == 2 and text(result).endswith(
        f"skipped 1 undecodable query images error: --query {bad}: no query image decodes")


def test_available_memory_is_memavailable_in_bytes(monkeypatch) -> None:
    import builtins
    import io

    real_open = builtins.open
    meminfo = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    1234567 kB\n"

    def fake_proc(path, *args, **kwargs):
        return io.StringIO(meminfo) if str(path) == "/proc/meminfo" else real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_proc)
    assert search_module.available_memory(torch.device("cpu")) == 1234567 * 1024


def test_rerank_that_just_fits_runs_and_the_estimate_is_whole_bytes(monkeypatch) -> None:
    cpu = torch.device("cpu")
    need = rerank_peak_bytes(5, 100_000, 16)
    # 2^26 // 100,000 = 671 query rows per block of distances, in whole bytes
    assert isinstance(need, int) and need == (1 << 30) + 2 * 100_005 * 16 * 4 + 100_005 * 16384 + 3 * 671 * 100_000 * 4
    monkeypatch.setattr(search_module, "available_memory", lambda device: need)
    search_module.check_rerank_fits(5, 100_000, 16, cpu)
    monkeypatch.setattr(search_module, "available_memory", lambda device: need - 1)
    with pytest.raises(EcnreidError):
        search_module.check_rerank_fits(5, 100_000, 16, cpu)


def test_the_nprobe_asked_for_reaches_the_ivf_index(tmp_path: Path) -> None:
    gallery = unit_gallery(tmp_path / "g", random_unit(120, 8, 0))
    queries = random_unit(20, 8, 1)
    config = SearchConfig(checkpoint=tmp_path / "c.pt", query=tmp_path, gallery=tmp_path, out=tmp_path, top_k=10,
                          index="ivf", nprobe=1)
    rows = search_module.rank(config, queries, gallery, torch.device("cpu"))[1]
    index = index_module.load_or_build_ivf(gallery.folder, gallery.features, show_progress=False)
    assert index.nprobe > 1  # else the calibrated default could not be told from nprobe 1
    assert np.array_equal(rows, index.search(queries, 10, 1)[1])
    assert not np.array_equal(rows, index.search(queries, 10, index.nprobe)[1])


def test_a_small_search_names_the_gallery_in_every_error(small_site: dict, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = small_search(small_site, tmp_path / "a", gallery=missing)
    assert result.exit_code == 2 and text(result) == (
        f"error: --gallery {missing}: not found; expected a folder of images or a feature folder of `ecnreid extract`")
    a_file = next(small_site["gallery"].iterdir())
    result = small_search(small_site, tmp_path / "b", gallery=a_file)
    assert result.exit_code == 2 and text(result).startswith(f"error: --gallery {a_file}: is a file; expected")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = small_search(small_site, tmp_path / "c", gallery=empty)
    assert result.exit_code == 2 and text(result).startswith(f"error: --gallery {empty}: ")
    # The cached gallery of another model is extracted over, not refused.
    out = tmp_path / "d"
    assert small_search(small_site, out).exit_code == 0
    meta = json.loads((out / "gallery" / "extract.json").read_text())
    assert meta["source"] == {"images": str(small_site["gallery"].resolve())}
    (out / "gallery" / "extract.json").write_text(json.dumps({**meta, "checkpoint_sha256": "another"}))
    result = small_search(small_site, out)
    assert result.exit_code == 0 and "starting the extraction over (checkpoint_sha256 changed)" in text(result)
    # A cached gallery that says it is complete but whose features are damaged.
    cache = out / "gallery"
    (cache / "features.npy").write_bytes(b"not an array")
    result = small_search(small_site, out)
    assert result.exit_code == 2 and text(result).endswith(
        f"error: --gallery {cache}: cannot read features.npy (not a .npy array); delete {cache} and search again")
    # The gallery's cache folder under --out cannot be made.
    blocked = tmp_path / "e"
    blocked.mkdir()
    (blocked / "gallery").write_text("in the way")
    result = small_search(small_site, blocked)
    assert result.exit_code == 2 and text(result) == (
        f"error: --gallery {blocked / 'gallery'}: exists and is a file, not a folder")
    # A feature folder whose extraction has not finished.
    unfinished = tmp_path / "unfinished"
    shutil.copytree(cache, unfinished)
    meta = json.loads((unfinished / "extract.json").read_text())
    (unfinished / "extract.json").write_text(json.dumps({**meta, "complete": False, "done": 4}))
    result = small_search(small_site, tmp_path / "f", gallery=unfinished)
    assert result.exit_code == 2 and text(result).startswith(
        f"error: --gallery {unfinished}: unfinished extraction (4 of 8 images)")


def test_a_small_search_names_the_query_and_the_out_option_in_their_errors(small_site: dict, tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    result = small_search(small_site, a_file)
    assert result.exit_code == 2 and text(result) == f"error: --out {a_file}: exists and is a file, not a folder"
    missing = tmp_path / "missing"
    result = small_search(small_site, tmp_path / "out", query=missing)
    assert result.exit_code == 2 and text(result) == f"error: --query {missing}: no such file or folder"


def extract_gallery(site: dict, folder: Path, *, flip: bool) -> Path:
    """The gallery images' features, extracted into ``folder`` as `ecnreid extract` would."""
    listing = list_images(site["gallery"], "--images")
    extract_module.extract_to_folder(site["adapted"], listing, folder, source={"images": str(site["gallery"])},
                                     flip=flip, workers=0)
    return folder


def test_a_feature_folder_without_a_record_takes_the_flip_asked_for(small_site: dict, tmp_path: Path) -> None:
    folder = extract_gallery(small_site, tmp_path / "feats", flip=True)
    (folder / "extract.json").unlink()  # features and index only, as another tool might write them
    out = tmp_path / "found"
    result = small_search(small_site, out, "--flip", "--batch-size", "1", gallery=folder)
    assert result.exit_code == 0, result.output
    assert "queries embedded" not in text(result)
    summary = json.loads((out / "results.json").read_text())
    assert summary["flip"] is True
    assert [r["matches"][0]["similarity"] for r in summary["results"]] == pytest.approx([1.0] * 3, abs=1e-5)
    # The query features are a short step: one line at half way and one at the end, not one every 10 %.
    progress = [line.split(",")[0] for line in result.output.splitlines() if line.startswith("query features")]
    assert progress == ["query features: 2/3 (67%)", "query features: 3/3 (100%)"]


def test_on_a_terminal_search_warnings_are_yellow_and_its_bars_show_no_placeholder(
    small_site: dict, tmp_path: Path, monkeypatch
) -> None:
    from rich.console import Console

    folder = extract_gallery(small_site, tmp_path / "feats", flip=True)
    (small_site["queries"] / "0009_c1s1_000009_00.png").write_bytes(b"not an image")
    terminal = Console(force_terminal=True, color_system="standard", width=300, file=io.StringIO())
    for module in (progress_module, messages_module, search_module):
        monkeypatch.setattr(module, "console", terminal)
    result = small_search(small_site, tmp_path / "found", "--skip-bad-images", gallery=folder)
    assert result.exit_code == 0, result.output
    shown = terminal.file.getvalue()
    warnings = ("skipped 1 undecodable query images", "queries embedded with flip=True, as the gallery features were")
    for warning in warnings:
        said = [line for line in shown.splitlines() if warning in line]  # after the erasure of a finished bar
        assert len(said) == 1 and said[0].endswith(f"\x1b[33m{warning}\x1b[0m"), said
    # Every bar (query features, exact search, rank lists) was drawn, with an empty info field.
    for bar in ("query features", "search (exact)", "rank lists"):
        assert f"\x1b[1m{bar}\x1b[0m" in shown
    assert "None" not in shown


def test_query_features_are_unit_float32_rows(small_site: dict, tmp_path: Path) -> None:
    config = SearchConfig(checkpoint=small_site["checkpoint"], query=small_site["queries"], gallery=tmp_path,
                          out=tmp_path, top_k=3, features=FeatureRunConfig(batch_size=2, workers=0))
    queries = list_images(small_site["queries"], "--query")
    features = search_module.query_features(small_site["adapted"], queries, config, torch.device("cpu"), False)
    assert features.dtype == np.float32 and features.shape == (3, 6)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-6)
