"""The neighbour-precision diagnosis of experiments/neighbour_precision.py on a memory built by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from experiment_scripts import load_experiment


def load_script():
    return load_experiment("neighbour_precision")


def test_precision_counts_same_identity_neighbours_and_reciprocal_ones() -> None:
    diagnosis = load_script()
    # Two tight pairs of one person each (ids 0 and 1, each seen in two cameras) and a loner near pair 0.
    memory = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.99, 0.1], [0.8, 0.0, 0.6]]), dim=1
    )
    pids = torch.tensor([0, 0, 1, 1, 2])
    cams = torch.tensor([0, 1, 0, 1, 0])
    report = diagnosis.neighbour_precision(memory, pids, cams, k=1)
    # Nearest others: 0->1, 1->0, 2->3, 3->2, 4->0: 4 of 5 are the same person, all in the other camera.
    assert report["topk_precision"] == 0.8 and report["topk_true_in_other_camera"] == 1.0
    # 4->0 is not reciprocal (0's nearest is 1): the reciprocal subset keeps only true pairs.
    assert report["reciprocal_precision"] == 1.0 and report["slots_without_reciprocal_neighbour"] == 1
    assert diagnosis.memory_of({"memory": {"features": memory}}).shape == (5, 3)


def test_memory_neighbour_table_is_each_slots_nearest_others_in_any_block_size() -> None:
    diagnosis = load_script()
    generator = torch.Generator().manual_seed(0)
    memory = torch.nn.functional.normalize(torch.randn(40, 8, generator=generator), dim=1)
    similarity = memory @ memory.t()
    similarity.fill_diagonal_(float("-inf"))
    expected = similarity.topk(3, dim=1).indices
    for block_rows in (1, 7, 64):
        assert torch.equal(diagnosis.memory_neighbour_table(memory, 3, block_rows=block_rows), expected)
    assert diagnosis.memory_neighbour_table(memory, 39).shape == (40, 39)
    for k in (0, 40):
        with pytest.raises(SystemExit, match=f"--k {k}: must be between 1 and .* \\(39\\)"):
            diagnosis.memory_neighbour_table(memory, k)


def test_root_defaults_to_the_documented_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    diagnosis = load_script()
    (tmp_path / "market1501").mkdir()
    monkeypatch.setenv("ECNREID_DATA", str(tmp_path))
    assert diagnosis.dataset_root(None, "market1501") == tmp_path / "market1501"
    assert diagnosis.dataset_root(tmp_path / "elsewhere", "market1501") == tmp_path / "elsewhere"
    with pytest.raises(SystemExit) as stop:
        diagnosis.dataset_root(None, "dukemtmc")
    message = str(stop.value)
    assert "--root" in message and "ECNREID_DATA" in message and "dukemtmc/" in message
    assert "\n" not in message
