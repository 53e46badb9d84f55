"""Stream packers of the conv array against Amaranth's own packing of the layouts."""

import numpy as np
import pytest
from amaranth.hdl import Const

from velcro.hw.conv.format import (
    MASK_LAYOUT,
    REQUANT_LAYOUT,
    activations_layout,
    pack_activations,
    pack_mask,
    pack_requant,
    pack_weights,
    unpack_activations,
    weights_layout,
)


def layout_bits(layout, value) -> int:
    return Const.cast(layout.const(value)).value


@pytest.mark.parametrize("lanes", [1, 4, 16])
def test_activation_beats_follow_the_layout_in_group_y_x_order(lanes, rng):
    x = rng.integers(-128, 128, (lanes + 3, 2, 3)).astype(np.int8)
    beats = pack_activations(x, lanes)
    groups = -(-(lanes + 3) // lanes)
    assert len(beats) == groups * 2 * 3
    layout = activations_layout(lanes)
    n = 0
    for g in range(groups):
        for y in range(2):
            for xx in range(3):
                lanes_values = [int(x[g * lanes + l, y, xx]) if g * lanes + l < len(x) else 0
                                for l in range(lanes)]
                assert beats[n] == layout_bits(layout, lanes_values)
                n += 1


@pytest.mark.parametrize("lanes", [1, 3, 16])
def test_activations_round_trip(lanes, rng):
    x = rng.integers(-128, 128, (7, 5, 4)).astype(np.int8)
    np.testing.assert_array_equal(unpack_activations(pack_activations(x, lanes), 7, 5, 4, lanes), x)


def test_unpack_checks_the_beat_count():
    with pytest.raises(ValueError, match="takes 2 beats, got 3"):
        unpack_activations([0, 0, 0], 1, 1, 2, 4)


def test_weight_beats_carry_nine_taps_per_lane(rng):
    lanes = 4
    w = rng.integers(-128, 128, (2, 6, 3, 3)).astype(np.int8)
    beats = pack_weights(w, lanes)
    layout = weights_layout(lanes)
    assert len(beats) == 2 * 2
    for o in range(2):
        for g in range(2):
            taps = [[int(w[o, g * lanes + l].reshape(9)[t]) if g * lanes + l < 6 else 0
                     for t in range(9)] for l in range(lanes)]
            assert beats[o * 2 + g] == layout_bits(layout, taps)


def test_requant_beats(rng):
    bias = np.array([-(1 << 31), (1 << 31) - 1, -5])
    mult = np.array([0, 65535, 1234])
    shift = np.array([0, 31, 17])
    for beat, b, m, s in zip(pack_requant(bias, mult, shift), bias, mult, shift, strict=True):
        assert beat == layout_bits(REQUANT_LAYOUT, {"bias": int(b), "mult": int(m),
                                                    "shift": int(s)})


def test_mask_beats_cover_3x3_blocks_and_mark_outside_elements_skipped(rng):
    mask = rng.random((2, 4, 5)) < 0.5
    mask[1, :3, :3] = True                # a whole block: void
    mask[1, 3:, 3:] = True                # the inside of an edge block: void too
    mean = rng.integers(-128, 128, (2, 4, 5)).astype(np.int8)
    beats = pack_mask(mask, mean)
    void = MASK_LAYOUT["void"].offset
    assert [b >> void & 1 for b in beats[4:]] == [1, int(mask[1, :3, 3:].all()),
                                                  int(mask[1, 3:, :3].all()), 1]
    assert len(beats) == 2 * 2 * 2        # channels x block rows x block columns
    n = 0
    for c in range(2):
        for br in range(2):
            for bc in range(2):
                skip, means = 0, []
                for k in range(9):
                    y, x = 3 * br + k // 3, 3 * bc + k % 3
                    inside = y < 4 and x < 5
                    skip |= int(not inside or mask[c, y, x]) << k
                    means.append(int(mean[c, y, x]) if inside else 0)
                assert beats[n] == layout_bits(MASK_LAYOUT, {"skip": skip, "mean": means,
                                                             "void": int(skip == 511)})
                n += 1
