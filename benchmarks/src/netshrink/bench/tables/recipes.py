"""Stage records used by the tables: ``{"kind": ..., "config": {...}}`` as core describes them,
built by small functions so the tables read as recipes."""

from __future__ import annotations

from typing import Any


def quantize(w: int | str, a: int | str, **options: Any) -> dict[str, Any]:
    """netshrink.quant QAT: weight / activation precision plus QuantConfig options."""
    return {"kind": "quant.quantize", "config": {"w": w, "a": a, **options}}


def binary_tricks(**options: Any) -> dict[str, Any]:
    """The settings binary/ternary activations want: low BN momentum, saturating STE for A."""
    return {"bn_momentum": 0.01, "a_estimator": "saturate_ste", **options}


def slimming(s: float) -> dict[str, Any]:
    """netshrink.prune network-slimming penalty: s * sum |gamma| over every BN."""
    return {"kind": "prune.slimming", "config": {"s": s}}


def prune(criterion: str, amount: float | None = None, **options: Any) -> dict[str, Any]:
    """netshrink.prune channel pruning (physical surgery) of ``amount`` of the channels or to a
    ``macs_target``, e.g. mode='regular', round_to=8."""
    config = {"criterion": criterion, **options}
    if amount is not None:
        config["amount"] = amount
    return {"kind": "prune.channels", "config": {"prune": config}}


def fuse() -> dict[str, Any]:
    """netshrink.bnfuse: fold every foldable BatchNorm (deployment form)."""
    return {"kind": "bnfuse.fuse", "config": {}}
