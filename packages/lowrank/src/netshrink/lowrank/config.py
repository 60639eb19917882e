"""``LowRankConfig``: what to factorise and how to choose the ranks (frozen, validated)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from netshrink.core import check_choice, check_float, check_int
from netshrink.lowrank.decompose import SCHEMES, Rank

METHODS: tuple[str, ...] = ("svd", "channel", "spatial", "tucker2")
DEFAULT_ENERGY = 0.9

#: (module name, scheme, rank) per factorised layer; a ``tucker2`` rank is ``(r_in, r_out)``
Ranks = tuple[tuple[str, str, Rank], ...]


@dataclasses.dataclass(frozen=True)
class LowRankConfig:
    """How to factorise a model.

    ``method``: how ``k x k`` convolutions (k > 1) are treated: ``"svd"`` leaves them alone
    (only linear layers and 1x1 convs, which are matrices, are factorised), ``"channel"``
    factorises them into a ``k x k`` conv to r channels and a 1x1 conv, ``"spatial"`` into a
    ``k x 1`` and a ``1 x k`` conv, ``"tucker2"`` into a 1x1 conv to ``r_in`` channels, a
    ``k x k`` conv ``r_in -> r_out`` and a 1x1 conv (Tucker-2 by HOSVD; see ``decompose``).
    Linear layers always use a truncated SVD and 1x1 convs the channel scheme. Grouped and
    depthwise convs are always left alone.

    The rank per layer: ``energy`` (default 0.9), the least share of the sum of squared
    singular values each layer keeps, in (0, 1] (for ``tucker2``, of each mode's); or
    ``macs_target``, the fraction of the model's MACs (on ``input_shape``) the factorised
    model may have, in (0, 1], the ranks then being searched (``ranks.search_ranks``); give
    one or the other. ``min_rank``: the least
    rank any factorised layer gets. A layer is only factorised when its MACs go down.

    ``skip``: module names or fnmatch patterns left alone; ``skip_first`` / ``skip_last``:
    leave the first / last conv or linear layer (in module order) alone, as the other stages
    do (default: both). ``input_shape``: the example input's shape for MACs and spatial sizes.

    ``ranks``: the factorised layers (name -> scheme and rank), recorded by the stage so that
    ``rebuild`` recreates the structure; a mapping ``{name: {"scheme": s, "rank": r}}`` or
    triples ``(name, scheme, rank)``; a ``tucker2`` rank is a pair ``[r_in, r_out]``.
    """

    method: str = "channel"
    energy: float | None = None
    macs_target: float | None = None
    min_rank: int = 1
    skip: tuple[str, ...] = ()
    skip_first: bool = True
    skip_last: bool = True
    input_shape: tuple[int, ...] = (1, 3, 32, 32)
    ranks: Ranks = ()

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        if self.macs_target is None:
            if self.energy is None:
                object.__setattr__(self, "energy", DEFAULT_ENERGY)
            check_float("energy", self.energy, min_value=0.0, max_value=1.0,
                        min_exclusive=True)
        else:
            if self.energy is not None:
                raise ValueError(f"energy={self.energy!r} and macs_target="
                                 f"{self.macs_target!r} were both given; give one of them")
            check_float("macs_target", self.macs_target, min_value=0.0, max_value=1.0,
                        min_exclusive=True)
        check_int("min_rank", self.min_rank, min_value=1)
        skip = self.skip
        if isinstance(skip, str) or not isinstance(skip, (list, tuple)) or not all(
                isinstance(x, str) for x in skip):
            raise ValueError(f"skip={skip!r} must be a list of module names or patterns")
        object.__setattr__(self, "skip", tuple(skip))
        check_choice("skip_first", self.skip_first, (True, False))
        check_choice("skip_last", self.skip_last, (True, False))
        shape = self.input_shape
        if (isinstance(shape, str) or not isinstance(shape, (list, tuple)) or len(shape) < 2
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                           for d in shape)):
            raise ValueError(f"input_shape={shape!r} must be at least two positive integers, "
                             "e.g. [1, 3, 32, 32]")
        object.__setattr__(self, "input_shape", tuple(shape))
        object.__setattr__(self, "ranks", _as_ranks(self.ranks))


def _as_ranks(raw: Any) -> Ranks:
    """Normalise the ``ranks`` record; ValueError naming the field for anything malformed."""
    problem = (f"ranks={raw!r} must map module names to {{'scheme': one of {list(SCHEMES)}, "
               f"'rank': a positive integer (a pair [r_in, r_out] for 'tucker2')}}")
    try:
        if isinstance(raw, Mapping):
            items = [(name, entry["scheme"], entry["rank"]) if isinstance(entry, Mapping)
                     else (name, *entry) for name, entry in raw.items()]
        elif isinstance(raw, (list, tuple)):
            items = [tuple(item) for item in raw]
        else:
            raise ValueError(problem)
        out = []
        for name, scheme, rank in items:
            if scheme == "tucker2" and isinstance(rank, (list, tuple)):
                rank = tuple(rank)
                valid = len(rank) == 2 and all(_positive_int(r) for r in rank)
            else:
                valid = scheme != "tucker2" and _positive_int(rank)
            if not isinstance(name, str) or not name or scheme not in SCHEMES or not valid:
                raise ValueError(problem)
            out.append((name, scheme, rank))
    except (TypeError, KeyError) as err:
        raise ValueError(problem) from err
    except ValueError as err:  # also a wrong number of items to unpack
        raise ValueError(problem) from err
    if len({name for name, _, _ in out}) != len(out):
        raise ValueError(f"ranks={raw!r} names a module twice")
    return tuple(out)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
