"""Bit packing of skip masks and codebook indices (:mod:`velcro.sw.export.bits`)."""

import numpy as np
import pytest

from velcro.sw.errors import VQError
from velcro.sw.export.bits import (
    index_run_bytes,
    pack_indices,
    pack_mask,
    unpack_indices,
    unpack_mask,
)


def test_mask_bits_are_lsb_first_in_c_order():
    mask = np.zeros((2, 3, 3), dtype=bool)
    mask[0, 0, 1] = True          # element 1 -> byte 0, bit 1
    mask[0, 2, 2] = True          # element 8 -> byte 1, bit 0
    mask[1, 2, 2] = True          # element 17 -> byte 2, bit 1
    packed = pack_mask(mask)
    assert packed.dtype == np.uint8
    assert packed.tolist() == [0b10, 0b1, 0b10]
    np.testing.assert_array_equal(unpack_mask(packed, mask.shape), mask)


def test_pack_layout_is_segment_major_little_endian():
    # segment 0 holds 1, 2, 5 -> bits 100 010 101 -> bytes 0b01010001, 0b00000001;
    # segment 1 holds 7, 0, 3 -> bits 111 000 110 -> bytes 0b11000111, 0b00000000
    indices = np.array([[1, 7], [2, 0], [5, 3]])
    np.testing.assert_array_equal(pack_indices(indices, 3), [0b01010001, 1, 0b11000111, 0])


@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_unpack_round_trip(rng, bits):
    indices = rng.integers(0, 1 << bits, (37, 5))
    packed = pack_indices(indices, bits)
    assert packed.dtype == np.uint8 and packed.size == 5 * -(-37 * bits // 8)
    out = unpack_indices(packed, bits, 37, 5)
    np.testing.assert_array_equal(out, indices)
    assert out.dtype == (np.uint8 if bits <= 8 else np.uint16)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 11, 16])
@pytest.mark.parametrize("n_out, n_seg", [(1, 1), (7, 3), (64, 2), (13, 5)])
def test_indices_unpack_as_vq_packs_them(rng, bits, n_out, n_seg):
    indices = rng.integers(0, 1 << bits, (n_out, n_seg))
    packed = pack_indices(indices, bits)
    assert packed.shape == (n_seg * index_run_bytes(n_out, bits),)
    np.testing.assert_array_equal(unpack_indices(packed, bits, n_out, n_seg), indices)


def test_pack_rejects_indices_wider_than_the_bits():
    with pytest.raises(VQError, match="indices must lie in \\[0, 7\\] for 3 bits, not \\[0, 8\\]"):
        pack_indices(np.array([[0, 8]]), 3)
    with pytest.raises(VQError, match="must be 4 uint8 bytes"):
        unpack_indices(np.zeros(3, dtype=np.uint8), 3, 3, 2)
