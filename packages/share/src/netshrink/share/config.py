"""``ShareConfig``: which layers share their weights, through codebooks of how many bits."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from netshrink.core import CODEBOOK_BITS, check_choice, check_int

#: Deep Compression's codebook sizes span 2..8 bits (4 to 256 centroids).
BITS_RANGE: tuple[int, ...] = tuple(b for b in CODEBOOK_BITS if b >= 2)

#: (module name, bits, sparse) per shared layer
Layers = tuple[tuple[str, int, bool], ...]


@dataclasses.dataclass(frozen=True)
class ShareConfig:
    """How to share a model's weights.

    ``bits``: every conv layer gets a codebook of ``2**bits`` centroids (2..8);
    ``linear_bits``: the same for linear layers (None: ``bits``). Deep Compression used 8 bits
    for convs and 5 for fully connected layers on AlexNet and VGG-16 without accuracy loss.
    ``iterations``: the most Lloyd iterations of k-means per layer. ``skip``: module names or
    fnmatch patterns left alone. Only exact ``nn.Conv2d`` and ``nn.Linear`` layers are shared.

    ``layers``: the shared layers (name -> bits and whether pruned, i.e. carrying a mask),
    recorded by the stage so that ``rebuild`` recreates the structure; a mapping
    ``{name: {"bits": b, "sparse": s}}`` or triples ``(name, bits, sparse)``.
    """

    bits: int = 5
    linear_bits: int | None = None
    iterations: int = 50
    skip: tuple[str, ...] = ()
    layers: Layers = ()

    def __post_init__(self) -> None:
        check_choice("bits", self.bits, BITS_RANGE)
        if self.linear_bits is not None:
            check_choice("linear_bits", self.linear_bits, BITS_RANGE)
        check_int("iterations", self.iterations, min_value=1)
        skip = self.skip
        if isinstance(skip, str) or not isinstance(skip, (list, tuple)) or not all(
                isinstance(x, str) for x in skip):
            raise ValueError(f"skip={skip!r} must be a list of module names or patterns")
        object.__setattr__(self, "skip", tuple(skip))
        object.__setattr__(self, "layers", _as_layers(self.layers))


def _as_layers(raw: Any) -> Layers:
    """Normalise the ``layers`` record; ValueError naming the field for anything malformed."""
    problem = (f"layers={raw!r} must map module names to {{'bits': one of {list(BITS_RANGE)}, "
               "'sparse': true or false}")
    try:
        if isinstance(raw, Mapping):
            items = [(name, entry["bits"], entry["sparse"]) if isinstance(entry, Mapping)
                     else (name, *entry) for name, entry in raw.items()]
        elif isinstance(raw, (list, tuple)):
            items = [tuple(item) for item in raw]
        else:
            raise ValueError(problem)
        out = []
        for name, bits, sparse in items:
            if (not isinstance(name, str) or not name or isinstance(bits, bool)
                    or bits not in BITS_RANGE or not isinstance(sparse, bool)):
                raise ValueError(problem)
            out.append((name, bits, sparse))
    except (TypeError, KeyError, ValueError) as err:
        raise ValueError(problem) from err
    if len({name for name, _, _ in out}) != len(out):
        raise ValueError(f"layers={raw!r} names a module twice")
    return tuple(out)
