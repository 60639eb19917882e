"""MobileNet student, CIFAR ResNet-18 and the torchvision adapter: sizes, shapes, width."""

import pytest
import torch
from torch import nn

from netshrink.core import ModelStats
from netshrink.models import MobileNetStudent, ResNetCIFAR, create_model


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mobilenet_student_exact_size() -> None:
    stats = ModelStats.measure(MobileNetStudent(), torch.zeros(1, 3, 32, 32))
    assert stats.params == 1_080_650
    assert stats.macs == 31_466_496
    assert 0.5e6 <= stats.params <= 3e6


def test_mobilenet_student_plan() -> None:
    model = MobileNetStudent()
    dws = [b.depthwise.conv for b in model.features]
    pws = [b.pointwise.conv for b in model.features]
    assert model.stem.conv.out_channels == 32 and model.stem.conv.stride == (1, 1)
    assert [c.groups for c in dws] == [c.in_channels for c in dws]
    assert [c.stride[0] for c in dws] == [1, 2, 1, 2, 1, 2, 1, 1, 1]
    assert [c.out_channels for c in pws] == [64, 128, 128, 256, 256, 512, 512, 512, 512]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 19
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 19


def test_mobilenet_student_width_rounds_to_8() -> None:
    model = MobileNetStudent(width=0.3)
    assert model.stem.conv.out_channels == 8  # 9.6 -> 8
    assert [b.pointwise.conv.out_channels for b in model.features] == \
        [16, 40, 40, 80, 80, 152, 152, 152, 152]
    assert model.classifier.in_features == 152


def test_resnet18_cifar_exact_size() -> None:
    stats = ModelStats.measure(ResNetCIFAR(), torch.zeros(1, 3, 32, 32))
    assert stats.params == 11_173_962
    assert stats.macs == 555_422_720
    assert round(stats.mparams, 1) == 11.2
    assert round(stats.gmacs, 2) == 0.56


def test_resnet18_cifar_structure() -> None:
    model = ResNetCIFAR()
    assert model.stem.conv.kernel_size == (3, 3) and model.stem.conv.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert [len(layer) for layer in layers] == [2, 2, 2, 2]
    assert [layer[0].conv1.out_channels for layer in layers] == [64, 128, 256, 512]
    assert [layer[0].downsample is not None for layer in layers] == [False, True, True, True]
    assert model.fc.in_features == 512


def test_resnet18_cifar_width_half_quarters_the_convs() -> None:
    full, half = ResNetCIFAR(), ResNetCIFAR(width=0.5)
    conv = lambda m: sum(c.weight.numel() for c in m.modules()  # noqa: E731
                         if isinstance(c, nn.Conv2d) and c.in_channels != 3)
    assert conv(full) == 4 * conv(half)
    assert _params(half) == 2_797_610


@pytest.mark.parametrize("name", ["nin", "nin_gc", "mobilenet_student", "resnet18_cifar",
                                  "tv:resnet18", "tv:mobilenet_v2"])
def test_output_shapes(name: str) -> None:
    model = create_model(name, num_classes=10)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["nin", "nin_gc", "mobilenet_student", "resnet18_cifar"])
def test_in_channels_and_classes(name: str) -> None:
    model = create_model(name, num_classes=4, in_channels=1, width=0.25).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_torchvision_models_are_untrained_and_sized() -> None:
    model = create_model("tv:resnet18")
    assert model.fc.out_features == 10
    assert _params(model) == 11_181_642
    assert _params(create_model("tv:mobilenet_v2")) == 2_236_682
