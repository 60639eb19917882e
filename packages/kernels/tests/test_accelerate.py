"""accelerate() and load_packed(path, backend=...): a model round trip through a packed file with
its binary / ternary layers on the kernels, outputs bit-identical; the float path without them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netshrink.kernels._build as build
from netshrink.kernels import BitConv2d, accelerate, bit_layers, load_packed
from netshrink.quant import QuantConfig, quantize_, save_packed
from netshrink.quant import load_packed as load_float


def binary_net(w: str, seed: int = 0) -> nn.Module:
    """Float first / last layers; three binary-input convs (odd widths, stride 2, a group
    conv), BatchNorms with random statistics, one folded into its conv as a threshold would be."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.Hardtanh(),
        nn.Conv2d(24, 70, 3, padding=1, bias=False), nn.BatchNorm2d(70), nn.Hardtanh(),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(70, 34, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(34),
        nn.Hardtanh(),
        nn.Conv2d(34, 34, 1, groups=2, bias=False), nn.Identity(), nn.Hardtanh(),
        nn.Conv2d(34, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.0, 1.0)
    cfg = QuantConfig(w=w, a="binary", binary_scale=False, ternary_scale=False)
    model = quantize_(net, cfg).eval()
    model[10].fold_affine(torch.sign(torch.randn(34)), torch.randn(34))  # a threshold fold
    return model


@pytest.mark.usefixtures("kernels")
@pytest.mark.parametrize("w", ["binary", "ternary"])
def test_packed_file_round_trip_is_bit_exact(tmp_path, w) -> None:
    model = binary_net(w)
    path = save_packed(model, tmp_path / "model.safetensors")
    fast = load_packed(path, backend="bitpacked")
    assert len(bit_layers(fast)) == 3  # the three binary-input convs, not the first / last
    assert not isinstance(fast.get_submodule("0"), BitConv2d)
    # the hardtanh and max-pool before the stride-2 conv were taken over (fx graph path)
    assert fast.get_submodule("7").pre_pool == (3, 2, 1)
    assert isinstance(fast.get_submodule("5"), nn.Identity)
    # 3 -> 7 -> 10 stay packed: BN + hardtanh (+ the pool) tabulated into 3's and 7's outputs
    assert [fast.get_submodule(n).emit_lo is not None for n in ("3", "7", "10")] == [
        True, True, False]
    assert isinstance(fast.get_submodule("8"), nn.Identity)
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        ref, deployed, out = model(x), load_float(path)(x), fast(x)
    assert torch.equal(deployed, ref)
    assert torch.equal(out, ref)


@pytest.mark.usefixtures("kernels")
def test_accelerate_copies_unless_inplace() -> None:
    model = binary_net("binary", seed=1)
    fast = accelerate(model)
    assert not bit_layers(model) and len(bit_layers(fast)) == 3
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(fast(x), model(x))
    assert accelerate(model, inplace=True) is model and len(bit_layers(model)) == 3


def test_torch_backend_and_unknown_backend(tmp_path) -> None:
    path = save_packed(binary_net("binary"), tmp_path / "m.safetensors")
    assert not bit_layers(load_packed(path, backend="torch"))
    with pytest.raises(ValueError, match="backend='fast' is not allowed; choose one of"):
        load_packed(path, backend="fast")


def test_without_the_extension_the_float_path_still_works(tmp_path, monkeypatch) -> None:
    """No compiler: 'auto' falls back to the float model, 'bitpacked' says why it cannot."""
    monkeypatch.setattr(build, "_STATE", {"tried": True, "ops": None, "error": "no g++ here"})
    model = binary_net("binary")
    path = save_packed(model, tmp_path / "m.safetensors")
    auto = load_packed(path, backend="auto")
    assert not bit_layers(auto)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(auto(x), model(x))
    with pytest.raises(RuntimeError, match="not available .*no g\\+\\+ here.*backend='torch'"):
        load_packed(path, backend="bitpacked")
    with pytest.raises(RuntimeError, match="no g\\+\\+ here"):
        accelerate(model)
