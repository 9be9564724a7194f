"""The gallery index of `ecnreid search` (``ecnreid.inference.index``): the kind and size rules, exact search in
blocks, the IVF index (its build, the nprobe calibration against exact search) and its reuse beside the features."""

from __future__ import annotations

import io
import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from terminal_bars import ERASED, assert_finished_bar, last_frames, terminal_console

import ecnreid.inference.index as index_module
from ecnreid.inference.index import (
    IVFIndex,
    _without,
    _write_index,
    block_rows,
    build_ivf,
    calibrate_nprobe,
    flat_search,
    float32_rows,
    index_kind,
    load_or_build_ivf,
    nlist_for,
)
from ecnreid.io import TEMP_FILE_PATTERN


def unit_rows(num: int, dim: int, seed: int = 0, dtype: type = np.float32) -> np.ndarray:
    points = np.random.default_rng(seed).standard_normal((num, dim)).astype(np.float32)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(dtype)


def test_index_kind_and_sizes() -> None:
    assert [index_kind("flat", 10**7), index_kind("ivf", 1), index_kind("auto", 0)] == ["flat", "ivf", "flat"]
    assert (index_kind("auto", 1_000_000), index_kind("auto", 1_000_001)) == ("flat", "ivf")
    with pytest.raises(ValueError, match="^index kind 'hnsw' is not auto, flat or ivf$"):
        index_kind("hnsw", 10)
    assert [nlist_for(n) for n in (0, 79, 80, 1600, 40_000, 10**6)] == [1, 1, 2, 40, 800, 4000]
    assert (block_rows(1), block_rows(512), block_rows(1 << 26)) == (1 << 25, 1 << 16, 1)


def test_float32_rows_are_a_contiguous_float32_copy_of_the_rows() -> None:
    features = np.arange(12, dtype=np.float16).reshape(6, 2)[::1]
    rows = float32_rows(features, 1, 4)
    assert rows.dtype == np.float32 and rows.flags["C_CONTIGUOUS"]
    assert np.array_equal(rows, [[2, 3], [4, 5], [6, 7]])
    assert np.array_equal(float32_rows(np.asfortranarray(features.astype(np.float32)), 4, 9), [[8, 9], [10, 11]])


def test_flat_search_reports_each_block_and_keeps_k_within_the_gallery(monkeypatch) -> None:
    gallery, queries = unit_rows(7, 4), unit_rows(3, 4, seed=1)
    monkeypatch.setattr(index_module, "BLOCK_BYTES", 4 * 4 * 3)  # blocks of 3 rows: 3, 3, 1
    seen: list[int] = []
    sims, rows = flat_search(queries, gallery, 2, advance=seen.append)
    assert seen == [3, 3, 1]
    expected = queries @ gallery.T
    assert np.array_equal(rows, np.argsort(-expected, axis=1)[:, :2])
    np.testing.assert_allclose(sims, np.take_along_axis(expected, rows, axis=1), atol=1e-6)
    half = flat_search(queries.astype(np.float16), gallery, 2)
    assert np.array_equal(half[1], flat_search(queries.astype(np.float16).astype(np.float32), gallery, 2)[1])
    sims, rows = flat_search(queries, gallery, 50)
    assert rows.shape == (3, 7) and np.array_equal(rows, np.argsort(-expected, axis=1))


@pytest.mark.parametrize(
    ("dtype", "kind"), [(np.float32, faiss.IndexIVFFlat), (np.float16, faiss.IndexIVFScalarQuantizer)]
)
def test_build_ivf_trains_spherical_cells_and_adds_every_row(dtype, kind, monkeypatch, capsys) -> None:
    gallery = unit_rows(200, 8, dtype=dtype)
    monkeypatch.setattr(index_module, "BLOCK_BYTES", 4 * 8 * 64)
    index = build_ivf(gallery, 3, show_progress=False)
    assert type(index) is kind and index.nlist == 3 and index.ntotal == 200 and index.d == 8
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert (index.cp.niter, index.cp.spherical, index.cp.seed) == (10, True, 0)
    assert "training an IVF index of 3 cells on 120 of 200 gallery features" in capsys.readouterr().err
    centroids = index.quantizer.reconstruct_n(0, 3)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    # Every row is in the index: visiting every cell is exact search.
    sims, rows = IVFIndex(index, 3, 1.0, True).search(gallery[:5], 4)
    assert np.array_equal(rows, flat_search(gallery[:5], gallery, 4)[1])
    build_ivf(gallery, show_progress=False)
    assert "training an IVF index of 5 cells on 200 of 200 gallery features" in capsys.readouterr().err


def test_on_a_terminal_the_build_draws_one_transient_bar_of_the_rows_added(monkeypatch) -> None:
    shown = terminal_console(monkeypatch)
    gallery = unit_rows(250, 8)
    monkeypatch.setattr(index_module, "BLOCK_BYTES", 4 * 8 * 100)  # blocks of 100 rows: 100, 100, 50
    build_ivf(gallery, 3)
    frames = last_frames(shown.getvalue())
    assert len(frames) == 1
    assert_finished_bar(frames[0], "IVF index", 250, 250, "vec")
    assert shown.getvalue().endswith(ERASED)  # a short step: the finished bar leaves no line behind
    shown.seek(0)
    shown.truncate()
    build_ivf(gallery, 3, show_progress=False)
    assert shown.getvalue() == ""


def test_the_cells_are_trained_on_a_seeded_sample_without_repeats() -> None:
    gallery = unit_rows(400, 8)
    index = build_ivf(gallery, 2, show_progress=False)  # 80 of the 400 rows train the cells
    sample = np.sort(np.random.default_rng(0).choice(400, size=80, replace=False))
    reference = faiss.IndexIVFFlat(faiss.IndexFlatIP(8), 8, 2, faiss.METRIC_INNER_PRODUCT)
    reference.cp.niter, reference.cp.spherical, reference.cp.seed = 10, True, 0
    reference.train(gallery[sample])
    np.testing.assert_allclose(index.quantizer.reconstruct_n(0, 2), reference.quantizer.reconstruct_n(0, 2),
                               atol=1e-6)


def test_ivf_search_clamps_nprobe_and_k() -> None:
    gallery = unit_rows(120, 4)
    index = build_ivf(gallery, 3, show_progress=False)
    ivf = IVFIndex(index, 1, 0.5, True)
    assert ivf.nlist == 3
    exact = flat_search(gallery[:4], gallery, 120)[1]
    _, everything = ivf.search(gallery[:4], 500, nprobe=99)  # nprobe beyond nlist visits every cell
    assert everything.shape == (4, 120) and np.array_equal(everything, exact)
    _, one_cell = ivf.search(gallery[:4], 120)  # the calibrated nprobe 1: one cell, padded with -1
    assert (one_cell == -1).any() and not (everything == -1).any()


def reference_recall(index, gallery: np.ndarray, nprobe: int, k: int = 10) -> float:
    """recall@k of ``nprobe`` cells against numpy's exact ranking, on the 256 rows the calibration samples."""
    rows = np.sort(np.random.default_rng(0).choice(len(gallery), size=min(256, len(gallery)), replace=False))
    order = np.argsort(-(gallery[rows] @ gallery.T), axis=1)
    _, found = index.search(gallery[rows], k + 1, params=faiss.SearchParametersIVF(nprobe=nprobe))
    hits = []
    for i, row in enumerate(rows):
        truth = [int(j) for j in order[i] if j != row][:k]
        got = [int(j) for j in found[i] if j != row and j >= 0][:k]
        hits.append(len(set(truth) & set(got)))
    return float(np.mean([h / k for h in hits]))


def test_calibration_gives_the_smallest_power_of_two_reaching_the_target() -> None:
    gallery = unit_rows(400, 8)
    index = build_ivf(gallery, 8, show_progress=False)
    recalls = {nprobe: reference_recall(index, gallery, nprobe) for nprobe in (1, 2, 4, 8)}
    assert recalls[8] == pytest.approx(1.0) and recalls[1] < recalls[2] < 1.0
    target = (recalls[1] + recalls[2]) / 2
    assert calibrate_nprobe(index, gallery, target=target) == (2, pytest.approx(recalls[2]))
    assert calibrate_nprobe(index, gallery, target=recalls[2]) == (2, pytest.approx(recalls[2]))
    assert calibrate_nprobe(index, gallery, target=0.0) == (1, pytest.approx(recalls[1]))
    assert calibrate_nprobe(index, gallery, target=1.1) == (8, pytest.approx(1.0))  # never reached: every cell
    assert calibrate_nprobe(index, gallery[:1]) == (8, 1.0)  # no other row to find


def test_calibration_of_two_rows_in_two_cells() -> None:
    gallery = unit_rows(2, 4)
    index = build_ivf(gallery, 2, show_progress=False)  # each row is its own cell
    assert calibrate_nprobe(index, gallery, target=0.0) == (1, 0.0)  # the other row is in the other cell
    assert calibrate_nprobe(index, gallery, target=1.0) == (2, 1.0)


def test_float16_features_are_searched_and_calibrated_as_float32() -> None:
    gallery = unit_rows(200, 8, dtype=np.float16)
    index = build_ivf(gallery, 4, show_progress=False)
    as_float32 = gallery.astype(np.float32)
    ivf = IVFIndex(index, 4, 1.0, True)
    half, full = ivf.search(gallery[:3], 5), ivf.search(as_float32[:3], 5)
    assert np.array_equal(half[1], full[1]) and np.array_equal(half[0], full[0])
    assert calibrate_nprobe(index, gallery, target=0.9) == calibrate_nprobe(index, as_float32, target=0.9)


def test_without_drops_the_own_row_and_padding() -> None:
    assert _without(np.array([3, -1, 5, 2, 7]), 5, 2) == [3, 2]
    assert _without(np.array([5, 0]), 5, 3) == [0]


def feature_folder(folder: Path, features: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "features.npy", features)
    return folder


def test_the_ivf_index_is_saved_reused_and_rebuilt_when_the_features_change(tmp_path: Path, capsys) -> None:
    gallery = unit_rows(300, 8)
    folder = feature_folder(tmp_path / "f", gallery)
    first = load_or_build_ivf(folder, gallery, show_progress=False)
    assert first.built and first.nlist == nlist_for(300)
    meta = json.loads((folder / "ivf.json").read_text())
    assert meta["nprobe"] == first.nprobe and meta["recall"] == first.recall and meta["nlist"] == first.nlist
    assert meta["index_size"] == (folder / "ivf.faiss").stat().st_size and meta["kind"] == "IndexIVFFlat"
    assert meta["target_recall"] == 0.95 and meta["features"] == index_module.features_stamp(folder)
    assert f"IVF: nprobe {first.nprobe} of {first.nlist} cells gives recall@10" in capsys.readouterr().err
    again = load_or_build_ivf(folder, gallery, show_progress=False)
    assert again.built is False
    assert (again.nprobe, again.recall, again.nlist) == (first.nprobe, first.recall, first.nlist)
    assert again.index.ntotal == 300 and "training" not in capsys.readouterr().err
    changed = unit_rows(300, 8, seed=5)
    np.save(folder / "features.npy", changed)
    rebuilt = load_or_build_ivf(folder, changed, show_progress=False)
    err = capsys.readouterr().err
    assert rebuilt.built and f"{folder}: the features changed since the IVF index was built; rebuilding it" in err
    (folder / "ivf.json").write_text("{")
    assert load_or_build_ivf(folder, changed, show_progress=False).built
    assert f"{folder / 'ivf.faiss'}: unreadable or damaged; rebuilding it" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
    (folder / "ivf.json").unlink()  # an index without its record is rebuilt without a warning
    assert load_or_build_ivf(folder, changed, show_progress=False).built
    err = capsys.readouterr().err
    assert "unreadable" not in err and "features changed" not in err and "training an IVF index" in err


def test_load_or_build_ivf_draws_the_build_bar_unless_told_not_to(tmp_path: Path, monkeypatch) -> None:
    shown = terminal_console(monkeypatch)
    gallery = unit_rows(100, 4)
    load_or_build_ivf(feature_folder(tmp_path / "quiet", gallery), gallery, show_progress=False)
    assert shown.getvalue() == ""
    load_or_build_ivf(feature_folder(tmp_path / "shown", gallery), gallery)
    frames = last_frames(shown.getvalue())
    assert len(frames) == 1
    assert_finished_bar(frames[0], "IVF index", 100, 100, "vec")


def test_the_notices_of_a_damaged_or_unsaved_index_are_warnings(tmp_path: Path, monkeypatch) -> None:
    from rich.console import Console

    import ecnreid.inference.messages

    terminal = Console(force_terminal=True, color_system="standard", width=300, file=io.StringIO())
    monkeypatch.setattr(ecnreid.inference.messages, "console", terminal)
    gallery = unit_rows(100, 4)
    folder = feature_folder(tmp_path / "f", gallery)
    load_or_build_ivf(folder, gallery, show_progress=False)
    (folder / "ivf.json").write_text("{")
    terminal.file = io.StringIO()
    load_or_build_ivf(folder, gallery, show_progress=False)
    damaged = [line for line in terminal.file.getvalue().splitlines() if "unreadable or damaged" in line]
    assert len(damaged) == 1 and "\x1b[33m" in damaged[0]  # yellow

    def refuse(index, path: Path) -> None:
        raise RuntimeError("faiss could not write")

    monkeypatch.setattr(index_module, "_write_index", refuse)
    (folder / "ivf.json").unlink()
    load_or_build_ivf(folder, gallery, show_progress=False)
    unsaved = [line for line in terminal.file.getvalue().splitlines() if "cannot save" in line]
    assert len(unsaved) == 1 and "\x1b[33m" in unsaved[0]
    assert f"{folder}: cannot save the IVF index (write failed); it is rebuilt next time" in unsaved[0]


def test_an_index_that_cannot_be_saved_is_still_used(tmp_path: Path, monkeypatch, capsys) -> None:
    gallery = unit_rows(100, 4)
    folder = feature_folder(tmp_path / "f", gallery)

    def refuse(index, path: Path) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(index_module, "_write_index", refuse)
    ivf = load_or_build_ivf(folder, gallery, show_progress=False)
    assert ivf.built and ivf.index.ntotal == 100 and not (folder / "ivf.json").exists()
    err = capsys.readouterr().err
    assert f"{folder}: cannot save the IVF index (Permission denied); it is rebuilt next time" in err


def test_write_index_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    index = build_ivf(unit_rows(100, 4), 2, show_progress=False)
    real, temps = faiss.write_index, []

    def recorded(index, path: str) -> None:
        temps.append(Path(path))
        real(index, path)

    monkeypatch.setattr(faiss, "write_index", recorded)
    _write_index(index, tmp_path / "ivf.faiss")
    # the temp file is beside the target and named as ecnreid.io's sweep of killed writes expects
    assert temps[0].parent == tmp_path and TEMP_FILE_PATTERN.match(temps[0].name)
    assert TEMP_FILE_PATTERN.match(temps[0].name)["name"] == "ivf.faiss"
    assert faiss.read_index(str(tmp_path / "ivf.faiss")).ntotal == 100 and len(list(tmp_path.iterdir())) == 1

    def fails(index, path: str) -> None:
        Path(path).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", fails)
    with pytest.raises(RuntimeError, match="disk full"):
        _write_index(index, tmp_path / "other.faiss")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ivf.faiss"]


def test_calibration_truth_holds_only_the_first_k_exact_neighbours(monkeypatch) -> None:
    # Ties (duplicate rows) can push the query's own row out of the exact top k + 1: the truth is then its first
    # k entries, not all k + 1. The index finds the same rows but the exact first one last, so 9 of 10 agree.
    own = int(np.random.default_rng(0).choice(12, size=1, replace=False)[0])  # the row calibration samples
    others = [i for i in range(12) if i != own]  # k + 1 = 11 exact neighbours, the own row not among them

    class FakeIndex:
        nlist = 4

    class FakeProbe:
        def __init__(self, index, nprobe, recall, built) -> None:
            pass

        def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            return np.zeros((1, k)), np.array([others[1:] + others[:1]])

    monkeypatch.setattr(index_module, "flat_search", lambda q, g, k: (np.zeros((1, k)), np.array([others])))
    monkeypatch.setattr(index_module, "IVFIndex", FakeProbe)
    gallery = np.zeros((12, 4), dtype=np.float32)
    nprobe, recall = index_module.calibrate_nprobe(FakeIndex(), gallery, queries=1, seed=0)
    assert recall == pytest.approx(0.9) and nprobe == 4  # never reaches 0.95, so it stops at nlist
