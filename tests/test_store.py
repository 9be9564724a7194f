"""The feature folder `ecnreid extract` writes and `ecnreid search` reads: the index's round trip and its
errors, the extraction record, opening a folder (each way it can be unusable is one line naming it) and the
stamp that tells a stale search index."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ecnreid.errors import EcnreidError
from ecnreid.inference.card import ModelCard, write_card_json
from ecnreid.inference.images import ImageEntry
from ecnreid.inference.store import (
    features_stamp,
    is_feature_folder,
    list_sha256,
    open_feature_folder,
    read_index,
    read_meta,
    write_index,
)


def error_of(function, *args) -> str:
    with pytest.raises(EcnreidError) as info:
        function(*args)
    return str(info.value)


def test_the_index_round_trips_unknown_ids_and_awkward_paths(tmp_path: Path) -> None:
    entries = [ImageEntry("a/0001_c1s1_1.jpg", 1, 0), ImageEntry("b,c/x y.png", None, None),
               ImageEntry('q"uote.jpg', 7, None), ImageEntry("z.jpg", None, 4)]
    write_index(entries, tmp_path / "index.csv")
    assert (tmp_path / "index.csv").read_text().splitlines()[:3] == [
        "path,pid,camid", "a/0001_c1s1_1.jpg,1,0", '"b,c/x y.png",,']
    assert read_index(tmp_path / "index.csv") == entries


def test_the_index_file_has_plain_newlines_and_keeps_carriage_returns_in_paths(tmp_path: Path) -> None:
    entries = [ImageEntry("a\r\nb.jpg", 1, None), ImageEntry("c.jpg", None, 2), ImageEntry("d\re.jpg", 3, 0)]
    write_index(entries, tmp_path / "index.csv")
    expected = b'path,pid,camid\n"a\r\nb.jpg","1",""\nc.jpg,,2\n"d\re.jpg","3","0"\n'
    assert (tmp_path / "index.csv").read_bytes() == expected
    assert read_index(tmp_path / "index.csv") == entries


def test_an_index_without_a_header_and_blank_ids_is_read(tmp_path: Path) -> None:
    (tmp_path / "index.csv").write_text("a.jpg,3,1\nb.jpg, , \n")
    assert read_index(tmp_path / "index.csv") == [ImageEntry("a.jpg", 3, 1), ImageEntry("b.jpg", None, None)]


def test_malformed_indexes_name_the_line(tmp_path: Path) -> None:
    index = tmp_path / "index.csv"
    assert error_of(read_index, index) == f"{index}: index of the features not found"
    index.write_text("path,pid,camid\na.jpg,1,0\nb.jpg,1\n")
    assert error_of(read_index, index) == f"{index}:3: expected 'path,pid,camid', got 2 fields"
    index.write_text("a.jpg,1,0\npath,pid,camid\n")  # a header is a header on the first line only
    assert error_of(read_index, index) == f"{index}:2: pid and camid must be integers or empty"
    index.write_text("a.jpg,1,c1\n")
    assert error_of(read_index, index) == f"{index}:1: pid and camid must be integers or empty"


def test_list_sha256_hashes_the_paths_in_order() -> None:
    entries = [ImageEntry("a.jpg", 1, 0), ImageEntry("b.jpg", None, None)]
    assert list_sha256(entries) == hashlib.sha256(b"a.jpg\nb.jpg\n").hexdigest()
    assert list_sha256(entries[::-1]) != list_sha256(entries)
    assert list_sha256([]) == hashlib.sha256(b"").hexdigest()


def test_the_extraction_record(tmp_path: Path) -> None:
    assert read_meta(tmp_path) is None
    (tmp_path / "extract.json").write_text(json.dumps({"done": 2, "count": 5}))
    assert read_meta(tmp_path) == {"done": 2, "count": 5}
    (tmp_path / "extract.json").write_text("[1]")
    assert error_of(read_meta, tmp_path) == f"{tmp_path / 'extract.json'}: not an extraction record"
    (tmp_path / "extract.json").write_text("{")
    message = error_of(read_meta, tmp_path)
    assert message.startswith(f"{tmp_path / 'extract.json'}: not the extraction record `ecnreid extract` writes "
                              "(unreadable or not JSON: Expecting property name")
    assert message.endswith("); delete the folder and extract again")


def test_unreadable_files_are_named_by_the_systems_reason(tmp_path: Path, monkeypatch) -> None:
    folder = feature_folder(tmp_path / "f", np.ones((2, 3), np.float32))
    (folder / "extract.json").write_text("{}")

    def io_error(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "read_text", io_error)
    assert error_of(read_meta, folder) == (f"{folder / 'extract.json'}: not the extraction record `ecnreid extract` "
                                           "writes (unreadable or not JSON: Input/output error); delete the folder "
                                           "and extract again")
    monkeypatch.undo()
    monkeypatch.setattr(np, "load", io_error)
    assert error_of(open_feature_folder, folder, "--gallery") == (
        f"--gallery {folder}: cannot read features.npy (Input/output error); extract the features again")


def feature_folder(folder: Path, features: np.ndarray, rows: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "features.npy", features)
    count = len(features) if rows is None else rows
    write_index([ImageEntry(f"{i}.jpg", i, 0) for i in range(count)], folder / "index.csv")
    return folder


def test_a_finished_folder_opens_with_its_card_and_record(tmp_path: Path) -> None:
    features = np.eye(3, 4, dtype=np.float16)
    folder = feature_folder(tmp_path / "f", features)
    assert is_feature_folder(folder) and not is_feature_folder(tmp_path) and not is_feature_folder(folder / "x")
    opened = open_feature_folder(folder, "--gallery")
    assert (len(opened), opened.dim, opened.card, opened.meta) == (3, 4, None, {})
    assert opened.features.dtype == np.float16 and np.array_equal(opened.features, features)
    assert isinstance(opened.features, np.memmap) and not opened.features.flags.writeable  # mapped, read-only
    assert [e.path for e in opened.entries] == ["0.jpg", "1.jpg", "2.jpg"] and opened.folder == folder
    card = ModelCard("resnet18", 32, 16, "pool5", 4, "ecn", "a", "b", 1, 1)
    write_card_json(card, folder / "card.json")
    (folder / "extract.json").write_text(json.dumps({"complete": True, "done": 3, "count": 3}))
    opened = open_feature_folder(folder, "--gallery")
    assert opened.card == card and opened.meta == {"complete": True, "done": 3, "count": 3}


def test_unusable_folders_are_one_line_errors_naming_the_option(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_of(open_feature_folder, empty, "--query") == (
        f"--query {empty}: no features.npy here; expected a folder written by `ecnreid extract`")
    folder = feature_folder(tmp_path / "f", np.ones((2, 3), np.float32))
    (folder / "extract.json").write_text(json.dumps({"complete": False, "done": 1, "count": 2}))
    assert error_of(open_feature_folder, folder, "--gallery") == (
        f"--gallery {folder}: unfinished extraction (1 of 2 images); rerun `ecnreid extract` with the same options "
        "to finish it")
    (folder / "extract.json").write_text(json.dumps({"started": True}))
    assert "unfinished extraction (0 of ? images)" in error_of(open_feature_folder, folder, "--gallery")
    (folder / "extract.json").unlink()
    (folder / "features.npy").write_bytes(b"not an array")
    assert error_of(open_feature_folder, folder, "--gallery") == (
        f"--gallery {folder}: cannot read features.npy (not a .npy array); extract the features again")
    np.save(folder / "features.npy", np.array([{"a": 1}, None]), allow_pickle=True)  # pickled objects
    assert error_of(open_feature_folder, folder, "--gallery", "delete it") == (
        f"--gallery {folder}: cannot read features.npy (not a .npy array); delete it")
    np.save(folder / "features.npy", np.ones((2, 3), np.float64))
    assert error_of(open_feature_folder, folder, "--gallery") == (
        f"--gallery {folder}: features.npy holds float64 (2, 3); expected [N, D] float16 or float32")
    np.save(folder / "features.npy", np.ones(6, np.float32))
    assert "holds float32 (6,); expected [N, D]" in error_of(open_feature_folder, folder, "--gallery")
    np.save(folder / "features.npy", np.ones((3, 3), np.float32))
    assert error_of(open_feature_folder, folder, "--gallery") == (
        f"--gallery {folder}: index.csv has 2 rows but features.npy 3")
    (folder / "index.csv").write_text("path,pid,camid\na.jpg,1\n")
    assert error_of(open_feature_folder, folder, "--gallery") == (
        f"--gallery {folder / 'index.csv'}:2: expected 'path,pid,camid', got 2 fields; extract the features again")


def test_the_stamp_samples_64_spread_rows_and_the_file(tmp_path: Path) -> None:
    features = np.arange(200 * 2, dtype=np.float32).reshape(200, 2)
    folder = feature_folder(tmp_path / "f", features)
    stamp = features_stamp(folder)
    stat = os.stat(folder / "features.npy")
    rows = sorted({int(i * 199 / 63) for i in range(64)})
    assert len(rows) == 64 and rows[0] == 0 and rows[-1] == 199
    assert stamp == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "shape": [200, 2], "dtype": "float32",
                     "sample_sha256": hashlib.sha256(features[rows].tobytes()).hexdigest()}
    unsampled = next(i for i in range(200) if i not in rows)
    features[unsampled] += 1
    np.save(folder / "features.npy", features)
    assert features_stamp(folder)["sample_sha256"] == stamp["sample_sha256"]
    features[rows[1]] += 1
    np.save(folder / "features.npy", features)
    assert features_stamp(folder)["sample_sha256"] != stamp["sample_sha256"]


def test_the_stamp_of_few_and_of_no_rows(tmp_path: Path) -> None:
    few = np.arange(3 * 2, dtype=np.float16).reshape(3, 2)
    stamp = features_stamp(feature_folder(tmp_path / "few", few))
    assert (stamp["shape"], stamp["dtype"]) == ([3, 2], "float16")
    assert stamp["sample_sha256"] == hashlib.sha256(few.tobytes()).hexdigest()
    none = features_stamp(feature_folder(tmp_path / "none", np.zeros((0, 2), np.float32)))
    assert none["shape"] == [0, 2] and none["sample_sha256"] == hashlib.sha256(b"").hexdigest()
