"""Weight-shared layers in packed files: codebook + indices at ``bits`` bits or Huffman coded.

A layer implementing core's ``HasCodebookForm`` (``netshrink.share``'s shared layers; quant
never imports share) is stored as its plain ``torch.nn`` layer whose ``weight`` entry is

    ["codebook", offset, shape, {"bits": b, "coding": c, "nnz": k,
                                 "indices": [offset, length], "positions": null | [offset,
                                 length, count]}]

* the ``2**b`` centroids: ``float32[offset : offset + 2**b]``;
* the indices of the ``k`` kept weights (in order): ``codes[offset : offset + length]``, at
  ``b`` bits each (``coding="fixed"``) or Huffman coded (``"huffman"``, see ``huffman``);
* ``positions`` (null when no weight is pruned, then ``k`` is the weight's size): which
  weights are kept: a 1-bit map of ``count`` (= the weight's size) bits (``"fixed"``), or
  ``count`` Huffman-coded gap symbols (``"huffman"``).

``load_packed`` decodes it into the plain layer's float32 weight (pruned weights exactly zero).
Every size is checked against the bytes present before anything is decoded, and the decoded
elements of an entry may be at most ``MAX_ELEMENTS_PER_BYTE`` per stored byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from netshrink.core import CODINGS, CodebookForm
from netshrink.quant.bitpack import pack_bits, packed_nbytes, unpack_bits
from netshrink.quant.huffman import (
    GAP_ALPHABET,
    HuffmanError,
    gaps_to_mask,
    header_nbytes,
    huffman_decode,
    huffman_encode,
    mask_to_gaps,
)
from netshrink.quant.structure import StructureError

#: A gap symbol stands for at most 255 zeros and takes at least one bit.
MAX_ELEMENTS_PER_BYTE = 8 * (GAP_ALPHABET - 1)
_FIELDS = {"bits", "coding", "nnz", "indices", "positions"}


@dataclass(frozen=True)
class CodebookEntry:
    """A checked ``"codebook"`` layout record. ``blob`` is what it decodes to (float32), so
    it stands where the plain layer expects its float weight."""

    offset: int
    shape: tuple[int, ...]
    bits: int
    coding: str
    nnz: int
    indices: tuple[int, int]
    positions: tuple[int, int, int] | None

    blob = "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def encode(form: CodebookForm, coding: str) -> tuple[torch.Tensor, bytes, bytes | None,
                                                     dict[str, Any]]:
    """``(codebook as float32, index payload, position payload or None, record fields)``."""
    if coding not in CODINGS:
        raise ValueError(f"coding={coding!r} is not allowed; choose one of {list(CODINGS)}")
    indices = form.indices.detach().cpu().reshape(-1)
    mask = None if form.mask is None else form.mask.detach().cpu().reshape(-1)
    kept = indices if mask is None else indices[mask]
    if coding == "fixed":
        idx = pack_bits(kept.contiguous(), form.bits).numpy().tobytes()
        pos = None if mask is None else pack_bits(mask.to(torch.uint8), 1).numpy().tobytes()
        count = indices.numel()
    else:
        idx = huffman_encode(kept.numpy(), 2 ** form.bits)
        gaps = None if mask is None else mask_to_gaps(mask.numpy())
        pos = None if gaps is None else huffman_encode(gaps, GAP_ALPHABET)
        count = 0 if gaps is None else int(gaps.size)
    fields = {"bits": form.bits, "coding": coding, "nnz": int(kept.numel()), "count": count}
    return form.codebook.detach().cpu().to(torch.float32), idx, pos, fields


def _int(v: Any, what: str, limit: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= limit:
        raise StructureError(f"{what} must be an integer in [0, {limit}], got {v!r}")
    return v


def check_entry(raw: list[Any], blobs: dict[str, torch.Tensor], used: dict[str, int],
                what: str, limit: int, max_dims: int) -> CodebookEntry:
    """Check a ``"codebook"`` record against the blobs in the file (nothing is allocated)."""
    if len(raw) != 4 or not isinstance(raw[3], dict) or set(raw[3]) != _FIELDS:
        raise StructureError(f"{what}: a codebook record is [\"codebook\", offset, shape, "
                             f"{{{', '.join(sorted(_FIELDS))}}}], got {raw!r:.200}")
    offset = _int(raw[1], f"{what}: offset", limit)
    if not isinstance(raw[2], list) or len(raw[2]) > max_dims:
        raise StructureError(f"{what}: shape {raw[2]!r:.100} is not a list of at most "
                             f"{max_dims} sizes")
    shape = tuple(_int(s, f"{what}: size", limit) for s in raw[2])
    numel = math.prod(shape)
    if numel > limit:
        raise StructureError(f"{what}: shape {list(shape)} has more than {limit} elements")
    f = raw[3]
    bits = f["bits"]
    if isinstance(bits, bool) or bits not in range(1, 9):
        raise StructureError(f"{what}: codebook bits {bits!r} is not one of 1..8")
    if f["coding"] not in CODINGS:
        raise StructureError(f"{what}: coding {f['coding']!r:.50} is not one of {CODINGS}")
    nnz = _int(f["nnz"], f"{what}: nnz", numel)
    if not isinstance(f["indices"], list) or len(f["indices"]) != 2:
        raise StructureError(f"{what}: indices must be [offset, length]")
    indices = (_int(f["indices"][0], f"{what}: indices offset", limit),
               _int(f["indices"][1], f"{what}: indices length", limit))
    positions = None
    if f["positions"] is None:
        if nnz != numel:
            raise StructureError(f"{what}: {nnz} kept weights of {numel} need positions")
    else:
        if not isinstance(f["positions"], list) or len(f["positions"]) != 3:
            raise StructureError(f"{what}: positions must be null or [offset, length, count]")
        positions = tuple(_int(v, f"{what}: positions", limit) for v in f["positions"])
    coding = f["coding"]
    if coding == "fixed":
        if indices[1] != packed_nbytes(nnz, bits):
            raise StructureError(f"{what}: {nnz} indices of {bits} bits take "
                                 f"{packed_nbytes(nnz, bits)} bytes, not {indices[1]}")
        if positions is not None and (positions[2] != numel
                                      or positions[1] != packed_nbytes(numel, 1)):
            raise StructureError(f"{what}: a position map of {numel} weights takes "
                                 f"{packed_nbytes(numel, 1)} bytes of {numel} bits")
    else:
        for name, (length, count, alphabet) in {
                "indices": (indices[1], nnz, 2 ** bits),
                **({} if positions is None else
                   {"positions": (positions[1], positions[2], GAP_ALPHABET)})}.items():
            room = 8 * (length - header_nbytes(alphabet))
            if room < 0 or count > room:
                raise StructureError(f"{what}: {length} bytes of coded {name} cannot hold "
                                     f"{count} symbols")
    stored = indices[1] + (positions[1] if positions else 0)
    if numel > MAX_ELEMENTS_PER_BYTE * max(stored, 1):
        raise StructureError(f"{what}: {numel} weights from {stored} stored bytes is more than "
                             f"{MAX_ELEMENTS_PER_BYTE} per byte")
    for blob, start, length in (("float32", offset, 2 ** bits), ("codes", *indices),
                                *((("codes", *positions[:2]),) if positions else ())):
        available = blobs[blob].numel() if blob in blobs else 0
        used[blob] = used.get(blob, 0) + length
        if start + length > available or used[blob] > available:
            raise StructureError(f"{what}: {blob}[{start}:{start + length}] does not lie in the "
                                 f"{available} values the file holds (or the file's tensors "
                                 "together claim more than that)")
    return CodebookEntry(offset, shape, bits, coding, nnz, indices, positions)


def decode(blobs: dict[str, torch.Tensor], e: CodebookEntry) -> torch.Tensor:
    """The float32 weight of a checked entry; StructureError for a malformed payload."""
    codebook = blobs["float32"][e.offset: e.offset + 2 ** e.bits]
    codes = blobs["codes"]
    idx_part = codes[e.indices[0]: e.indices[0] + e.indices[1]]
    try:
        if e.coding == "fixed":
            kept = unpack_bits(idx_part, e.bits, e.nnz).long()
            mask = None if e.positions is None else unpack_bits(
                codes[e.positions[0]: e.positions[0] + e.positions[1]], 1, e.numel).bool()
        else:
            kept = torch.from_numpy(huffman_decode(idx_part.numpy(), 2 ** e.bits, e.nnz))
            mask = None
            if e.positions is not None:
                part = codes[e.positions[0]: e.positions[0] + e.positions[1]].numpy()
                gaps = huffman_decode(part, GAP_ALPHABET, e.positions[2])
                mask = torch.from_numpy(gaps_to_mask(gaps, e.numel))
    except (HuffmanError, ValueError) as err:
        raise StructureError(f"codebook weight {list(e.shape)}: {err}") from err
    if mask is not None and int(mask.sum()) != e.nnz:
        raise StructureError(f"codebook weight {list(e.shape)}: the positions keep "
                             f"{int(mask.sum())} weights, the record says {e.nnz}")
    values = codebook[kept]
    if mask is None:
        return values.view(e.shape).clone()
    weight = torch.zeros(e.numel, dtype=torch.float32)
    weight[mask] = values
    return weight.view(e.shape)


def encoded_nbytes(form: CodebookForm, coding: str) -> tuple[int, int]:
    """``(code bytes, float bytes)`` a shared weight takes in a packed file."""
    _, idx, pos, _ = encode(form, coding)
    return len(idx) + (len(pos) if pos else 0), 4 * 2 ** form.bits


__all__ = ["CODINGS", "MAX_ELEMENTS_PER_BYTE", "CodebookEntry", "check_entry", "decode",
           "encode", "encoded_nbytes"]
