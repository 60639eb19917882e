"""Pack integer codes into bytes at their real width, and back.

* ``pack_bits(codes, bits)``: ``bits``-wide codes (1..8) as one little-endian bit stream
  (code ``i`` occupies bits ``i*bits .. i*bits + bits - 1``), padded with zeros to whole bytes:
  ``ceil(n * bits / 8)`` bytes.
* ``pack_trits(codes)``: codes 0/1/2 in base 3, five per byte (``c0 + 3 c1 + 9 c2 + 27 c3 +
  81 c4 <= 242``): ``ceil(n / 5)`` bytes, 1.6 bits per code.

Both take and return flat ``uint8`` tensors; the unpackers need the code count ``n``.
"""

from __future__ import annotations

import torch

_TRIT_WEIGHTS = torch.tensor([1, 3, 9, 27, 81], dtype=torch.uint8)
#: The code widths a packed file may hold: 1..8 bits, or 1.6 (base-3 ternary).
CODE_BITS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 1.6})


def packed_nbytes(n: int, bits: float) -> int:
    """Bytes that ``n`` codes take when packed (``bits=1.6`` for base-3 ternary)."""
    if isinstance(bits, bool) or bits not in CODE_BITS:
        raise ValueError(f"bits={bits!r} is not allowed; choose one of: 1, 2, ..., 8, 1.6")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"the code count must be an integer >= 0, got {n!r}")
    if bits == 1.6:
        return -(-n // 5)
    return -(-n * int(bits) // 8)


def _check(codes: torch.Tensor, limit: int) -> torch.Tensor:
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes must be uint8, got {codes.dtype}")
    flat = codes.reshape(-1).cpu()
    if flat.numel() and int(flat.max()) >= limit:
        raise ValueError(f"code {int(flat.max())} does not fit: codes must be below {limit}")
    return flat


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``uint8`` codes below ``2**bits`` into ``ceil(n * bits / 8)`` bytes."""
    if bits not in range(1, 9):
        raise ValueError(f"bits={bits!r} is not allowed; choose one of: 1, 2, ..., 8")
    flat = _check(codes, 2 ** bits)
    if bits == 8:
        return flat.clone()
    shifts = torch.arange(bits, dtype=torch.uint8)
    stream = ((flat.unsqueeze(1) >> shifts) & 1).reshape(-1)
    pad = -stream.numel() % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    octets = stream.view(-1, 8) << torch.arange(8, dtype=torch.uint8)
    return octets.sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: ``n`` codes as ``uint8``."""
    if bits not in range(1, 9):
        raise ValueError(f"bits={bits!r} is not allowed; choose one of: 1, 2, ..., 8")
    packed = packed.reshape(-1)
    if packed.numel() != packed_nbytes(n, bits):
        raise ValueError(f"{packed.numel()} bytes cannot hold exactly {n} codes of {bits} bits")
    if bits == 8:
        return packed.clone()
    stream = ((packed.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)
    codes = stream[: n * bits].view(n, bits) << torch.arange(bits, dtype=torch.uint8)
    return codes.sum(1, dtype=torch.uint8)


def pack_trits(codes: torch.Tensor) -> torch.Tensor:
    """Pack ``uint8`` codes 0/1/2 five per byte (base 3): ``ceil(n / 5)`` bytes."""
    flat = _check(codes, 3)
    pad = -flat.numel() % 5
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 5) * _TRIT_WEIGHTS).sum(1, dtype=torch.uint8)


def unpack_trits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``pack_trits``: ``n`` codes 0/1/2 as ``uint8``."""
    packed = packed.reshape(-1)
    if packed.numel() != packed_nbytes(n, 1.6):
        raise ValueError(f"{packed.numel()} bytes cannot hold exactly {n} base-3 codes")
    if packed.numel() and int(packed.max()) > 242:
        raise ValueError(f"byte {int(packed.max())} is not five base-3 digits (max 242)")
    digits = (packed.unsqueeze(1) // _TRIT_WEIGHTS) % 3
    return digits.reshape(-1)[:n].to(torch.uint8)


def pack_codes(codes: torch.Tensor, bits: float) -> torch.Tensor:
    """``pack_trits`` for 1.6 bits, else ``pack_bits``."""
    return pack_trits(codes) if bits == 1.6 else pack_bits(codes, int(bits))


def unpack_codes(packed: torch.Tensor, bits: float, n: int) -> torch.Tensor:
    """Inverse of ``pack_codes``."""
    return unpack_trits(packed, n) if bits == 1.6 else unpack_bits(packed, int(bits), n)
