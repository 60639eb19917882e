"""One layer: the truncated SVD's error, exactness at full rank, MACs and params by formula."""

import math

import pytest
import torch
from torch import nn

from netshrink.core import count_macs, count_params
from netshrink.lowrank import (
    build_factorised,
    energy_rank,
    factorise,
    layer_matrix,
    layer_svd,
    max_rank,
    mode_unfoldings,
)
from netshrink.lowrank.plan import _macs, _shapes, _tucker_macs


def _conv(**kw) -> nn.Conv2d:
    torch.manual_seed(0)
    args = {"in_channels": 6, "out_channels": 10, "kernel_size": 3, **kw}
    return nn.Conv2d(**args).double()


def _composed_weight(layer: nn.Module, module: nn.Sequential, scheme: str) -> torch.Tensor:
    """The single weight the two factors multiply out to (built from the module's weights,
    so the split into factors and every reshape are under test)."""
    a, b = module[0].weight, module[1].weight
    if scheme == "svd":
        return b @ a
    if scheme == "channel":
        return torch.einsum("nr,rcyx->ncyx", b[:, :, 0, 0], a)
    return torch.einsum("nrx,rcy->ncyx", b[:, :, 0, :], a[:, :, :, 0])


LAYERS = [
    ("svd", lambda: nn.Linear(12, 9).double()),
    ("channel", lambda: _conv()),
    ("spatial", lambda: _conv(kernel_size=(3, 5))),
]


@pytest.mark.parametrize(("scheme", "make"), LAYERS, ids=[s for s, _ in LAYERS])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_reconstruction_error_is_the_discarded_singular_values(scheme, make, rank) -> None:
    layer = make()
    s = torch.linalg.svdvals(layer_matrix(layer, scheme))
    module = factorise(layer, scheme, rank)
    with torch.no_grad():
        error = torch.linalg.norm(_composed_weight(layer, module, scheme) - layer.weight)
    expected = s[rank:].square().sum().sqrt()
    assert float(error) == pytest.approx(float(expected), rel=1e-9)
    assert float(expected) > 0.1  # the truncation really drops something


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_composed_weight_is_what_the_module_computes(scheme) -> None:
    layer = _conv(stride=2, padding=1, dilation=2, kernel_size=(3, 5))
    module = factorise(layer, scheme, 3)
    x = torch.randn(2, 6, 13, 17, dtype=torch.float64)
    ref = nn.functional.conv2d(x, _composed_weight(layer, module, scheme), layer.bias,
                               stride=2, padding=1, dilation=2)
    torch.testing.assert_close(module(x), ref, rtol=1e-10, atol=1e-10)


FULL_RANK = [
    ("svd", lambda: nn.Linear(12, 9)),
    ("channel", lambda: nn.Conv2d(6, 10, 3)),
    ("channel", lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1, dilation=2)),
    ("channel", lambda: nn.Conv2d(6, 10, (3, 5), stride=(2, 1), padding=(1, 2),
                                  padding_mode="reflect")),
    ("spatial", lambda: nn.Conv2d(6, 10, 3)),
    ("spatial", lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1, dilation=2)),
    ("spatial", lambda: nn.Conv2d(6, 10, (3, 5), stride=(1, 2), padding=(2, 1),
                                  dilation=(2, 1), bias=False)),
    ("spatial", lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1, padding_mode="reflect")),
    ("spatial", lambda: nn.Conv2d(6, 10, (5, 3), padding="same")),
    ("channel", lambda: nn.Conv2d(6, 10, 1, stride=2)),
    ("tucker2", lambda: nn.Conv2d(6, 10, 3)),
    ("tucker2", lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1, dilation=2)),
    ("tucker2", lambda: nn.Conv2d(6, 10, (3, 5), stride=(2, 1), padding=(1, 2),
                                  padding_mode="reflect", bias=False)),
    ("tucker2", lambda: nn.Conv2d(6, 10, (5, 3), padding="same", padding_mode="circular")),
    ("tucker2", lambda: nn.Conv2d(12, 4, 3, padding=1)),  # in > out: each mode its own size
]


@pytest.mark.parametrize(("scheme", "make"), FULL_RANK)
def test_full_rank_equals_the_original(scheme, make) -> None:
    torch.manual_seed(1)
    layer = make()
    module = factorise(layer, scheme, max_rank(layer, scheme))
    x = torch.randn(3, 12) if scheme == "svd" else torch.randn(3, layer.in_channels, 15, 16)
    with torch.no_grad():
        ref, out = layer(x), module(x)
    assert out.shape == ref.shape
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 1e-5


def _tucker_weight(module: nn.Sequential) -> torch.Tensor:
    """The kernel the three Tucker-2 factors multiply out to (from the module's weights)."""
    a, core, b = (m.weight[:, :, 0, 0] if m.kernel_size == (1, 1) else m.weight
                  for m in module)
    return torch.einsum("nr,rsyx,sc->ncyx", b, core, a)


def _discarded(layer: nn.Module, rank: tuple[int, int]) -> tuple[float, float, float]:
    """(d_in, d_out, cross): each mode's discarded squared singular values and the energy of
    the part of the kernel outside both kept subspaces, ``||W x_0 (I-P_out) x_1 (I-P_in)||^2``
    (from independent SVDs of the unfoldings, not from the factorisation)."""
    w = layer.weight.detach().to(torch.float64)
    m_in, m_out = mode_unfoldings(layer)
    u_in, s_in, _ = torch.linalg.svd(m_in, full_matrices=False)
    u_out, s_out, _ = torch.linalg.svd(m_out, full_matrices=False)
    q_in = torch.eye(w.shape[1], dtype=w.dtype) - u_in[:, :rank[0]] @ u_in[:, :rank[0]].t()
    q_out = torch.eye(w.shape[0], dtype=w.dtype) - u_out[:, :rank[1]] @ u_out[:, :rank[1]].t()
    cross = torch.einsum("mn,cd,ndyx->mcyx", q_out, q_in, w)
    return (float(s_in[rank[0]:].square().sum()), float(s_out[rank[1]:].square().sum()),
            float(cross.square().sum()))


@pytest.mark.parametrize("rank", [(2, 3), (6, 4), (3, 10), (1, 1), (5, 9)])
def test_tucker2_error_is_what_the_discarded_mode_singular_values_predict(rank) -> None:
    """The exact property: with P the projections on the kept singular vectors of each mode,
    ``||W - W_r||^2 = d_in + d_out - ||W x_0 (I-P_out) x_1 (I-P_in)||^2`` (the kernel splits
    into four orthogonal parts); hence ``max(d_in, d_out) <= ||W - W_r||^2 <= d_in + d_out``
    (the HOSVD bound), with equality to the one mode's ``d`` when the other mode is full."""
    layer = _conv()  # 6 -> 10, 3 x 3: full ranks (6, 10)
    module = factorise(layer, "tucker2", rank)
    with torch.no_grad():
        err2 = float((_tucker_weight(module) - layer.weight).square().sum())
    d_in, d_out, cross = _discarded(layer, rank)
    assert err2 == pytest.approx(d_in + d_out - cross, rel=1e-9)
    assert max(d_in, d_out) * (1 - 1e-9) <= err2 <= (d_in + d_out) * (1 + 1e-9)
    if rank[0] == 6:
        assert err2 == pytest.approx(d_out, rel=1e-9) and cross == pytest.approx(0, abs=1e-12)
    if rank[1] == 10:
        assert err2 == pytest.approx(d_in, rel=1e-9)
    assert d_in + d_out > 0.1  # the truncation really drops something


def test_tucker2_factors_are_orthonormal_and_the_module_computes_the_product() -> None:
    layer = _conv(stride=2, padding=1, dilation=2, kernel_size=(3, 5))
    module = factorise(layer, "tucker2", (4, 7))
    a, b = module[0].weight[:, :, 0, 0], module[2].weight[:, :, 0, 0]
    torch.testing.assert_close(a @ a.t(), torch.eye(4, dtype=a.dtype))
    torch.testing.assert_close(b.t() @ b, torch.eye(7, dtype=b.dtype))
    x = torch.randn(2, 6, 13, 17, dtype=torch.float64)
    ref = nn.functional.conv2d(x, _tucker_weight(module), layer.bias, stride=2, padding=1,
                               dilation=2)
    torch.testing.assert_close(module(x), ref, rtol=1e-10, atol=1e-10)
    assert [m.kernel_size for m in module] == [(1, 1), (3, 5), (1, 1)]
    assert module[2].bias is not None and module[0].bias is None and module[1].bias is None


def test_one_rank_below_full_is_not_exact() -> None:
    """The exactness test above can fail: dropping one singular value shows."""
    torch.manual_seed(1)
    layer = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    module = factorise(layer, "spatial", max_rank(layer, "spatial") - 1)
    x = torch.randn(3, 6, 15, 16)
    with torch.no_grad():
        assert float((module(x) - layer(x)).norm() / layer(x).norm()) > 1e-4


def _expected_macs_params(layer: nn.Module, scheme: str, r: int, x: torch.Tensor
                          ) -> tuple[int, int, int, int]:
    """(original MACs, factorised MACs, original params, factorised params), by formula."""
    if scheme == "svd":
        rows = x.numel() // layer.in_features
        i, o = layer.in_features, layer.out_features
        return rows * i * o, rows * r * (i + o), i * o + o, r * (i + o) + o
    n, c, kh, kw = layer.weight.shape
    out = layer(x)
    b, ho, wo = out.shape[0], out.shape[2], out.shape[3]
    bias = n if layer.bias is not None else 0
    orig = b * ho * wo * n * c * kh * kw
    if scheme == "channel":
        return orig, b * ho * wo * r * (c * kh * kw + n), n * c * kh * kw + bias, \
            r * (c * kh * kw + n) + bias
    if scheme == "tucker2":
        (r_in, r_out), hw = r, x.shape[2] * x.shape[3]
        return orig, b * (hw * c * r_in + ho * wo * (r_in * r_out * kh * kw + r_out * n)), \
            n * c * kh * kw + bias, c * r_in + r_in * r_out * kh * kw + r_out * n + bias
    w_in = x.shape[3]
    return orig, b * ho * r * (w_in * c * kh + wo * n * kw), n * c * kh * kw + bias, \
        r * (c * kh + n * kw) + bias


@pytest.mark.parametrize(("scheme", "make", "shape", "r"), [
    ("svd", lambda: nn.Linear(64, 48), (4, 64), 8),
    ("svd", lambda: nn.Linear(64, 48), (2, 5, 64), 8),
    ("channel", lambda: nn.Conv2d(16, 32, 3, padding=1), (2, 16, 10, 12), 6),
    ("channel", lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
     (1, 16, 11, 9), 6),
    ("channel", lambda: nn.Conv2d(32, 32, 1), (1, 32, 8, 8), 4),
    ("spatial", lambda: nn.Conv2d(16, 32, 3, padding=1), (2, 16, 10, 12), 6),
    ("spatial", lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1, dilation=2),
     (1, 16, 11, 9), 6),
    ("tucker2", lambda: nn.Conv2d(16, 32, 3, padding=1), (2, 16, 10, 12), (5, 7)),
    ("tucker2", lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
     (1, 16, 11, 9), (6, 4)),
])
def test_macs_and_params_follow_the_formula(scheme, make, shape, r) -> None:
    torch.manual_seed(2)
    layer = make()
    x = torch.randn(shape)
    module = factorise(layer, scheme, r)
    orig_macs, macs, orig_params, params = _expected_macs_params(layer, scheme, r, x)
    assert count_macs(layer, x) == orig_macs
    assert count_macs(module, x) == macs < orig_macs
    assert count_params(layer) == orig_params
    assert count_params(module) == params < orig_params
    # the planner's own counts (used by the MACs search) agree with the measured ones
    wrapper = nn.Sequential(layer)
    calls = _shapes(wrapper, ["0"], x)["0"]
    if scheme == "tucker2":
        full, per_in, per_core, per_out = _tucker_macs(layer, calls)
        assert full == orig_macs
        assert r[0] * per_in + r[0] * r[1] * per_core + r[1] * per_out == macs
    else:
        assert _macs(layer, scheme, calls) == (orig_macs, macs // r)


def test_energy_rank_is_the_smallest_rank_meeting_the_threshold() -> None:
    # singular values 4, 3, 2, 1: energies 16, 9, 4, 1 of 30
    layer = nn.Linear(4, 4, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.diag(torch.tensor([3.0, 1.0, 4.0, 2.0], dtype=torch.float64)))
    shares = layer_svd(layer, "svd")[1].square().cumsum(0) / 30.0
    torch.testing.assert_close(shares, torch.tensor([16, 25, 29, 30], dtype=torch.float64) / 30)
    cases = {0.01: 1, 16 / 30: 1, 0.54: 2, 25 / 30: 2, 0.84: 3, 29 / 30: 3, 0.97: 4, 1.0: 4}
    for e, r in cases.items():
        assert energy_rank(shares, e) == r, e
    assert energy_rank(shares, 0.5, min_rank=3) == 3
    assert energy_rank(shares, 0.5, min_rank=9) == 4  # capped at the full rank


@pytest.mark.parametrize(("layer", "scheme", "rank", "match"), [
    (nn.Linear(4, 3), "svd", 4, r"rank=4 must be an integer in \[1, 3\]"),
    (nn.Linear(4, 3), "svd", 0, r"rank=0"),
    (nn.Linear(4, 3), "channel", 1, "factorises nn.Conv2d"),
    (nn.Conv2d(4, 4, 3), "svd", 1, "factorises nn.Linear"),
    (nn.Conv2d(4, 4, 3, groups=2), "channel", 1, "grouped/depthwise"),
    (nn.Conv2d(4, 4, (1, 3)), "spatial", 1, "at least 2 x 2"),
    (nn.Conv2d(4, 4, 3), "tucker", 1, "scheme='tucker' is not allowed"),
    (nn.Conv2d(4, 4, 3, groups=2), "tucker2", (2, 2), "only groups=1"),
    (nn.Conv2d(4, 6, 3), "tucker2", 3, r"rank=3 must be a pair \(r_in, r_out\) of integers "
                                       r"in \[1, 4\] x \[1, 6\]"),
    (nn.Conv2d(4, 6, 3), "tucker2", (5, 2), r"rank=\(5, 2\) must be a pair"),
    (nn.Conv2d(4, 6, 3), "tucker2", (2, 0), r"rank=\(2, 0\)"),
    (nn.Conv2d(4, 6, 3), "tucker2", (2, 2, 2), r"rank=\(2, 2, 2\)"),
    (nn.Linear(4, 3), "tucker2", (2, 2), "factorises nn.Conv2d"),
])
def test_bad_layer_scheme_or_rank_is_refused(layer, scheme, rank, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_factorised(layer, scheme, rank)


def test_structure_builds_on_the_meta_device() -> None:
    with torch.device("meta"):
        layer = nn.Conv2d(8, 16, 3, padding=1)
        module = build_factorised(layer, "spatial", 5)
    assert module[0].weight.is_meta and module[0].weight.shape == (5, 8, 3, 1)
    assert module[1].weight.shape == (16, 5, 1, 3) and module[1].bias.shape == (16,)
    assert math.prod(module[0].stride) == 1


@pytest.mark.parametrize(("scheme", "make"), LAYERS, ids=[s for s, _ in LAYERS])
def test_singular_values_are_split_as_square_roots(scheme, make) -> None:
    """Both factors carry sqrt(S): each has squared Frobenius norm sum(s[:r])."""
    layer = make()
    s = torch.linalg.svdvals(layer_matrix(layer, scheme))
    module = factorise(layer, scheme, 3)
    for factor in module:
        assert float(factor.weight.detach().square().sum()) == pytest.approx(
            float(s[:3].sum()), rel=1e-9)
