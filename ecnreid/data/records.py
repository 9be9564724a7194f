"""The record types every reader returns and every loader consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple


class ImageRecord(NamedTuple):
    """One image: its path, person id (-1 never appears; 0 may be a distractor) and 0-based camera id."""

    path: str
    pid: int
    camid: int


@dataclass(frozen=True)
class ReidDataset:
    """A re-ID dataset read from disk: train, query and gallery splits of ``ImageRecord``.

    ``train`` keeps the original person ids; use ``relabel_pids`` for a labelled source.
    For an unlabelled target, an image's index in ``train`` is its exemplar-memory slot.
    """

    name: str
    root: Path
    train: list[ImageRecord]
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cameras(self) -> int:
        return max((r.camid for r in self.train), default=-1) + 1

    @property
    def num_cameras(self) -> int:
        every = [*self.train, *self.query, *self.gallery]
        return max((r.camid for r in every), default=-1) + 1


def relabel_pids(records: list[ImageRecord]) -> list[ImageRecord]:
    """Map person ids to 0..N-1 in order of first sorted appearance (for source classification)."""
    mapping = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [ImageRecord(r.path, mapping[r.pid], r.camid) for r in records]
