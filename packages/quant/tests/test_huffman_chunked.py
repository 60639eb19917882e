"""The chunked Huffman decoder: the same symbols (or the same refusal) as the whole-payload
decoder it replaced, at any chunk size and anchor stride, in memory bounded by the chunk."""

import tracemalloc
from array import array

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netshrink.quant import huffman
from netshrink.quant.bitpack import pack_bits, unpack_bits
from netshrink.quant.huffman import (
    _INVALID,
    _LENGTH_BITS,
    HuffmanError,
    canonical_codes,
    header_nbytes,
    huffman_decode,
    huffman_encode,
)


def _reference_decode(payload: bytes | np.ndarray, alphabet: int, count: int) -> np.ndarray:
    """The decoder before chunking (one Python step per symbol, ~7 bytes per payload bit),
    kept verbatim as the reference the chunked one must agree with."""
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
    table_sym = np.zeros(2 ** longest, dtype=np.int64)
    for s in np.flatnonzero(lengths).tolist():
        lo = int(codes[s]) << (longest - int(lengths[s]))
        hi = (int(codes[s]) + 1) << (longest - int(lengths[s]))
        table_len[lo:hi], table_sym[lo:hi] = lengths[s], s
    nbits = 8 * body.size
    bits = np.concatenate([np.unpackbits(body), np.zeros(longest, dtype=np.uint8)])
    # the next `longest` (<= 20) bits at every position: int32, 4 bytes per payload bit
    window = np.zeros(nbits, dtype=np.int32)
    for j in range(longest):
        window = (window << 1) | bits[j: j + nbits]
    step = table_len[window]
    starts = array("q", bytes(8 * count))
    jumps = step.tobytes()
    p, done = 0, 0
    try:
        for done in range(count):
            starts[done] = p
            p += jumps[p]
        done = count
    except IndexError:
        pass  # ran past the stream: a bad pattern or too few bits, told apart below
    at = np.frombuffer(starts, dtype=np.int64)[:done]
    if bool((step[at] == _INVALID).any()):
        raise HuffmanError("the stream holds a bit pattern that starts no code")
    if done < count:
        raise HuffmanError(f"the stream ends after fewer than {count} symbols")
    if p > nbits:
        raise HuffmanError(f"the stream ends inside symbol {count - 1}")
    if nbits - p >= 8:
        raise HuffmanError(f"{(nbits - p) // 8} unused byte(s) follow the {count} symbols")
    return table_sym[window[at]]



def _outcome(decode, payload: bytes, alphabet: int, count: int) -> object:
    """The symbols as a list, or the HuffmanError's message."""
    try:
        return decode(payload, alphabet, count).tolist()
    except HuffmanError as err:
        return str(err)


#: (chunk bytes, anchor stride): chunks far smaller than a code, strides down to one code
SMALL = [(1, 1), (1, 4), (2, 2), (3, 64), (5, 8), (1 << 15, 64)]


def _skewed(rng: np.random.Generator, n: int, alphabet: int) -> np.ndarray:
    p = rng.dirichlet(np.full(alphabet, 0.3))
    return rng.choice(alphabet, size=n, p=p).astype(np.int64)


@pytest.mark.parametrize(("chunk", "stride"), SMALL)
def test_round_trip_across_chunk_boundaries(chunk: int, stride: int) -> None:
    rng = np.random.default_rng(chunk * 100 + stride)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huffman, "DECODE_CHUNK_BYTES", chunk)
        mp.setattr(huffman, "ANCHOR_STRIDE", stride)
        for alphabet, n in ((2, 1), (4, 333), (16, 2000), (256, 1500), (40, 700)):
            x = _skewed(rng, n, alphabet)
            payload = huffman_encode(x, alphabet)
            assert np.array_equal(huffman_decode(payload, alphabet, n), x)
            assert np.array_equal(_reference_decode(payload, alphabet, n), x)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(symbols=st.lists(st.integers(min_value=0, max_value=39), max_size=400),
       chunk=st.sampled_from([1, 2, 3, 4, 7, 64]), stride=st.sampled_from([1, 2, 8, 64]),
       extra=st.integers(min_value=-3, max_value=3),
       edit=st.sampled_from(["none", "truncate", "append", "ones", "flip"]),
       where=st.integers(min_value=0, max_value=10 ** 6))
def test_fuzz_chunked_agrees_with_the_reference(symbols, chunk, stride, extra, edit,
                                                 where) -> None:
    """Valid and damaged streams (truncated, extended, a tail of all-one bytes, a flipped
    bit) and wrong counts: the same symbols or the same HuffmanError as the old decoder."""
    x = np.array(symbols, dtype=np.int64)
    payload = bytearray(huffman_encode(x, 40))
    head = header_nbytes(40)
    if edit == "truncate" and len(payload) > head:
        del payload[head + where % (len(payload) - head):]
    elif edit == "append":
        payload += bytes([where % 256]) * (1 + where % 3)
    elif edit == "ones" and len(payload) > head:
        cut = head + where % (len(payload) - head)
        payload[cut:] = b"\xff" * (len(payload) - cut)
    elif edit == "flip" and len(payload) > head:
        bit = where % (8 * (len(payload) - head))
        payload[head + bit // 8] ^= 0x80 >> (bit % 8)
    count = max(0, x.size + extra)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huffman, "DECODE_CHUNK_BYTES", chunk)
        mp.setattr(huffman, "ANCHOR_STRIDE", stride)
        got = _outcome(huffman_decode, bytes(payload), 40, count)
    assert got == _outcome(_reference_decode, bytes(payload), 40, count)
    if edit == "none" and extra == 0:
        assert got == x.tolist()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=80), alphabet=st.sampled_from([2, 4, 16, 256]),
       count=st.integers(min_value=0, max_value=700), chunk=st.sampled_from([1, 2, 5, 4096]))
def test_fuzz_arbitrary_bytes_agree_with_the_reference(data, alphabet, count, chunk) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huffman, "DECODE_CHUNK_BYTES", chunk)
        got = _outcome(huffman_decode, data, alphabet, count)
    assert got == _outcome(_reference_decode, data, alphabet, count)


def _header(lengths: list[int]) -> bytes:
    return pack_bits(torch.tensor(lengths, dtype=torch.uint8), 5).numpy().tobytes()


@pytest.mark.parametrize("chunk", [1, 3, 1 << 15])
@pytest.mark.parametrize(("lengths", "body", "count", "match"), [
    ([1, 2, 0, 0], b"\xff" * 9, 30, "starts no code"),  # 11 starts no code
    ([1, 2, 2, 0], b"\xff" * 9, 40, "ends after fewer"),  # all ones: 36 x code 11
    ([1, 2, 2, 0], b"\xff" * 9, 30, "unused byte"),
    ([20, 20, 1, 0], b"\xff" * 6, 3, "starts no code"),  # 20 ones: no 20-bit code
    ([1, 0, 0, 3], b"\x02", 7, "ends inside"),  # 0 x 6, then 10 + padding = 100
    ([20, 20, 1, 0], b"\xff" * 6, 10 ** 9, "cannot hold"),
])
def test_hostile_payloads_are_a_huffman_error(chunk, lengths, body, count, match) -> None:
    payload = _header(lengths) + body
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huffman, "DECODE_CHUNK_BYTES", chunk)
        with pytest.raises(HuffmanError, match=match):
            huffman_decode(payload, 4, count)
    with pytest.raises(HuffmanError, match=match):
        _reference_decode(payload, 4, count)


def test_all_ones_decodes_to_the_all_ones_code() -> None:
    """An all-one payload is a valid stream when some code is all ones: 72 x symbol 1."""
    out = huffman_decode(_header([1, 1, 0, 0]) + b"\xff" * 9, 4, 72)
    assert out.tolist() == [1] * 72


def test_memory_beyond_the_output_is_bounded_by_the_chunk() -> None:
    """The old decoder held ~7 bytes per payload bit (here ~26 MB beyond the 8 MB output);
    the chunked one holds O(chunk) (~17 bytes per chunk bit, 4.5 MB at 32 KiB)."""
    rng = np.random.default_rng(0)
    n = 1_000_000
    x = np.clip(np.round(rng.normal(8, 2.5, n)), 0, 15).astype(np.int64)
    payload = huffman_encode(x, 16)
    assert 8 * len(payload) > 3 * n  # ~3.4 bits per symbol: ~3.4 M payload bits
    tracemalloc.start()
    try:
        out = huffman_decode(payload, 16, n)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(out, x)
    assert peak - out.nbytes < 8 * 2 ** 20 < 4 * 8 * len(payload)
