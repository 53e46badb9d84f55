"""The conv array's cost model on cases small enough to count by hand."""

import numpy as np
import pytest

from velcro.hw.conv.array import pipeline_latency
from velcro.hw.conv.config import SHIPPED, ConvArrayConfig, ConvConfigError, ConvLayer
from velcro.hw.conv.cost import (
    block_counts,
    expected_cycles,
    expected_mac_cycles,
    ideal_mac_cycles,
    resource_estimate,
)

P = pipeline_latency(SHIPPED)
ONE = ConvArrayConfig(slots=1)       # the shipped array with one element per cycle


def test_pipeline_latency_of_the_shipped_array():
    # route 1, lane 3, tree 2 (16 lanes: 4 adder levels), accumulate 1, requantize 3
    assert P == 10


def test_one_channel_one_block_costs_kernel_load_plus_elements_plus_pipeline():
    layer = ConvLayer(16, 1, 3, 3)
    # G = 1 kernel beat (cycle 1), first block loaded in cycle 2, its 9 elements (two a
    # cycle on the shipped array: 5 cycles), pipeline, and the cycle that sees the
    # writes done.
    assert expected_cycles(layer, None, ONE) == 1 + 1 + 9 + P + 1
    assert expected_cycles(layer, None, SHIPPED) == 1 + 1 + 5 + P + 1


def test_groups_multiply_element_cost():
    layer = ConvLayer(40, 1, 3, 3)              # G = 3
    assert expected_cycles(layer, None, ONE) == 3 + 1 + 9 * 3 + P + 1
    assert expected_mac_cycles(layer, None, ONE) == 27
    assert expected_cycles(layer, None, SHIPPED) == 3 + 1 + 5 * 3 + P + 1
    assert expected_mac_cycles(layer, None, SHIPPED) == 15


def test_pairs_are_counted_per_block():
    layer = ConvLayer(16, 2, 3, 6)              # two blocks per channel
    mask = np.zeros((2, 3, 6), bool)
    mask[0, 0, :2] = True                       # 7 and 9 computed: 4 + 5 pairs
    mask[1, :, 3:] = True
    mask[1, 0, 0] = True                        # 8 computed and a void block: 4 pairs
    assert expected_mac_cycles(layer, mask, SHIPPED) == 4 + 5 + 4
    assert expected_mac_cycles(layer, mask, ONE) == 7 + 9 + 8


def test_a_void_block_costs_no_cycle_behind_a_computed_one_and_one_in_front():
    layer = ConvLayer(16, 1, 6, 6)              # four blocks
    for config, per_block in ((ONE, 9), (SHIPPED, 5)):
        mask = np.zeros((1, 6, 6), bool)
        mask[0, :3, 3:] = True                  # block (0, 1) skipped: passed on in cycle
        assert expected_cycles(layer, mask, config) == 1 + 1 + 3 * per_block + P + 1
        assert expected_mac_cycles(layer, mask, config) == 3 * per_block   # under (0, 0)
        mask = np.zeros((1, 6, 6), bool)
        mask[0, :3, :3] = True                  # block (0, 0): nothing to pass it under
        assert expected_cycles(layer, mask, config) == 1 + 1 + (1 + 3 * per_block) + P + 1
        assert expected_mac_cycles(layer, mask, config) == 3 * per_block


def test_a_block_whose_beat_is_not_void_costs_a_cycle_even_with_nothing_to_compute():
    layer = ConvLayer(16, 1, 4, 4)              # blocks of 9, 3, 3, 1 elements
    mask = np.ones((1, 4, 4), bool)
    # As packed, all four are void: taken in cycles 2-5, written from cycle 4 on.
    assert expected_cycles(layer, mask, SHIPPED) == 8
    # Beats that leave the bits beyond the map clear: a cycle each, through the pipeline.
    assert expected_cycles(layer, mask, SHIPPED, void=np.zeros((1, 2, 2), bool)) == \
        2 + 4 + P + 1
    with pytest.raises(ValueError, match="void must mark blocks without computed"):
        expected_cycles(layer, None, SHIPPED, void=np.ones((1, 2, 2), bool))


def test_elements_outside_the_map_cost_nothing():
    layer = ConvLayer(16, 1, 4, 4)              # blocks of 9, 3, 3, 1 elements
    np.testing.assert_array_equal(block_counts(layer)[0], [[9, 3], [3, 1]])
    assert expected_cycles(layer, None, ONE) == 2 + 16 + P + 1
    assert expected_cycles(layer, None, SHIPPED) == 2 + (5 + 2 + 2 + 1) + P + 1


def test_short_channels_wait_for_their_kernels():
    # Every block void: a channel takes one cycle, but its G = 4 kernel beats take
    # four, and a half is reloaded only after the channel two before has finished.
    layer = ConvLayer(64, 3, 3, 3)
    mask = np.ones((3, 3, 3), bool)
    # kernels: ch0 beats 1-4, ch1 5-8; ch0's block is taken in cycle 5, which frees
    # half 0, ch1's in 9; ch2 beats 9-12, its block taken in 13 and written in 15 (void
    # blocks skip the pipeline, through a buffered FIFO), the cycle after ends the
    # operation.
    assert expected_cycles(layer, mask, SHIPPED) == 16


def test_cycles_fall_with_the_skipped_fraction(rng):
    layer = ConvLayer(16, 16, 63, 63)           # whole blocks only
    full = expected_cycles(layer, None, ONE)
    assert ideal_mac_cycles(layer, ONE) / full > 0.999
    for ratio in (0.25, 0.5, 0.9):
        mask = rng.random((16, 63, 63)) < ratio
        # Computed elements cost a cycle each, (1 - r) of them; a void block (r ** 9 of
        # them) costs at most one, and none when it passes under a longer block.
        cycles = expected_cycles(layer, mask, ONE)
        assert cycles / full == pytest.approx(1 - ratio, abs=0.04)
        macs = expected_mac_cycles(layer, mask, ONE)
        voids = int((block_counts(layer, mask) == 0).sum())
        overhead = full - expected_mac_cycles(layer, None, ONE)
        assert macs < cycles <= macs + voids + overhead
        if ratio == 0.9:       # many voids; behind blocks of one element they still cost
            assert voids > 1000 and cycles < macs + voids


def test_two_slots_halve_the_cycles_but_for_odd_blocks(rng):
    layer = ConvLayer(16, 16, 63, 63)
    full = expected_cycles(layer, None, SHIPPED)
    # A block of 9 takes 5 cycles: 9 / 10 of the 288 products a cycle are used.
    assert ideal_mac_cycles(layer, SHIPPED) / full == pytest.approx(0.9, abs=0.001)
    for ratio in (0.25, 0.5, 0.9):
        mask = rng.random((16, 63, 63)) < ratio
        counts = block_counts(layer, mask)
        pairs = int(((counts + 1) // 2).sum())
        assert expected_mac_cycles(layer, mask, SHIPPED) == pairs
        cycles = expected_cycles(layer, mask, SHIPPED)
        overhead = full - expected_mac_cycles(layer, None, SHIPPED)
        assert pairs < cycles <= pairs + int((counts == 0).sum()) + overhead
        # Halved where blocks hold many computed elements; at 90 % most hold one or none.
        assert cycles < (0.6 if ratio <= 0.5 else 0.9) * expected_cycles(layer, mask, ONE)


def test_mask_shape_is_checked():
    with pytest.raises(ValueError, match="mask must be bool"):
        expected_cycles(ConvLayer(1, 2, 4, 4), np.zeros((2, 4, 4), int), SHIPPED)


def test_layer_must_fit_the_configuration():
    with pytest.raises(ConvConfigError, match="c_in 20 exceeds"):
        expected_cycles(ConvLayer(20, 1, 4, 4), None, ConvArrayConfig(max_channels=16))


def test_resources_by_construction():
    figures = resource_estimate(SHIPPED)
    assert figures["multipliers"] == 16 * 9 + 2     # and a requantizer per slot
    # 9 banks x 4096 words x 16 lanes x 8 bits: two buffers of 64 planes of 22 x 22 words
    # rounded up to 512, that is 144 RAMB36 of 4096 x 8 (+ parity unused), and a copy of
    # them for the second slot's window.
    assert figures["buffer_bits"] == 2 * 144 * 4096 * 8
    assert resource_estimate(ONE)["buffer_bits"] == 144 * 4096 * 8
