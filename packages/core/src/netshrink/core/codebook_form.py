"""The codebook form of a weight-shared layer: the contract between share and the packed format.

A weight-shared conv / linear layer (``netshrink.share``) computes with

    W = where(mask, codebook[indices], 0)          (no mask: W = codebook[indices])

where ``codebook`` holds ``2**bits`` float centroids, ``indices`` one ``bits``-wide code per
weight and ``mask`` (optional) marks the weights that magnitude pruning kept: a pruned weight is
an exact zero that is not a centroid. The packed format (``netshrink.quant.save_packed``) stores
the indices at ``bits`` bits (or entropy coded) plus the codebook, without importing share:
shared layers implement ``HasCodebookForm``, as quantized layers implement ``HasIntegerForm``
for deploy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from netshrink.core.validation import check_choice

#: The codebook sizes a shared layer may have: ``2**bits`` centroids, ``bits`` in 1..8.
CODEBOOK_BITS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
#: How a file may store the indices (and positions): at ``bits`` bits (plus a 1-bit map of the
#: kept weights), or Huffman coded.
CODINGS: tuple[str, ...] = ("fixed", "huffman")


@dataclass(frozen=True)
class CodebookForm:
    """A shared weight: ``codebook`` (float, ``2**bits`` values), ``indices`` (uint8, the
    weight's shape, each below ``2**bits``), ``mask`` (bool, the weight's shape, or None when
    no weight is pruned); ``coding``: how the layer asks a packed file to store it (one of
    ``CODINGS``; a writer may be told to override it)."""

    codebook: torch.Tensor
    indices: torch.Tensor
    mask: torch.Tensor | None
    bits: int
    coding: str = "fixed"

    def __post_init__(self) -> None:
        check_choice("coding", self.coding, CODINGS)
        if isinstance(self.bits, bool) or self.bits not in CODEBOOK_BITS:
            raise ValueError(f"bits={self.bits!r} is not allowed; choose one of "
                             f"{list(CODEBOOK_BITS)}")
        if (not self.codebook.is_floating_point() or self.codebook.dim() != 1
                or self.codebook.numel() != 2 ** self.bits):
            raise ValueError(f"the codebook must be a 1-d float tensor of 2**bits = "
                             f"{2 ** self.bits} values, got {self.codebook.dtype} "
                             f"{tuple(self.codebook.shape)}")
        if self.indices.dtype != torch.uint8:
            raise ValueError(f"indices must be uint8, got {self.indices.dtype}")
        if self.indices.numel() and int(self.indices.max()) >= 2 ** self.bits:
            raise ValueError(f"index {int(self.indices.max())} does not fit in {self.bits} bits")
        if self.mask is not None and (self.mask.dtype != torch.bool
                                      or self.mask.shape != self.indices.shape):
            raise ValueError(f"the mask must be a bool tensor of the indices' shape "
                             f"{tuple(self.indices.shape)}, got {self.mask.dtype} "
                             f"{tuple(self.mask.shape)}")

    def weight(self) -> torch.Tensor:
        """The float weight this form stands for (pruned weights exactly zero)."""
        w = self.codebook[self.indices.long()]
        return w if self.mask is None else torch.where(self.mask, w, torch.zeros_like(w))


@runtime_checkable
class HasCodebookForm(Protocol):
    """A layer whose ``weight`` is shared through a codebook. It subclasses a ``torch.nn``
    layer (``Conv2d``, ``Linear``) whose constructor arguments it keeps as attributes, so a
    reader can rebuild the plain layer and give it ``codebook_form().weight()``."""

    def codebook_form(self) -> CodebookForm:
        """The layer's codebook, indices and mask (detached)."""
        ...
