"""The fx dependency graph on small hand-built models: what must be pruned together."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.prune import DependencyGraph, UntraceableModelError


def _cbr(c_in: int, c_out: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


def _graph(model: nn.Module, shape=(2, 3, 8, 8)) -> DependencyGraph:
    return DependencyGraph.build(model.eval(), torch.randn(shape))


def _in_classes(g: DependencyGraph, module: str) -> list[int]:
    return [g.find(x) for x in g.calls[module].in_vec.tolist()]


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 6)
        self.a = _cbr(6, 6)
        self.b = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6))
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.b(self.a(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_residual_add_ties_all_summands_into_one_group_and_keeps_the_head():
    g = _graph(_Residual())
    assert g.producers["stem.0"] == g.producers["b.0"]  # channel i of both summands: one class
    assert g.producers["a.0"] != g.producers["stem.0"]
    assert _in_classes(g, "head") == g.producers["stem.0"]  # through GAP + flatten
    groups = {g2.producers: g2 for g2 in g.groups()}
    assert set(groups) == {("stem.0", "b.0"), ("a.0",), ("head",)}
    assert groups[("head",)].pinned == 4  # the output layer is never pruned
    assert groups[("stem.0", "b.0")].pinned == 0
    assert g.followers["stem.1"] == g.followers["b.1"] == g.producers["stem.0"]


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = _cbr(3, 2)
        self.b = _cbr(3, 3)
        self.c = nn.Conv2d(5, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


def test_concat_maps_consumer_channels_with_offsets():
    g = _graph(_Concat())
    assert _in_classes(g, "c") == g.producers["a.0"] + g.producers["b.0"]
    assert not g.partitions


class _ShuffleNet(nn.Module):
    """conv -> channel shuffle (g=2, written as unflatten/transpose/flatten) -> conv."""

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.a = _cbr(3, 4)
        self.b = nn.Conv2d(4, 2, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        x = x.unflatten(1, (2, -1)).transpose(1, 2).flatten(1, 2)
        return self.b(x)


def test_channel_shuffle_permutes_channel_indices():
    g = _graph(_ShuffleNet())
    a = g.producers["a.0"]
    assert _in_classes(g, "b") == [a[0], a[2], a[1], a[3]]
    # the (2, C/2) split is a partition: both shuffle rows keep equal counts
    assert [sorted(b) for b in g.partitions[0]] == [sorted(a[:2]), sorted(a[2:])]


def test_grouped_conv_records_input_and_output_group_partitions():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = _cbr(3, 4)
            self.b = _cbr(4, 6, groups=2)
            self.c = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    g = _graph(Net())
    a, b = g.producers["a.0"], g.producers["b.0"]
    assert g.calls["b.0"].kind == "grouped"
    assert [a[:2], a[2:]] in g.partitions
    assert [b[:3], b[3:]] in g.partitions


class _DepthwiseSE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw = _cbr(3, 4)
        self.dw = _cbr(4, 4, groups=4)
        self.fc1 = nn.Conv2d(4, 2, 1)
        self.fc2 = nn.Conv2d(2, 4, 1)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        x = self.dw(self.pw(x))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.out(x * gate)


def test_depthwise_ties_input_to_output_and_se_multiply_merges():
    g = _graph(_DepthwiseSE())
    pw = g.producers["pw.0"]
    assert g.calls["dw.0"].kind == "depthwise"
    assert g.followers["dw.0"] == pw and g.followers["dw.1"] == pw
    assert g.producers["fc2"] == pw  # the gate's channel i scales channel i
    assert _in_classes(g, "fc1") == pw
    assert g.producers["fc1"] != pw


def test_flatten_into_linear_repeats_each_channel_over_positions():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = _cbr(3, 3)
            self.fc = nn.Linear(3 * 4, 5)
            self.bn = nn.BatchNorm1d(5)
            self.out = nn.Linear(5, 2)

        def forward(self, x):
            x = F.max_pool2d(self.a(x), 4)  # 8x8 -> 2x2
            return self.out(F.relu(self.bn(self.fc(x.view(x.size(0), -1)))))

    g = _graph(Net())
    a = g.producers["a.0"]
    assert _in_classes(g, "fc") == [c for c in a for _ in range(4)]
    assert _in_classes(g, "out") == g.producers["fc"] == g.followers["bn"]
    assert not set(g.producers["fc"]) & g.pinned  # linear neurons are prunable
    assert set(g.producers["out"]) <= g.pinned


def test_chunk_and_literal_split():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = _cbr(3, 4)
            self.b = _cbr(3, 4)
            self.c = nn.Conv2d(4, 2, 1)
            self.d = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            x1, x2 = self.a(x).chunk(2, dim=1)
            y1, _ = self.b(x).split([3, 1], dim=1)  # literal sizes cannot follow pruning
            return self.c(torch.cat([x1, x2], 1)) + self.d(y1[:, :2])

    g = _graph(Net())
    a = g.producers["a.0"]
    assert [sorted(b) for b in g.partitions[0]] == [sorted(a[:2]), sorted(a[2:])]
    assert set(g.producers["b.0"]) <= g.pinned
    assert not set(a) & g.pinned


def test_unknown_op_pins_its_channels():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = _cbr(3, 4)
            self.b = _cbr(3, 4)
            self.c = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x).flip(1), self.b(x)], 1))

    g = _graph(Net())
    assert set(g.producers["a.0"]) <= g.pinned
    assert not set(g.producers["b.0"]) & g.pinned


def test_untraceable_model_names_the_failing_module():
    class Gate(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.gate = Gate()

        def forward(self, x):
            return self.gate(self.conv(x))

    with pytest.raises(UntraceableModelError, match=r"module 'gate' \(Gate\)"):
        _graph(Net())
