"""The records a two-domain run trains and evaluates on: labelled source train, and the target's train,
query and gallery splits."""

from __future__ import annotations

from dataclasses import dataclass

from ecnreid.config import TrainConfig
from ecnreid.data.datasets import read_dataset
from ecnreid.data.image_dataset import verify_images
from ecnreid.data.records import ImageRecord, ReidDataset, relabel_pids
from ecnreid.progress import console


@dataclass
class TwoDomainData:
    """Source train records with identities 0..C-1, and the target dataset."""

    source_train: list[ImageRecord]
    target: ReidDataset
    target_train: list[ImageRecord]

    @property
    def num_source_classes(self) -> int:
        return len({r.pid for r in self.source_train})


def load_two_domains(config: TrainConfig, *, announce: bool = True) -> TwoDomainData:
    """Read source and target, relabel the source identities, and drop undecodable images when asked."""
    domains = config.domains
    source = read_dataset(domains.source, domains.source_root, require_test=False)
    target = read_dataset(domains.target, domains.target_root, require_test=True)
    source_train = relabel_pids(source.train)
    target_train = list(target.train)
    if config.input.skip_bad_images:
        source_train, bad_source = verify_images(source_train)
        target_train, bad_target = verify_images(target_train)
        if announce and (bad_source or bad_target):
            console.print(f"[yellow]skipped {len(bad_source) + len(bad_target)} undecodable images")
    return TwoDomainData(source_train=source_train, target=target, target_train=target_train)
