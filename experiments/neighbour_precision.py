"""Diagnosis only: how often the exemplar memory's nearest slots are the same person.

Reads the memory of an ECN checkpoint (``last.pt``) and the target's training records, and reports, over all
slots, the precision of each slot's k nearest other slots (same identity, by the target's labels) for plain
top-k and for the k-reciprocal subset (slots that also hold the image among their own k), how many the reciprocal
condition keeps, and how many true neighbours sit in another camera. The labels are read here and nowhere in
training; nothing is selected with them.

    python experiments/neighbour_precision.py --checkpoint runs/budget/ECN/last.pt --dataset market1501 [--k 6]

``--root`` defaults to ``$ECNREID_DATA/<dataset>`` (``ECNREID_DATA`` defaults to ``data``, as in the experiment
scripts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecnreid.data.datasets import read_dataset  # noqa: E402
from ecnreid.runstate import load_checkpoint  # noqa: E402


@torch.no_grad()
def memory_neighbour_table(memory: torch.Tensor, k: int, block_rows: int = 1024) -> torch.Tensor:
    """Indices [N, k] of each memory slot's k most similar other slots (inner product), in row blocks so that
    only ``block_rows`` x N similarities exist at a time."""
    if not 1 <= k < len(memory):
        raise SystemExit(f"--k {k}: must be between 1 and the number of memory slots less one ({len(memory) - 1})")
    rows = memory.float()
    table = torch.empty(len(rows), k, dtype=torch.long, device=memory.device)
    for start in range(0, len(rows), block_rows):
        similarity = rows[start : start + block_rows] @ rows.t()
        own = torch.arange(start, start + len(similarity), device=memory.device)
        similarity[torch.arange(len(similarity)), own] = float("-inf")  # a slot is not its own neighbour
        table[start : start + len(similarity)] = similarity.topk(k, dim=1).indices
    return table


def memory_of(state: dict) -> torch.Tensor:
    """The memory rows of a checkpoint, of this version (``method.memory``) or an earlier one (``memory``)."""
    holder = state.get("method", state)
    return holder["memory"]["features"].float()


def neighbour_precision(memory: torch.Tensor, pids: torch.Tensor, cams: torch.Tensor, k: int) -> dict:
    visited = memory.norm(dim=1) > 0
    table = memory_neighbour_table(memory, k)
    same = pids[table] == pids.unsqueeze(1)  # [N, k]
    other_camera = cams[table] != cams.unsqueeze(1)
    reciprocal = (table[table] == torch.arange(len(memory)).view(-1, 1, 1)).any(dim=2)  # j holds i among its k
    kept = reciprocal.sum()
    return {
        "slots": len(memory),
        "visited": int(visited.sum()),
        "k": k,
        "topk_precision": round(float(same.float().mean()), 4),
        "topk_true_in_other_camera": round(float((same & other_camera).float().sum() / same.float().sum()), 4),
        "reciprocal_kept_per_slot": round(float(kept) / len(memory), 3),
        "reciprocal_precision": round(float((same & reciprocal).float().sum() / kept.clamp_min(1)), 4),
        "slots_without_reciprocal_neighbour": int((~reciprocal.any(dim=1)).sum()),
    }


def dataset_root(root: Path | None, dataset: str) -> Path:
    """``--root``, else ``$ECNREID_DATA/<dataset>``; a missing folder stops with one line saying how to give it."""
    if root is not None:
        return root
    data = os.environ.get("ECNREID_DATA", "data")
    default = Path(data) / dataset
    if not default.is_dir():
        raise SystemExit(
            f"no --root given and ECNREID_DATA={data} has no {dataset}/ folder: pass --root DIR or set ECNREID_DATA"
        )
    return default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--dataset", default="market1501")
    parser.add_argument("--root", type=Path, help="the dataset folder (default: $ECNREID_DATA/<dataset>)")
    parser.add_argument("--k", type=int, default=6)
    args = parser.parse_args()
    state = load_checkpoint(args.checkpoint)
    records = read_dataset(args.dataset, dataset_root(args.root, args.dataset), require_test=False).train
    memory = memory_of(state)
    if len(records) != len(memory):
        raise SystemExit(f"{args.checkpoint}: memory has {len(memory)} slots, {args.dataset} train {len(records)}")
    pids = torch.tensor([r.pid for r in records])
    cams = torch.tensor([r.camid for r in records])
    report = {"checkpoint": str(args.checkpoint), "epoch": state["epoch"]}
    report.update(neighbour_precision(memory, pids, cams, args.k))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
