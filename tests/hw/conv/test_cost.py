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


def test_pipeline_latency_of_the_shipped_array():
    # route 1, lane 3, tree 2 (16 lanes: 4 adder levels), accumulate 1, requantize 3
    assert P == 10


def test_one_channel_one_block_costs_kernel_load_plus_elements_plus_pipeline():
    layer = ConvLayer(16, 1, 3, 3)
    # G = 1 kernel beat (cycle 1), first block loaded in cycle 2, 9 elements, pipeline.
    assert expected_cycles(layer, None, SHIPPED) == 1 + 1 + 9 + P


def test_groups_multiply_element_cost():
    layer = ConvLayer(40, 1, 3, 3)              # G = 3
    assert expected_cycles(layer, None, SHIPPED) == 3 + 1 + 9 * 3 + P
    assert expected_mac_cycles(layer, None, SHIPPED) == 27


def test_a_fully_skipped_block_costs_one_cycle():
    layer = ConvLayer(16, 1, 6, 6)              # four blocks
    mask = np.zeros((1, 6, 6), bool)
    mask[0, :3, :3] = True                      # block (0, 0) skipped
    assert expected_cycles(layer, mask, SHIPPED) == 1 + 1 + (1 + 27) + P
    assert expected_mac_cycles(layer, mask, SHIPPED) == 27


def test_elements_outside_the_map_cost_nothing():
    layer = ConvLayer(16, 1, 4, 4)              # blocks of 9, 3, 3, 1 elements
    np.testing.assert_array_equal(block_counts(layer)[0], [[9, 3], [3, 1]])
    assert expected_cycles(layer, None, SHIPPED) == 2 + 16 + P


def test_short_channels_wait_for_their_kernels():
    # Every block skipped: a channel takes one cycle, but its G = 4 kernel beats take
    # four, and a half is reloaded only after the channel two before has finished.
    layer = ConvLayer(64, 3, 3, 3)
    mask = np.ones((3, 3, 3), bool)
    # kernels: ch0 beats 1-4, ch1 5-8; ch0 runs in cycle 6 (loaded in 5), ch1 in 10
    # (loaded in 9); half 0 is freed in cycle 6, ch2 beats 9-12, ch2 runs in cycle 14.
    assert expected_cycles(layer, mask, SHIPPED) == 14 + P


def test_cycles_fall_with_the_skipped_fraction(rng):
    layer = ConvLayer(16, 16, 63, 63)           # whole blocks only
    full = expected_cycles(layer, None, SHIPPED)
    assert ideal_mac_cycles(layer, SHIPPED) / full > 0.999
    for ratio in (0.25, 0.5, 0.9):
        mask = rng.random((16, 63, 63)) < ratio
        # A block costs max(1, computed elements): E = 9 (1 - r) + r ** 9 per 9 elements.
        floor = (1 - ratio) + ratio ** 9 / 9
        assert expected_cycles(layer, mask, SHIPPED) / full == pytest.approx(floor, abs=0.005)


def test_mask_shape_is_checked():
    with pytest.raises(ValueError, match="mask must be bool"):
        expected_cycles(ConvLayer(1, 2, 4, 4), np.zeros((2, 4, 4), int), SHIPPED)


def test_layer_must_fit_the_configuration():
    with pytest.raises(ConvConfigError, match="c_in 20 exceeds"):
        expected_cycles(ConvLayer(20, 1, 4, 4), None, ConvArrayConfig(max_channels=16))


def test_resources_by_construction():
    figures = resource_estimate(SHIPPED)
    assert figures["multipliers"] == 16 * 9 + 1
    # 9 banks x 4096 words x 16 lanes x 8 bits: two buffers of 64 planes of 22 x 22 words
    # rounded up to 512, that is 144 RAMB36 of 4096 x 8 (+ parity unused).
    assert figures["buffer_bits"] == 144 * 4096 * 8
