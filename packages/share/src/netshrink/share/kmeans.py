"""One-dimensional k-means with linear initialisation, as Deep Compression uses it.

Han et al. (ICLR 2016, section 3.1) compare Forgy (random), density-based and linear
initialisation of the shared weights and find linear best: it keeps centroids at the rare
large-magnitude weights, which matter most. The centroids start evenly spaced between the
smallest and the largest weight; Lloyd iterations follow. In one dimension the centroids stay
sorted, so each assignment is a binary search against the midpoints between neighbours.

Nothing here is random: the same weights always give the same codebook, bit for bit (the
arithmetic is float64 on the CPU).
"""

from __future__ import annotations

import torch

DEFAULT_ITERATIONS = 50


def linear_init(values: torch.Tensor, clusters: int) -> torch.Tensor:
    """``clusters`` centroids evenly spaced from ``values.min()`` to ``values.max()`` (float64)."""
    v = values.detach().reshape(-1).to("cpu", torch.float64)
    if v.numel() == 0:
        return torch.zeros(clusters, dtype=torch.float64)
    return torch.linspace(float(v.min()), float(v.max()), clusters, dtype=torch.float64)


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted ``centroids`` for every value (ties go to the
    lower centroid), as int64 of ``values``' shape."""
    v = values.detach().to("cpu", torch.float64)
    mids = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(v, mids, right=False)


def kmeans_1d(values: torch.Tensor, clusters: int,
              iterations: int = DEFAULT_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ``values`` into ``clusters`` centroids: linear init, then Lloyd iterations until
    no assignment changes (at most ``iterations``). Returns ``(centroids, indices)``: sorted
    float64 centroids, and int64 indices of ``values``' shape. A cluster that loses all its
    values keeps its centroid (it costs a codebook entry, never a wrong weight).

    The values are sorted once; every cluster is then an interval of the sorted values, so an
    iteration costs a binary search per centroid and prefix-sum differences, not a pass over
    the values."""
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
        raise ValueError(f"clusters={clusters!r} must be an integer of at least 1")
    v = values.detach().reshape(-1).to("cpu", torch.float64)
    centroids = linear_init(v, clusters)
    if v.numel():
        ordered = torch.sort(v).values
        prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(ordered, 0)])
        edges = _edges(ordered, centroids)
        for _ in range(iterations):
            counts = (edges[1:] - edges[:-1]).to(torch.float64)
            sums = prefix[edges[1:]] - prefix[edges[:-1]]
            centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
            centroids = torch.sort(centroids).values  # a kept empty cluster may fall out of order
            new = _edges(ordered, centroids)
            if torch.equal(new, edges):
                break
            edges = new
    return centroids, assign(v, centroids).view(values.shape)


def _edges(ordered: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Cluster ``i`` is ``ordered[edges[i]:edges[i + 1]]`` (values at a midpoint go lower, as
    in ``assign``)."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    inner = torch.searchsorted(ordered, mids, right=True)
    n = torch.tensor([ordered.numel()])
    return torch.cat([torch.zeros(1, dtype=torch.int64), inner, n])
