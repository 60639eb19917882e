import torch
from torch import nn

from netshrink.core import ModelStats, count_macs, state_bytes


def test_macs_of_plain_and_grouped_conv_and_linear():
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    assert count_macs(conv, torch.zeros(1, 8, 10, 10)) == 16 * 8 * 9 * 100
    grouped = nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False)
    assert count_macs(grouped, torch.zeros(1, 8, 10, 10)) == 16 * 2 * 9 * 100
    lin = nn.Linear(20, 5)
    assert count_macs(lin, torch.zeros(3, 20)) == 3 * 20 * 5


def test_measure_counts_params_and_state_bytes():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    s = ModelStats.measure(model, torch.zeros(1, 3, 2, 2))
    assert s.params == 3 * 4 + 4 + 4 + 4
    # parameters and running mean/var as float32, num_batches_tracked as int64
    assert s.float_bytes == (s.params + 8) * 4 + 8
    assert s.packed_bytes == s.float_bytes
    assert s.macs == 3 * 4 * 4
    assert s.compression == 1.0


def test_packed_bits_declared_by_a_module_shrink_packed_size():
    conv = nn.Conv2d(16, 16, 3, bias=False)  # 2304 weights
    conv.packed_bits = {"weight": 2}
    assert state_bytes(conv, packed=False) == 2304 * 4
    assert state_bytes(conv, packed=True) == 2304 * 2 // 8
    conv.packed_bits = {"weight": 1.6}
    assert state_bytes(conv, packed=True) == 461  # ceil(2304 * 1.6 / 8)


def test_measure_restores_training_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    before = model[1].running_mean.clone()
    ModelStats.measure(model, torch.randn(2, 3, 4, 4))
    assert model.training
    assert torch.equal(model[1].running_mean, before)  # measured in eval mode: no stat update
