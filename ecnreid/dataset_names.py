"""The names of the datasets the commands read (``--source``, ``--target``, ``--dataset``), apart from their
readers (``ecnreid.data.datasets.READERS``, in this order) so that the configuration names them without
importing the data package, which imports the configuration."""

from __future__ import annotations

DATASET_NAMES = ("market1501", "dukemtmc", "msmt17", "custom", "synthetic")
DATASET_HELP = ", ".join(DATASET_NAMES) + " (torchreid's dukemtmcreid too)"
