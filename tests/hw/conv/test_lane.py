# amaranth: UnusedElaboratable=no
"""A conv lane's two windows against numpy: both products of a tap come out of one
packed multiplication (Amaranth simulator)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from velcro.hw.conv.format import TAPS
from velcro.hw.conv.lane import ConvLane


def windows(rng, n):
    """Random windows, and windows of the extremes in every sign combination."""
    acts = rng.integers(-128, 128, (n, 2, TAPS))
    extremes = np.array([-128, 127, -1, 0, 1])
    for a in extremes:
        for b in extremes:
            acts = np.concatenate([acts, np.full((1, 2, TAPS), [[a], [b]])])
    return acts


@pytest.mark.parametrize("kernel", [[-128] * TAPS, [127] * TAPS, [-128, 127, -1, 0, 1, 2, -2,
                                                                   64, -64], None])
@pytest.mark.parametrize("slots", [1, 2])
def test_sums_of_both_windows_are_exact(kernel, slots, rng):
    kernel = rng.integers(-128, 128, TAPS) if kernel is None else np.array(kernel)
    acts = windows(rng, 60)
    dut = ConvLane(kernel_slots=2, slots=slots)
    got = []

    async def bench(ctx):
        ctx.set(dut.w_en, 1)
        ctx.set(dut.w_addr, 1)
        for k in range(TAPS):
            ctx.set(dut.w_data[k], int(kernel[k]))
        await ctx.tick()
        ctx.set(dut.w_en, 0)
        ctx.set(dut.rd_addr, 1)
        await ctx.tick()           # the kernel is read in the issue cycle before the window
        for n in range(len(acts) + ConvLane.LATENCY):
            if n < len(acts):
                for s in range(slots):
                    for k in range(TAPS):
                        ctx.set(dut.act[s][k], int(acts[n, s, k]))
            await ctx.tick()
            if n >= ConvLane.LATENCY - 1 and len(got) < len(acts):
                got.append([ctx.get(dut.sum[s]) for s in range(slots)])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    expected = (acts[:, :slots, :] * kernel).sum(axis=2)
    np.testing.assert_array_equal(np.array(got), expected)


def test_slots_are_checked():
    with pytest.raises(ValueError, match="slots must be 1 or 2"):
        ConvLane(2, slots=3)
