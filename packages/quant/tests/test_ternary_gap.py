"""Ternary hysteresis: a weight hovering around the threshold by less than the gap keeps its
state; without the gap it flips every step."""

import torch

from netshrink.quant import TernaryWeight


def _row(probe: float) -> torch.Tensor:
    # 99 weights at 1.0 keep mean|w| ~ 1 so the threshold D ~ 0.7 barely moves.
    return torch.cat([torch.ones(99), torch.tensor([probe])]).view(1, -1)


def _probe_code(q: TernaryWeight, probe: float) -> float:
    return q(_row(probe))[0, -1].item()


def _threshold(probe: float) -> float:
    return 0.7 * _row(probe).abs().mean().item()


def test_without_gap_the_code_flips_every_step():
    q = TernaryWeight(scale=False).train()
    codes = [_probe_code(q, p) for p in (0.73, 0.67, 0.73, 0.67)]
    assert _threshold(0.73) < 0.73 and _threshold(0.67) > 0.67
    assert codes == [1.0, 0.0, 1.0, 0.0]


def test_gap_keeps_state_while_oscillating_inside_the_band():
    for start, expected in ((0.73, 1.0), (0.67, 0.0)):
        q = TernaryWeight(scale=False, gap=0.1, shape=(1, 100)).train()
        q.init_state(_row(start))
        codes = [_probe_code(q, p) for p in (0.73, 0.67, 0.73, 0.67, 0.70)]
        assert codes == [expected] * 5
        assert q.state[0, -1].item() == expected


def test_gap_switches_outside_the_band_and_keeps_sign():
    q = TernaryWeight(scale=False, gap=0.1, shape=(1, 100)).train()
    q.init_state(_row(0.5))
    # D ~ 0.697: band [0.628, 0.767]
    assert [_probe_code(q, p) for p in (0.72, 0.80, 0.65, 0.60, 0.65)] == [0, 1, 1, 0, 0]
    assert [_probe_code(q, p) for p in (-0.8, -0.65, -0.5)] == [-1, -1, 0]


def test_eval_does_not_update_state_and_state_is_persistent_but_not_packed():
    q = TernaryWeight(scale=False, gap=0.1, shape=(1, 100))
    q.init_state(_row(0.5))
    q.eval()
    assert _probe_code(q, 0.9) == 1.0
    assert q.state[0, -1].item() == 0  # eval read the weight but left the state alone
    assert "state" in q.state_dict() and q.packed_bits == {"state": 0}
    assert TernaryWeight(gap=0.0, shape=(1, 100)).state is None  # plain TWN keeps no state
