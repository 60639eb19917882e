"""ChannelShuffle: the known permutation, validation, fx tracing."""

import pytest
import torch
import torch.fx

from netshrink.models import ChannelShuffle


def _channels(n: int) -> torch.Tensor:
    """(1, n, 1, 1) tensor whose channel i holds the value i."""
    return torch.arange(n, dtype=torch.float32).view(1, n, 1, 1)


@pytest.mark.parametrize(("channels", "groups", "expected"), [
    (6, 2, [0, 3, 1, 4, 2, 5]),
    (6, 3, [0, 2, 4, 1, 3, 5]),
    (8, 4, [0, 2, 4, 6, 1, 3, 5, 7]),
    (4, 1, [0, 1, 2, 3]),
    (4, 4, [0, 1, 2, 3]),
])
def test_known_permutation(channels: int, groups: int, expected: list[int]) -> None:
    out = ChannelShuffle(groups)(_channels(channels))
    assert out.flatten().tolist() == expected


def test_matches_reshape_transpose_reshape_on_a_full_tensor() -> None:
    x = torch.randn(2, 12, 3, 5)
    n, c, h, w = x.shape
    ref = x.reshape(n, 3, c // 3, h, w).transpose(1, 2).reshape(n, c, h, w)
    assert torch.equal(ChannelShuffle(3)(x), ref)


def test_shuffle_by_g_is_undone_by_shuffle_by_c_over_g() -> None:
    x = torch.randn(2, 12, 2, 2)
    assert torch.equal(ChannelShuffle(4)(ChannelShuffle(3)(x)), x)


def test_channels_not_divisible_by_groups_fails() -> None:
    with pytest.raises(RuntimeError):
        ChannelShuffle(4)(torch.randn(1, 6, 2, 2))


@pytest.mark.parametrize("groups", [0, -2, 2.0, "2"])
def test_bad_groups_rejected(groups: object) -> None:
    with pytest.raises(ValueError, match=repr(groups).replace(".", r"\.")):
        ChannelShuffle(groups)  # type: ignore[arg-type]


def test_fx_traceable_and_repr() -> None:
    module = ChannelShuffle(2)
    traced = torch.fx.symbolic_trace(module)
    x = torch.randn(3, 8, 4, 4)
    assert torch.equal(traced(x), module(x))
    assert repr(module) == "ChannelShuffle(groups=2)"
