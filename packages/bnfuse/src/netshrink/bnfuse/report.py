"""What fuse() did: which BatchNorms were folded into which layer, which were left and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

FoldKind = Literal["affine", "threshold", "input"]

_KIND_TEXT = {
    "affine": "into the output of",
    "threshold": "as a sign threshold into",
    "input": "into the input of",
}


@dataclass(frozen=True)
class FoldedBN:
    """One folded BN (by qualified module name) and the layer that absorbed it.

    ``kind``: ``"affine"`` (the exact affine map, into the producing layer), ``"threshold"``
    (binary-activation fold: only the sign of the output is kept), ``"input"`` (into the
    consuming layer's input side). ``via`` names the max-pools a threshold fold crossed;
    ``negated``/``constant`` count the channels a threshold fold negated (scale < 0) or made
    constant (scale == 0).
    """

    bn: str
    into: str
    kind: FoldKind
    via: tuple[str, ...] = ()
    negated: int = 0
    constant: int = 0

    def __str__(self) -> str:
        text = f"{self.bn} -> {_KIND_TEXT[self.kind]} {self.into}"
        if self.via:
            text += f" (through {', '.join(self.via)})"
        if self.negated or self.constant:
            text += f" [{self.negated} channel(s) negated, {self.constant} constant]"
        return text


@dataclass(frozen=True)
class LeftBN:
    """A BN that fuse() left in place, and why it could not be folded."""

    bn: str
    reason: str

    def __str__(self) -> str:
        return f"{self.bn}: {self.reason}"


@dataclass(frozen=True)
class FuseReport:
    folded: tuple[FoldedBN, ...]
    left: tuple[LeftBN, ...]

    @property
    def folded_names(self) -> tuple[str, ...]:
        return tuple(f.bn for f in self.folded)

    @property
    def left_names(self) -> tuple[str, ...]:
        return tuple(b.bn for b in self.left)

    def reason(self, bn: str) -> str | None:
        """Why ``bn`` was left, or None if it was not left."""
        return next((b.reason for b in self.left if b.bn == bn), None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"folded": [...], "left": [...]}``."""
        return {"folded": [{**asdict(f), "via": list(f.via)} for f in self.folded],
                "left": [asdict(b) for b in self.left]}

    def __str__(self) -> str:
        lines = [f"BatchNorm fusion: {len(self.folded)} folded, {len(self.left)} left"]
        lines += [f"  folded {f}" for f in self.folded]
        lines += [f"  left   {b}" for b in self.left]
        return "\n".join(lines)
