"""Quantized residual adds (``netshrink.quant.quant_add``): with ``scheme="int8_affine"`` every
add of a ResNet block becomes a ``QuantAdd`` on uint8 grids (the block's final ReLU inside it),
values already quantized by another add are not quantized twice, other schemes are untouched,
and the structure survives checkpoints and packed files."""

import re
from collections import OrderedDict

import pytest
import torch
from torch import nn

from netshrink.quant import QuantConfig, freeze_observers_, quantize_
from netshrink.quant.packing import load_packed, save_packed
from netshrink.quant.quant_add import QuantAdd
from netshrink.quant.quantize import QuantizeStage
from netshrink.quant.quantizers import AffineAct

INT8 = QuantConfig(w=8, a=8, scheme="int8_affine")


class _Block(nn.Module):
    """A ResNet basic block (conv-BN-ReLU-conv-BN + shortcut, ReLU), as in resnet_cifar."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(cin, cout, 1, stride, bias=False), bn=nn.BatchNorm2d(cout)))
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + identity)


def _resnet(seed: int = 0) -> nn.Module:
    """stem, an identity block, a downsampling block, an identity block, pool, fc."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                           nn.ReLU()),
        block1=_Block(8, 8), block2=_Block(8, 16, 2), block3=_Block(16, 16),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(16, 10)))


def _warm(model: nn.Module, batches: int = 2) -> nn.Module:
    model.train()
    with torch.no_grad():
        for seed in range(batches):
            model(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def _adds(model: nn.Module) -> dict[str, QuantAdd]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantAdd)}


def test_int8_resnet_adds_become_quant_adds_without_double_quantization():
    model = quantize_(_resnet(), INT8)
    adds = _adds(model)
    assert sorted(adds) == ["block1.quant_add", "block2.quant_add", "block3.quant_add"]
    assert all(a.relu for a in adds.values())  # the block's last ReLU moved inside
    assert all(a.a_quant is not None for a in adds.values())  # conv2's output
    # shortcuts: the float stem's output and a downsample conv's output are quantized by the
    # add; an identity shortcut (block3) is block2's QuantAdd output, already quantized
    assert adds["block1.quant_add"].b_quant is not None
    assert adds["block2.quant_add"].b_quant is not None
    assert adds["block3.quant_add"].b_quant is None
    # the convs reading a block's output read the QuantAdd's grid: no own input quantizer
    assert model.block2.conv1.input_quant is None
    assert model.block2.downsample.conv.input_quant is None
    assert model.block3.conv1.input_quant is None
    assert isinstance(model.block1.conv1.input_quant, AffineAct)  # reads the float stem
    assert isinstance(model.block1.conv2.input_quant, AffineAct)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.isfinite(_warm(model)(x)).all()


def test_quant_add_computes_the_fake_quantized_sum_and_freezes():
    add = QuantAdd(relu=True)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    add.train()
    add(a, b)
    add.eval()
    y = add(a, b)
    qa, qb = add.a_quant(a), add.b_quant(b)
    s, z = add.out_quant.params()
    assert int(z) == 0  # after a ReLU the range starts at 0: ORT can drop the ReLU
    expected = (torch.clamp(torch.round(torch.relu(qa + qb) / s) + z, 0, 255) - z) * s
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    assert freeze_observers_(add) == 3
    before = add.out_quant.observer.max_val.clone()
    add.train()
    add(a * 10, b * 10)
    assert torch.equal(add.out_quant.observer.max_val, before)


def test_other_schemes_keep_float_adds():
    for config in (QuantConfig(w=8, a=8), QuantConfig(w=4, a=4),
                   QuantConfig(w=8, a=8, scheme="uint8_minmax")):
        model = quantize_(_resnet(), config)
        assert not _adds(model), config.scheme
        assert type(model.block1) is _Block and type(model.block1.act2) is nn.ReLU


class _SizedBlock(nn.Module):
    """Adds of sizes, not tensors: left alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[:, : x.size(1) + 0]


class _RootAdd(nn.Module):
    """A tensor add in the root's own forward: left float (the model object stays)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.block = _SizedBlock()
        self.last = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.first(x)
        return self.last(self.block(y) + y)


def test_root_adds_and_size_arithmetic_are_left_alone():
    model = quantize_(_RootAdd(), QuantConfig(w=8, a=8, scheme="int8_affine", first="8bit"))
    assert not _adds(model)
    assert type(model.block) is _SizedBlock
    assert isinstance(model.block.conv.input_quant, AffineAct)


def test_quant_adds_survive_packed_files(tmp_path):
    model = _warm(quantize_(_resnet(), INT8))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = model(x)
        save_packed(model, tmp_path / "m.nspk")
        packed = load_packed(tmp_path / "m.nspk")
        assert len(_adds(packed)) == 3
        torch.testing.assert_close(packed(x), ref, rtol=0, atol=1e-5)


def test_layers_reading_an_add_are_linked_to_its_grid_in_copies_and_packed_files(tmp_path):
    """A conv whose input quantizer was dropped (it reads a QuantAdd) rounds its int8 bias at
    the add's output scale: the link follows deep copies and is made again by load_packed."""
    import copy

    model = _warm(quantize_(_resnet(), INT8))
    readers = {"block2.conv1": "block1.quant_add", "block2.downsample.conv": "block1.quant_add",
               "block3.conv1": "block2.quant_add"}
    for layer, add in readers.items():
        assert model.get_submodule(layer).input_grid() is model.get_submodule(add).out_quant
    assert model.block1.conv1.input_grid() is model.block1.conv1.input_quant
    twin = copy.deepcopy(model)
    for layer, add in readers.items():
        assert twin.get_submodule(layer).input_grid() is twin.get_submodule(add).out_quant
    assert "_input_grid_link" not in str(list(model.state_dict()))
    layer = model.block3.conv1
    step = layer.input_grid().params()[0] * layer.weight_quant._params(
        layer._out_major(layer.folded_weight().detach()))[0]
    bias = layer._epilogue()[1]
    assert torch.equal(bias, torch.round(layer.folded_bias() / step) * step)
    assert not torch.equal(bias, layer.folded_bias())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        save_packed(model, tmp_path / "m.nspk")
        packed = load_packed(tmp_path / "m.nspk")
        assert packed.get_submodule("block3.conv1").input_grid() is \
            packed.get_submodule("block2.quant_add").out_quant
        assert torch.equal(packed(x), model(x))


def test_quant_adds_survive_checkpoints(tmp_path):
    models = pytest.importorskip("netshrink.models")
    torch.manual_seed(0)
    stage = QuantizeStage(INT8)
    model = _warm(stage.apply(models.create_model("resnet18_cifar", width=0.125)))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = model(x)
        models.save_model(tmp_path / "m.safetensors", model, recipe=[stage])
        loaded = models.load_model(tmp_path / "m.safetensors")
        assert len(_adds(loaded)) == 8
        assert torch.equal(loaded(x), ref)


@pytest.mark.parametrize("args, message", [
    ({"bits": 2**30}, "bits=1073741824 is not allowed"),
    ({"bits": "8"}, "is not allowed"),
    ({"bits": 3.5}, "is not allowed"),
    ({"relu": 1}, "relu=1 must be True or False"),
    ({"quantize_a": "yes"}, "quantize_a='yes' must be True or False"),
    ({"estimator": "os.system"}, "estimator='os.system' is not allowed"),
    ({"zzz": 1}, "unknown argument 'zzz'"),
    ({"bits": [8] * 10**4}, "must be a scalar"),
    ("bits=8", "must be a JSON object"),
])
def test_a_crafted_quant_add_record_in_a_packed_structure_is_refused(args, message):
    """A packed file's structure names QuantAdd modules by record: each bad value is one
    ValueError naming it, before anything is allocated from it."""
    from netshrink.quant.structure import module_from_spec

    with pytest.raises(ValueError, match=re.escape(message)):
        module_from_spec({"type": "quant.QuantAdd", "args": args})
