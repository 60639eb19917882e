"""A BitConv2d takes over the sign-preserving layers and the max-pool in front of it, and the
outputs stay bit-identical; layers that could change a sign, or that feed something else too,
are left alone."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from netshrink.kernels import BitConv2d, accelerate, bit_layers
from netshrink.quant import QuantConfig, load_packed, quantize_, save_packed

pytestmark = pytest.mark.usefixtures("kernels")

CFG = QuantConfig(w="binary", a="binary", binary_scale=False, first="same", last="same")


def check(model: nn.Module, x: torch.Tensor) -> nn.Module:
    fast = accelerate(model)
    with torch.no_grad():
        assert torch.equal(fast(x), model(x))
    return fast


@pytest.mark.parametrize(("pool", "size"), [(nn.MaxPool2d(3, 2, 1), 9), (nn.MaxPool2d(2), 7),
                                            (nn.MaxPool2d(3, 1, 1), 6)])
def test_hardtanh_and_max_pool_are_absorbed_exactly(pool, size) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Hardtanh(), pool, nn.Identity(), nn.Hardtanh(-2.0, 0.5),
                        nn.Conv2d(70, 33, 3, padding=1, bias=False))
    fast = check(quantize_(net, CFG).eval(), torch.randn(2, 70, size, size + 2))
    assert all(isinstance(m, nn.Identity) for m in list(fast)[:4])
    k, s, p = pool.kernel_size, pool.stride, pool.padding
    assert fast[4].pre_pool == (k, s, p)


def test_sign_changing_layers_stay() -> None:
    """ReLU maps negatives to 0 (sign +1) and Hardtanh(0, 1) too: both must stay, unless a
    packed conv before them emits the next one's bits (then they are tabulated, exactly)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.MaxPool2d(2), nn.Identity(),
                        nn.Conv2d(8, 5, 3, padding=1, bias=False), nn.Hardtanh(0.0, 1.0),
                        nn.Conv2d(5, 4, 1, bias=False))
    model = quantize_(net, CFG).eval()
    model[1] = nn.ReLU()  # set after quantize_, which drops a ReLU in front of sign itself
    fast = check(model, torch.randn(2, 8, 6, 6))
    assert isinstance(fast[0], nn.MaxPool2d) and isinstance(fast[1], nn.ReLU)
    assert fast[2].pre_pool is None and fast[2].emit_lo is not None  # Hardtanh(0, 1) tabulated
    assert isinstance(fast[3], nn.Identity) and isinstance(fast[4], BitConv2d)
    # hardtanh(0, 1) >= 0 everywhere: every sum gives a +1 bit
    assert (fast[2].emit_lo <= -fast[2].total).all() and (fast[2].emit_hi >= fast[2].total).all()
    plain = accelerate(model, absorb=False)
    assert isinstance(plain[3], nn.Hardtanh) and plain[2].emit_lo is None


class _TwoUses(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.Hardtanh()
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Conv2d(6, 4, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.pool(self.act(x))
        return self.conv(h), h


def test_a_layer_that_also_feeds_something_else_stays(tmp_path) -> None:
    torch.manual_seed(2)
    path = save_packed(quantize_(_TwoUses(), CFG).eval(), tmp_path / "two.safetensors")
    traced = load_packed(path)
    assert isinstance(traced, fx.GraphModule)
    fast = accelerate(traced)
    assert bit_layers(fast) == ["conv"]
    assert isinstance(fast.pool, nn.MaxPool2d) and isinstance(fast.act, nn.Hardtanh)
    x = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        ref, out = traced(x), fast(x)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


class _CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Conv2d(6, 6, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(self.pool(x)))


def test_a_conv_called_twice_takes_nothing_over(tmp_path) -> None:
    """Taking the pool over would pool the input of the second call too."""
    torch.manual_seed(3)
    path = save_packed(quantize_(_CalledTwice(), CFG).eval(), tmp_path / "twice.safetensors")
    traced = load_packed(path)
    fast = accelerate(traced)
    assert isinstance(fast.pool, nn.MaxPool2d) and fast.conv.pre_pool is None
    x = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        assert torch.equal(fast(x), traced(x))
