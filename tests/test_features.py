"""Feature extraction: order, L2 normalisation, flip averaging, and the pooled-backbone extractor."""

from __future__ import annotations

import torch
from torch import nn

from ecnreid.data.datasets import read_dataset
from ecnreid.evaluation.features import extract_features
from ecnreid.models.pooled import PooledBackbone


class MeanColour(nn.Module):
    """Features = per-channel mean of the left half minus the right half, plus a constant (flip-sensitive)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[3] // 2
        return torch.cat([x[..., :half].mean(dim=(2, 3)) - x[..., half:].mean(dim=(2, 3)), torch.ones(len(x), 1)], 1)


def test_features_are_normalised_in_record_order(two_domains) -> None:
    _, target = two_domains
    records = read_dataset("synthetic", target).query
    feats = extract_features(MeanColour(), records, height=32, width=16, batch_size=4, workers=0, show_progress=False)
    assert feats.shape == (len(records), 4)
    assert torch.allclose(feats.norm(dim=1), torch.ones(len(records)))
    one_by_one = torch.cat(
        [extract_features(MeanColour(), [r], height=32, width=16, workers=0, show_progress=False) for r in records]
    )
    assert torch.allclose(feats, one_by_one, atol=1e-6)


def test_flip_averaging_sums_image_and_mirror(two_domains) -> None:
    _, target = two_domains
    records = read_dataset("synthetic", target).query[:3]
    flipped = extract_features(MeanColour(), records, height=32, width=16, workers=0, flip=True, show_progress=False)
    # Left-minus-right cancels against its mirror, so only the constant survives.
    assert torch.allclose(flipped, torch.tensor([[0.0, 0.0, 0.0, 1.0]]).expand(3, 4), atol=1e-6)


def test_pooled_backbone_is_unit_norm_and_extraction_restores_train_mode(two_domains) -> None:
    _, target = two_domains
    records = read_dataset("synthetic", target).query[:3]
    model = PooledBackbone(nn.Conv2d(3, 5, 3))
    model.train()
    out = model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 5) and torch.allclose(out.norm(dim=1), torch.ones(2))
    modes: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    extract_features(model, records, height=32, width=16, batch_size=2, workers=0, show_progress=False)
    assert modes == [False, False]  # features come from the eval-mode model...
    assert model.training  # ...which is handed back in the mode it came in
    model.eval()
    extract_features(model, records, height=32, width=16, workers=0, show_progress=False)
    assert not model.training
