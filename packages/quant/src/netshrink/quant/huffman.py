"""Canonical Huffman coding of small-alphabet symbol streams (numpy), with bounded decoding.

Deep Compression (Han et al. 2016, section 4) Huffman-codes the codebook indices and the
sparse positions of a pruned, weight-shared layer; the skew of both distributions saves
20-30 % over fixed-width codes. A stream is stored as

* a header: the code length of every symbol of the alphabet (0 = unused), 5 bits each
  (``pack_bits``), ``ceil(alphabet * 5 / 8)`` bytes;
* the symbols' canonical codes (codes assigned in order of (length, symbol)), most significant
  bit first, concatenated, padded with zero bits to a whole byte.

Code lengths are limited to ``MAX_CODE_LENGTH`` bits (frequencies are halved until the code
fits, as zlib does). The decoder is given the symbol count; it checks, before allocating
anything of that size, that the payload can hold it (each code is at least one bit), that every
length is at most ``MAX_CODE_LENGTH`` and that the lengths form a prefix code (Kraft sum at
most 1); it then decodes exactly ``count`` symbols and refuses a stream that runs out, that
reaches a bit pattern no code starts, or that leaves a whole unused byte. Every problem is a
``HuffmanError`` (a ValueError).

Decoding is vectorised and runs over the payload in chunks of ``DECODE_CHUNK_BYTES`` bytes, so
beyond the ``count`` output symbols it takes O(chunk) memory (about 17 bytes per chunk bit, and
two lookup tables of ``2**longest`` entries, at most 2 MiB for alphabets up to 256) whatever
the payload's size. In a chunk, every bit position gets the code that would start there (a
table lookup of the next ``longest`` bits) and so the position of the next code; the codes
actually in the stream are the chain of positions from the chunk's first code, which is
followed ``ANCHOR_STRIDE`` codes at a time (jump pointers built by doubling; a short Python loop
over those anchors only) and filled in between, ``ANCHOR_STRIDE`` vectorised gathers for all
anchors at once. The next chunk starts at the byte of the first code that did not start inside
this one.

Position streams (``mask_to_gaps``): the zeros before each kept weight, as symbols 0..254, with
symbol 255 standing for 255 zeros and no kept weight (the ``filler`` of the paper), so the
alphabet stays at 256 whatever the gaps; zeros after the last kept weight are coded the same
way, so a stream always accounts for all but fewer than 255 of the layer's positions.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch

from netshrink.quant.bitpack import pack_bits, packed_nbytes, unpack_bits

MAX_CODE_LENGTH = 20
_LENGTH_BITS = 5
GAP_ALPHABET = 256
_FILLER = GAP_ALPHABET - 1
_INVALID = 255  # table entry of a bit pattern no code starts
#: payload bytes decoded at a time (memory is O(this), not O(payload))
DECODE_CHUNK_BYTES = 1 << 15
#: codes followed per anchor (a power of two: built by doubling the next-code pointers)
ANCHOR_STRIDE = 64


class HuffmanError(ValueError):
    """A malformed Huffman stream (or arguments no stream can satisfy)."""


def header_nbytes(alphabet: int) -> int:
    """Bytes of a stream's code-length header."""
    return packed_nbytes(alphabet, _LENGTH_BITS)


def _huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths for symbol ``counts`` (0 for unused symbols; a lone used symbol
    gets 1 bit)."""
    lengths = np.zeros(len(counts), dtype=np.int64)
    used = [int(s) for s in np.flatnonzero(counts)]
    if len(used) == 1:
        lengths[used[0]] = 1
    if len(used) <= 1:
        return lengths
    # heap of (count, tie-breaker, symbols in the subtree): deterministic merges
    heap = [(int(counts[s]), s, [s]) for s in used]
    heapq.heapify(heap)
    tie = len(counts)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code lengths for ``counts``, at most ``max_length`` bits each."""
    counts = np.asarray(counts, dtype=np.int64)
    while True:
        lengths = _huffman_lengths(counts)
        if lengths.max(initial=0) <= max_length:
            return lengths
        counts = np.where(counts > 0, np.maximum(counts // 2, 1), 0)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes for ``lengths``: in order of (length, symbol), each code the previous
    plus one, shifted left when the length grows. HuffmanError if the lengths are no prefix
    code (over ``MAX_CODE_LENGTH``, or a Kraft sum above 1)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.min(initial=0) < 0 or lengths.max(initial=0) > MAX_CODE_LENGTH:
        raise HuffmanError(f"code lengths must lie in 0..{MAX_CODE_LENGTH}, got "
                           f"{int(lengths.min(initial=0))}..{int(lengths.max(initial=0))}")
    used = lengths > 0
    if int((np.left_shift(1, MAX_CODE_LENGTH - lengths[used])).sum()) > 2 ** MAX_CODE_LENGTH:
        raise HuffmanError("the code lengths are no prefix code (Kraft sum above 1)")
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = 0, 0
    for s in sorted(np.flatnonzero(used).tolist(), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def huffman_encode(symbols: np.ndarray, alphabet: int) -> bytes:
    """The stream (header + codes) of ``symbols`` (integers below ``alphabet``)."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise HuffmanError(f"symbols must lie in 0..{alphabet - 1}")
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    codes = canonical_codes(lengths)
    header = pack_bits(torch.from_numpy(lengths.astype(np.uint8)), _LENGTH_BITS).numpy()
    lens, vals = lengths[symbols], codes[symbols]
    starts = np.cumsum(lens) - lens
    bits = np.zeros(int(lens.sum()), dtype=np.uint8)
    for j in range(int(lens.max(initial=0))):
        sel = lens > j
        bits[starts[sel] + j] = (vals[sel] >> (lens[sel] - 1 - j)) & 1
    return header.tobytes() + np.packbits(bits).tobytes()


def huffman_decode(payload: bytes | np.ndarray, alphabet: int, count: int) -> np.ndarray:
    """Exactly ``count`` symbols (int64) from ``huffman_encode``'s stream (see the module
    docstring for what is checked)."""
    try:  # a view of the caller's bytes, not a copy
        data = np.frombuffer(payload, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):  # e.g. a non-contiguous array
        data = np.frombuffer(bytes(payload), dtype=np.uint8)
    head = header_nbytes(alphabet)
    if data.size < head:
        raise HuffmanError(f"a stream over {alphabet} symbols needs a {head}-byte header, "
                           f"got {data.size} bytes")
    body = data[head:]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise HuffmanError(f"symbol count {count!r} must be an integer >= 0")
    if count > 8 * body.size:
        raise HuffmanError(f"{body.size} bytes of codes cannot hold {count} symbols")
    lengths = unpack_bits(torch.from_numpy(data[:head].copy()), _LENGTH_BITS,
                          alphabet).numpy().astype(np.int64)
    codes = canonical_codes(lengths)
    if count == 0:
        if body.size:
            raise HuffmanError(f"{body.size} bytes follow a stream of no symbols")
        return np.zeros(0, dtype=np.int64)
    longest = int(lengths.max(initial=0))
    if longest == 0:
        raise HuffmanError(f"the stream declares {count} symbols but no code")
    table_len = np.full(2 ** longest, _INVALID, dtype=np.uint8)
    table_sym = np.zeros(2 ** longest, dtype=np.uint8 if alphabet <= 256 else np.int64)
    for s in np.flatnonzero(lengths).tolist():
        lo = int(codes[s]) << (longest - int(lengths[s]))
        hi = (int(codes[s]) + 1) << (longest - int(lengths[s]))
        table_len[lo:hi], table_sym[lo:hi] = lengths[s], s
    out = np.empty(count, dtype=np.int64)
    nbits = 8 * body.size
    p = done = 0  # the next code's bit position; symbols decoded
    while done < count and p < nbits:
        first = p >> 3
        n = min(8 * DECODE_CHUNK_BYTES, nbits - 8 * first)  # code starts looked at
        window = _windows(body[first: first + DECODE_CHUNK_BYTES + 4], n, longest)
        step = table_len[window]
        starts = _chain(step, p - 8 * first, count - done)
        bad = step[starts] == _INVALID
        if bool(bad.any()):
            raise HuffmanError("the stream holds a bit pattern that starts no code")
        out[done: done + starts.size] = table_sym[window[starts]]
        done += starts.size
        last = int(starts[-1])
        p = 8 * first + last + int(step[last])
    if done < count:
        raise HuffmanError(f"the stream ends after fewer than {count} symbols")
    if p > nbits:
        raise HuffmanError(f"the stream ends inside symbol {count - 1}")
    if nbits - p >= 8:
        raise HuffmanError(f"{(nbits - p) // 8} unused byte(s) follow the {count} symbols")
    return out


def _windows(chunk: np.ndarray, n: int, longest: int) -> np.ndarray:
    """The ``longest`` (<= 20) bits from each of the first ``n`` bit positions of ``chunk``
    (zero bits past its end), as int32: four bytes read big-endian at each position's byte."""
    padded = np.zeros(chunk.size + 4, dtype=np.uint32)
    padded[: chunk.size] = chunk
    nbytes = (n + 7) >> 3
    word = ((padded[:nbytes] << 24) | (padded[1: nbytes + 1] << 16)
            | (padded[2: nbytes + 2] << 8) | padded[3: nbytes + 3])
    pos = np.arange(n, dtype=np.uint32)
    shift = np.uint32(32 - longest) - (pos & np.uint32(7))
    mask = np.uint32((1 << longest) - 1)
    return ((word[pos >> np.uint32(3)] >> shift) & mask).astype(np.int32)


def _chain(step: np.ndarray, start: int, most: int) -> np.ndarray:
    """Positions of the codes from ``start`` on (at most ``most``) that start before
    ``step.size``, ``step`` being the code length (or ``_INVALID``, a long jump) at each
    position. A position past the end maps to the sink ``n``."""
    n = step.size
    nxt = np.empty(n + 1, dtype=np.int32)
    np.minimum(np.arange(n, dtype=np.int32) + step, n, out=nxt[:n])
    nxt[n] = n
    jump = nxt
    for _ in range(ANCHOR_STRIDE.bit_length() - 1):  # jump = nxt applied ANCHOR_STRIDE times
        jump = jump[jump]
    anchors = []
    q, limit = start, -(-most // ANCHOR_STRIDE)
    while q < n and len(anchors) < limit:  # at most n / ANCHOR_STRIDE + 1 rounds
        anchors.append(q)
        q = int(jump[q])
    rows = np.empty((len(anchors), ANCHOR_STRIDE), dtype=np.int32)
    rows[:, 0] = anchors
    for j in range(1, ANCHOR_STRIDE):
        rows[:, j] = nxt[rows[:, j - 1]]
    flat = rows.reshape(-1)
    return flat[: min(int(np.searchsorted(flat, n)), most)]  # increasing until the sink


def mask_to_gaps(mask: np.ndarray) -> np.ndarray:
    """Gap symbols (0..255) for a flat bool ``mask``: before each kept position the zeros
    since the previous one, 255 zeros at a time as filler symbols; trailing zeros too."""
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    ones = np.flatnonzero(mask)
    gaps = np.diff(np.concatenate([[-1], ones])) - 1
    tail = mask.size - (int(ones[-1]) + 1 if ones.size else 0)
    fillers = gaps // _FILLER
    per_one = fillers + 1
    total = int(per_one.sum()) + tail // _FILLER
    out = np.full(total, _FILLER, dtype=np.int64)
    ends = np.cumsum(per_one) - 1
    out[ends] = gaps % _FILLER
    return out


def gaps_to_mask(symbols: np.ndarray, n: int) -> np.ndarray:
    """Inverse of ``mask_to_gaps``: the flat bool mask of ``n`` positions. HuffmanError if
    the symbols point past ``n`` or leave 255 or more positions unaccounted for."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    advance = symbols + (symbols < _FILLER)
    ends = np.cumsum(advance)
    covered = int(ends[-1]) if ends.size else 0
    if covered > n or n - covered >= _FILLER:
        raise HuffmanError(f"the position stream covers {covered} of {n} positions")
    mask = np.zeros(n, dtype=bool)
    mask[ends[symbols < _FILLER] - 1] = True
    return mask
