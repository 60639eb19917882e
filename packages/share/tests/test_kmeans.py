"""k-means with linear initialisation on hand-made tensors: the expected codebooks."""

import pytest
import torch

from netshrink.share import assign, kmeans_1d, linear_init


def test_linear_init_spans_min_to_max() -> None:
    v = torch.tensor([0.5, -1.0, 2.0, 0.0])
    assert linear_init(v, 4).tolist() == [-1.0, 0.0, 1.0, 2.0]


def test_hand_made_tensor_gives_the_expected_codebook() -> None:
    # linear init [0, 1, 2, 3]; {0, .1, .2} -> 0, {.9, 1} -> 1, {} -> 2, {3} -> 3; then the
    # means: [0.1, 0.95, 2 (empty: kept), 3], and no assignment changes any more.
    # (Forgy's random init would put two centroids in {0, .1, .2} and lose the 3.)
    v = torch.tensor([[0.0, 0.1, 0.2], [0.9, 1.0, 3.0]])
    centroids, indices = kmeans_1d(v, 4)
    expected = torch.tensor([(0.0 + 0.1 + 0.2) / 3, (0.9 + 1.0) / 2, 2.0, 3.0],
                            dtype=torch.float64)
    # the data were float32: compare with what the float32 values average to
    assert torch.allclose(centroids, expected, rtol=0, atol=1e-7)
    assert indices.tolist() == [[0, 0, 0], [1, 1, 3]]


def test_lloyd_iterations_move_the_centroids() -> None:
    # init [0, 6, 12], midpoints 3 and 9 (a tie goes to the lower centroid):
    # {0, 0, 0, 3} {4} {12} -> [0.75, 4, 12]; midpoint 2.375 moves the 3 over:
    # {0, 0, 0} {3, 4} {12} -> [0, 3.5, 12], stable.
    v = torch.tensor([0.0, 0.0, 0.0, 3.0, 4.0, 12.0], dtype=torch.float64)
    one_step, first = kmeans_1d(v, 3, iterations=1)
    assert one_step.tolist() == [0.75, 4.0, 12.0] and first.tolist() == [0, 0, 0, 1, 1, 2]
    centroids, indices = kmeans_1d(v, 3)
    assert centroids.tolist() == [0.0, 3.5, 12.0]
    assert indices.tolist() == [0, 0, 0, 1, 1, 2]


def test_deterministic_and_no_worse_than_its_start() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(5000, generator=g) * torch.rand(5000, generator=g)
    a, ia = kmeans_1d(v, 32)
    b, ib = kmeans_1d(v.clone(), 32)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    assert torch.all(a[1:] >= a[:-1])
    init = linear_init(v, 32)
    v64 = v.double()
    err_init = ((v64 - init[assign(v64, init)]) ** 2).sum()
    err = ((v64 - a[ia]) ** 2).sum()
    assert err < 0.8 * err_init


def test_bad_cluster_count() -> None:
    with pytest.raises(ValueError, match="clusters=0"):
        kmeans_1d(torch.ones(3), 0)
