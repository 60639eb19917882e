"""Canonical Huffman coding: exact round trips, size against the measured entropy, and
malformed streams refused (each a HuffmanError, never a hang or a huge allocation)."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netshrink.quant.bitpack import pack_bits
from netshrink.quant.huffman import (
    GAP_ALPHABET,
    MAX_CODE_LENGTH,
    HuffmanError,
    canonical_codes,
    code_lengths,
    gaps_to_mask,
    header_nbytes,
    huffman_decode,
    huffman_encode,
    mask_to_gaps,
)


def _entropy_bits(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * symbols.size)


@pytest.mark.parametrize(("n", "alphabet"), [(0, 4), (1, 4), (7, 2), (1000, 256), (5000, 32)])
def test_round_trip_is_exact(n: int, alphabet: int) -> None:
    rng = np.random.default_rng(n)
    x = np.clip(np.round(rng.normal(alphabet / 2, alphabet / 8, n)), 0, alphabet - 1)
    x = x.astype(np.int64)
    assert np.array_equal(huffman_decode(huffman_encode(x, alphabet), alphabet, n), x)


def test_a_single_symbol_takes_one_bit_each() -> None:
    x = np.full(17, 3)
    payload = huffman_encode(x, 8)
    assert len(payload) == header_nbytes(8) + 3  # 17 bits
    assert np.array_equal(huffman_decode(payload, 8, 17), x)


def test_hand_computed_code() -> None:
    # counts a:4 b:2 c:1 d:1 -> lengths 1, 2, 3, 3; canonical codes 0, 10, 110, 111
    x = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    lengths = code_lengths(np.bincount(x))
    assert lengths.tolist() == [1, 2, 3, 3]
    assert canonical_codes(lengths).tolist() == [0b0, 0b10, 0b110, 0b111]
    body = huffman_encode(x, 4)[header_nbytes(4):]
    assert body == bytes([0b00001010, 0b11011100])  # 0 0 0 0 10 10 110 111 + padding


@pytest.mark.parametrize("skew", [0.5, 1.0, 2.0])
def test_coded_size_is_within_a_few_percent_of_the_entropy(skew: float) -> None:
    rng = np.random.default_rng(0)
    x = np.clip(np.round(rng.normal(16, 16 / (1 + 4 * skew), 50_000)), 0, 31).astype(np.int64)
    body_bits = 8 * (len(huffman_encode(x, 32)) - header_nbytes(32))
    h = _entropy_bits(x)
    assert h <= body_bits <= 1.03 * h + 8  # Shannon's bound below, Huffman's overhead above
    assert body_bits < 5 * x.size  # and below the fixed 5-bit width


def test_lengths_are_limited() -> None:
    counts = np.array([2 ** i for i in range(40)])  # unlimited Huffman would need 39 bits
    lengths = code_lengths(counts)
    assert lengths.max() == MAX_CODE_LENGTH
    assert (2.0 ** -lengths.astype(float)).sum() <= 1.0
    x = np.repeat(np.arange(40), [1] * 30 + [50] * 10)
    assert np.array_equal(huffman_decode(huffman_encode(x, 40), 40, x.size), x)


def _stream(x: np.ndarray, alphabet: int) -> bytearray:
    return bytearray(huffman_encode(x, alphabet))


X = np.array([0, 0, 0, 0, 1, 1, 2, 3] * 8)


@pytest.mark.parametrize(("edit", "count", "match"), [
    (lambda b: b[:-1], len(X), "ends"),  # truncated
    (lambda b: b[:1], len(X), "header"),  # no whole header
    (lambda b: b + b"\0", len(X), "unused byte"),  # trailing garbage
    (lambda b: b, len(X) + 4, "ends"),  # more symbols than coded
    (lambda b: b, 10 ** 12, "cannot hold"),  # oversize count: refused before allocating
    (lambda b: b, -1, "count"),
    (lambda b: bytes([0xFF]) + b[1:], len(X), "lengths"),  # a code length of 31 bits
    (lambda b: bytes([0x21, 0x84]) + b[2:], len(X), "prefix code"),  # lengths 1,1,1,1
    (lambda b: bytes([0, 0, 0]) + b[3:], len(X), "no code"),  # no lengths at all
])
def test_malformed_streams_are_refused(edit, count, match) -> None:
    payload = bytes(edit(_stream(X, 4)))
    with pytest.raises(HuffmanError, match=match):
        huffman_decode(payload, 4, count)


def test_a_bit_pattern_no_code_starts_is_refused() -> None:
    # lengths a:1, b:2 only (an incomplete code): the pattern 11 starts no code
    header = pack_bits(torch.tensor([1, 2, 0, 0], dtype=torch.uint8), 5).numpy().tobytes()
    assert huffman_decode(header + bytes([0b01000000]), 4, 2).tolist() == [0, 1]  # 0, 10
    with pytest.raises(HuffmanError, match="starts no code"):
        huffman_decode(header + bytes([0b01100000]), 4, 2)  # 0, then 11


def test_gap_positions_round_trip() -> None:
    rng = np.random.default_rng(0)
    for density in (0.0, 0.001, 0.1, 0.9, 1.0):
        mask = rng.random(3000) < density
        gaps = mask_to_gaps(mask)
        assert gaps.max(initial=0) < GAP_ALPHABET
        assert np.array_equal(gaps_to_mask(gaps, mask.size), mask)
    with pytest.raises(HuffmanError, match="covers"):
        gaps_to_mask(np.array([5, 5]), 10)  # points past the end
    with pytest.raises(HuffmanError, match="covers"):
        gaps_to_mask(np.array([0]), 400)  # 399 positions unaccounted for


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=64), alphabet=st.sampled_from([2, 4, 16, 256]),
       count=st.integers(min_value=0, max_value=600))
def test_fuzz_decoder_returns_count_symbols_or_refuses(data: bytes, alphabet: int,
                                                       count: int) -> None:
    try:
        out = huffman_decode(data, alphabet, count)
    except HuffmanError:
        return
    assert out.shape == (count,) and (out.size == 0 or 0 <= out.min() <= out.max() < alphabet)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=15), max_size=300))
def test_fuzz_round_trip(symbols: list[int]) -> None:
    x = np.array(symbols, dtype=np.int64)
    assert np.array_equal(huffman_decode(huffman_encode(x, 16), 16, x.size), x)
