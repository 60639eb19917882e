"""The closed-form folds, layer by layer, in float64 against running the layer and the BN."""

import pytest
import torch
from bnfuse_testing import randomize_bn
from torch import nn

from netshrink.bnfuse import bn_affine, fold_input_affine_, fold_output_affine_, threshold_affine

BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _input(layer: nn.Module, dims: int) -> torch.Tensor:
    torch.manual_seed(1)
    c = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    if isinstance(layer, nn.Linear):
        return torch.randn(5, c, dtype=torch.float64)
    return torch.randn(2, c, *([6] * dims), dtype=torch.float64)


@pytest.mark.parametrize(("layer", "dims"), [
    (nn.Conv2d(4, 6, 3, padding=1), 2),
    (nn.Conv2d(4, 6, 3, groups=2, bias=False), 2),
    (nn.Conv2d(6, 6, 3, stride=2, groups=6, bias=False), 2),  # depthwise
    (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), 2),     # weight (in, out/groups, k, k)
    (nn.ConvTranspose2d(4, 3, 2, bias=False), 2),
    (nn.Conv1d(4, 6, 3, groups=2), 1),
    (nn.ConvTranspose1d(4, 6, 3, groups=2), 1),
    (nn.Conv3d(2, 4, 3, bias=False), 3),
    (nn.Linear(5, 7), 1),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v))
def test_output_fold_equals_layer_then_bn(layer: nn.Module, dims: int) -> None:
    torch.manual_seed(0)
    layer = layer.double()
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    bn = randomize_bn(BN[dims](out).double(), seed=3).eval()
    x = _input(layer, dims)
    expected = bn(layer(x))
    fold_output_affine_(layer, *bn_affine(bn))
    assert layer.bias is not None
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("layer", "dims"), [
    (nn.Conv2d(4, 6, 3), 2),
    (nn.Conv2d(4, 6, 1, groups=2, bias=False), 2),
    (nn.Conv2d(6, 6, 3, stride=2, groups=6), 2),
    (nn.Conv1d(4, 6, 3, groups=2), 1),
    (nn.Linear(5, 7, bias=False), 1),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v))
def test_input_fold_equals_bn_then_layer(layer: nn.Module, dims: int) -> None:
    torch.manual_seed(0)
    layer = layer.double()
    c = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    bn = randomize_bn(BN[dims](c).double(), seed=4).eval()
    x = _input(layer, dims)
    expected = layer(bn(x))
    fold_input_affine_(layer, *bn_affine(bn))
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_bn_affine_matches_eval_batchnorm_and_handles_affine_false() -> None:
    bn = randomize_bn(nn.BatchNorm1d(8).double(), seed=5).eval()
    x = torch.randn(4, 8, dtype=torch.float64)
    a, b = bn_affine(bn)
    torch.testing.assert_close(x * a + b, bn(x), rtol=1e-13, atol=1e-13)
    plain = nn.BatchNorm1d(8, affine=False).double().eval()
    plain.running_var.fill_(4.0)
    a, b = bn_affine(plain)
    torch.testing.assert_close(a, torch.full((8,), (4.0 + plain.eps) ** -0.5,
                                             dtype=torch.float64))


def test_threshold_affine_keeps_sign_and_makes_zero_scale_constant() -> None:
    a = torch.tensor([2.0, -0.5, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, -3.0, 0.5], dtype=torch.float64)
    scale, shift = threshold_affine(a, b)
    assert scale.tolist() == [1.0, -1.0, 0.0, 0.0]
    assert shift.tolist() == [0.5, 2.0, -3.0, 0.5]
    y = torch.linspace(-5, 5, 101, dtype=torch.float64)[:, None]
    assert torch.equal(torch.sign(y * scale + shift), torch.sign(y * a + b))
