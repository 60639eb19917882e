"""Issue 13, item 1: with binary / ternary activations, ``quantize_`` removes only the ReLUs
whose output goes into a sign-like activation quantizer (read from the fx graph), not those
whose output reaches only float or k-bit layers, BatchNorms or the output."""

import pytest
import torch
from torch import nn

from netshrink.quant import QuantConfig, quantize_


def _relus(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.ReLU)]


class _Net(nn.Module):
    """conv1 (float first) -> relu1 -> pool -> conv2 (sign input); conv2's output goes through
    relu2 straight into the float last conv3, and through relu_bn -> BatchNorm -> conv2b
    (sign input) -> conv3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()  # feeds the float last conv: must stay
        self.relu_bn = nn.ReLU()  # feeds a BatchNorm, then a sign: must stay
        self.bn = nn.BatchNorm2d(4)
        self.conv2b = nn.Conv2d(4, 4, 1)
        self.conv3 = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(x)))  # relu1 -> pool -> sign(conv2 input)
        y = self.conv2(x)
        z = self.conv2b(self.bn(self.relu_bn(y)))
        return self.conv3(torch.cat([self.relu2(y), z], 1))


@pytest.mark.parametrize("a", ["binary", "ternary"])
def test_only_relus_feeding_a_sign_are_removed(a):
    model = quantize_(_Net(), QuantConfig(w="binary", a=a))
    assert isinstance(model.relu1, nn.Identity)  # through the max-pool into conv2's sign
    assert _relus(model) == ["relu2", "relu_bn"]
    x = torch.randn(2, 3, 8, 8)
    assert model(x).shape == (2, 2, 4, 4)


def test_relu_feeding_a_sign_and_a_float_layer_goes():
    """A sign after a ReLU would be constant, so a ReLU that feeds a sign goes even when it
    also feeds a float layer (as on a residual path)."""
    class Fork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(4, 4)
            self.relu = nn.ReLU()
            self.mid = nn.Linear(4, 4)
            self.last = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.relu(self.first(x))
            return self.last(torch.cat([self.mid(h), h], 1))

    model = quantize_(Fork(), QuantConfig(w=2, a="binary"))
    assert _relus(model) == []
    assert isinstance(model.relu, nn.Identity)


def test_nin_head_keeps_its_relus():
    """The nin-like head: the last hidden ReLU feeds the float last conv, the final one the
    global pool and the output; both stay; every ReLU before a binary conv goes."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 10, 1), nn.BatchNorm2d(10), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    quantize_(model, QuantConfig(w="binary", a="binary"))
    assert _relus(model) == ["9", "12"]
    assert all(isinstance(model[i], nn.Identity) for i in (2, 6))


def test_untraceable_model_falls_back_to_module_order():
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(4, 4)
            self.relu1 = nn.ReLU()
            self.mid = nn.Linear(4, 4)
            self.relu2 = nn.ReLU()
            self.last = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
                x = x * 2
            return self.last(self.relu2(self.mid(self.relu1(self.first(x)))))

    model = quantize_(Dynamic(), QuantConfig(w=2, a="binary"))
    assert _relus(model) == ["relu2"]
