"""Query-gallery distances: formulas, blocking, and the metric-name errors."""

from __future__ import annotations

import pytest
import torch

from ecnreid.evaluation.distances import iter_distance_blocks, pairwise_distance


def features(seed: int, n: int, dim: int = 5) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) * 3.0


def test_cosine_is_one_minus_cosine_similarity() -> None:
    q, g = features(0, 4), features(1, 7)
    expected = torch.tensor(
        [[1.0 - float(a @ b) / float(a.norm() * b.norm()) for b in g.double()] for a in q.double()],
        dtype=torch.float64,
    )
    got = pairwise_distance(q, g, "cosine")
    assert got.dtype == torch.float32 and got.shape == (4, 7)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)


def test_cosine_by_hand() -> None:
    q = torch.tensor([[2.0, 0.0]])
    g = torch.tensor([[5.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    got = pairwise_distance(q, g, "cosine")[0]
    torch.testing.assert_close(got, torch.tensor([0.0, 1.0, 2.0, 1.0 - 2**-0.5]))


def test_euclidean_is_true_l2_distance() -> None:
    q, g = features(2, 5), features(3, 6)
    expected = torch.tensor([[float((a - b).norm()) for b in g.double()] for a in q.double()], dtype=torch.float64)
    torch.testing.assert_close(pairwise_distance(q, g, "euclidean").double(), expected, atol=1e-5, rtol=1e-6)
    by_hand = pairwise_distance(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0], [0.0, 0.0]]), "euclidean")
    assert by_hand.tolist() == [[5.0, 0.0]]


def test_euclidean_of_identical_rows_is_zero_not_nan() -> None:
    x = features(4, 3, dim=64) * 100.0
    diagonal = pairwise_distance(x, x, "euclidean").diagonal()
    assert not torch.isnan(diagonal).any()
    assert float(diagonal.max()) < 1e-2 * float(x.norm(dim=1).min())


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_block_size_does_not_change_the_matrix(metric: str) -> None:
    q, g = features(5, 11), features(6, 9)
    whole = pairwise_distance(q, g, metric, block_size=4096)
    for block_size in (1, 3, 10):
        # Equal up to float32 rounding (a matmul may sum in another order for another block shape).
        blocked = pairwise_distance(q, g, metric, block_size=block_size)
        torch.testing.assert_close(blocked, whole, atol=1e-6, rtol=1e-6)


def test_iter_distance_blocks_yields_offsets_and_row_blocks() -> None:
    q, g = features(7, 10), features(8, 4)
    blocks = list(iter_distance_blocks(q, g, "cosine", block_size=4))
    assert [offset for offset, _ in blocks] == [0, 4, 8]
    assert [tuple(block.shape) for _, block in blocks] == [(4, 4), (4, 4), (2, 4)]
    torch.testing.assert_close(torch.cat([b for _, b in blocks]), pairwise_distance(q, g), atol=1e-6, rtol=0)


def test_integer_and_double_features_give_float32() -> None:
    q = torch.tensor([[1, 0]], dtype=torch.int64)
    g = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    assert pairwise_distance(q, g, "euclidean").dtype == torch.float32


def test_unknown_metric_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"'manhattan' is unknown; valid names: cosine, euclidean"):
        pairwise_distance(features(0, 2), features(1, 2), "manhattan")


def test_bad_shapes_and_block_size_raise() -> None:
    with pytest.raises(ValueError, match="2-D"):
        pairwise_distance(torch.zeros(3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="dimension"):
        pairwise_distance(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="block_size"):
        list(iter_distance_blocks(torch.zeros(2, 3), torch.zeros(2, 3), block_size=0))
