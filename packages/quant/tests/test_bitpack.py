"""Bit packing at the real width, and base-3 packing of ternary codes."""

import pytest
import torch

from netshrink.quant import (
    pack_bits,
    pack_codes,
    pack_trits,
    unpack_bits,
    unpack_codes,
    unpack_trits,
)
from netshrink.quant.bitpack import packed_nbytes


def test_hand_computed_bytes():
    codes = torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8)
    # 2 bits each, little-endian: 1 | 2<<2 | 3<<4 | 0<<6 = 57; then 3
    assert pack_bits(codes, 2).tolist() == [57, 3]
    assert pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.uint8), 1).tolist() \
        == [13, 1]
    assert pack_bits(torch.tensor([5, 6, 7], dtype=torch.uint8), 3).tolist() == [245, 1]
    # base 3: 2 + 1*3 + 0*9 + 0*27 + 1*81 = 86
    assert pack_trits(torch.tensor([2, 1, 0, 0, 1, 2], dtype=torch.uint8)).tolist() == [86, 2]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_round_trip_and_size(bits, n):
    codes = torch.randint(0, 2 ** bits, (n,), dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, n), codes)


@pytest.mark.parametrize("n", [0, 1, 4, 5, 6, 1003])
def test_trits_round_trip_and_size(n):
    codes = torch.randint(0, 3, (n,), dtype=torch.uint8)
    packed = pack_codes(codes, 1.6)
    assert packed.numel() == -(-n // 5) == packed_nbytes(n, 1.6)
    assert int(packed.max()) <= 242 if n else True
    assert torch.equal(unpack_codes(packed, 1.6, n), codes)
    assert torch.equal(unpack_trits(packed, n), codes)


def test_bad_inputs():
    with pytest.raises(ValueError, match="below 4"):
        pack_bits(torch.tensor([4], dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="below 3"):
        pack_trits(torch.tensor([3], dtype=torch.uint8))
    with pytest.raises(ValueError, match="bits=0"):
        pack_bits(torch.tensor([0], dtype=torch.uint8), 0)
    with pytest.raises(ValueError, match="uint8"):
        pack_bits(torch.tensor([1]), 2)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 2, 5)
    with pytest.raises(ValueError, match="max 242"):
        unpack_trits(torch.tensor([250], dtype=torch.uint8), 5)
