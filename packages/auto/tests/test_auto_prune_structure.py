"""``auto.prune`` records the whole pruned structure: besides the modules' shapes, the stored
tensors it cut (a layer scale multiplied in a traced forward) and the channel splits whose
literal sizes it rewrote, so ``rebuild`` gives a fresh model the shapes a checkpoint holds."""

from __future__ import annotations

import json

import torch
from auto_testing import data
from torch import nn

from netshrink.auto import AutoPruneConfig, AutoPruneStage
from netshrink.core import count_macs, stage_from_description

X = torch.zeros(1, 3, 8, 8)


def _cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class _Partial(nn.Module):
    """A conv over the first channels, the rest passed on (FasterNet): split sizes fixed in
    the constructor."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.first, self.rest = c // 4, c - c // 4
        self.conv = _cbr(self.first, self.first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.first, self.rest], dim=1)
        return torch.cat([self.conv(a), b], dim=1)


class _ScaledSplit(nn.Module):
    """A layer scale on the stem's channels, then a split block, then a narrow head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, 16))
        self.partial = _Partial(16)
        self.mid = _cbr(16, 4)
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.partial(self.stem(x) * self.gamma.reshape(1, -1, 1, 1))
        return self.fc(self.mid(x).mean((2, 3)))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = data(192, seed=1)
    return [(x[i:i + 64], y[i:i + 64]) for i in range(0, 192, 64)]


def test_auto_prune_rebuilds_cut_layer_scales_and_rewritten_splits() -> None:
    torch.manual_seed(0)
    model = _ScaledSplit().eval()
    base = count_macs(model, X)
    stage = AutoPruneStage(AutoPruneConfig(macs_target=0.5, ratios=(0.5,)))
    stage.use_data(_batches())
    stage.apply(model)
    assert count_macs(model, X) <= 0.5 * base
    assert model.gamma.numel() < 16  # the layer scale was cut with the stem's channels
    record = json.loads(json.dumps(stage.describe()))  # as a checkpoint stores it
    structure = record["config"]["structure"]
    assert structure.get("gamma") == {"tensor_dim": 0, "tensor_size": model.gamma.numel()}
    first = model.partial.conv[0].in_channels  # the split's first piece, rewritten
    assert structure.get("partial#split.0") == {"0": first, "1": model.gamma.numel() - first}
    fresh = stage_from_description(record).rebuild(_ScaledSplit())
    fresh.load_state_dict(model.state_dict())  # the same shapes, the layer scale's included
    with torch.no_grad():
        assert torch.equal(fresh.eval()(X + 1), model.eval()(X + 1))
