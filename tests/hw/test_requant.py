"""The pipelined requantizer against velcro.sw.golden.requantize (Amaranth simulator)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from velcro.hw.requant import Requantizer
from velcro.sw import golden


def operands(rng, n):
    edges = [(golden.ACC_MAX, 0xFFFF, 0), (golden.ACC_MIN, 0xFFFF, 0), (golden.ACC_MIN, 1, 31),
             (golden.ACC_MAX, 0xFFFF, 31), (-1, 1, 1), (1, 1, 1), (-3, 1, 1), (0, 0, 0),
             (255, 1, 1), (-257, 1, 1), (127, 1, 0), (128, 1, 0), (-129, 1, 0)]
    acc = np.concatenate([[e[0] for e in edges], rng.integers(golden.ACC_MIN, golden.ACC_MAX,
                                                               n, endpoint=True)])
    mult = np.concatenate([[e[1] for e in edges], rng.integers(0, 1 << 16, n)])
    shift = np.concatenate([[e[2] for e in edges], rng.integers(0, 32, n)])
    # Random accumulators mostly saturate; also use small ones so rounding is exercised.
    small = rng.random(len(acc)) < 0.5
    acc[small] = rng.integers(-(1 << 20), 1 << 20, small.sum())
    return acc.astype(np.int64), mult.astype(np.int64), shift.astype(np.int64)


@pytest.mark.parametrize("relu", [True, False])
def test_matches_golden_one_result_per_cycle(relu, rng):
    acc, mult, shift = operands(rng, 400)
    expected = [int(golden.requantize(np.array([a]), np.array([m]), np.array([s]), relu)[0])
                for a, m, s in zip(acc, mult, shift, strict=True)]
    dut = Requantizer()
    got = []

    async def bench(ctx):
        ctx.set(dut.relu, relu)
        for n in range(len(acc) + Requantizer.LATENCY):
            if n < len(acc):
                ctx.set(dut.acc, int(acc[n]))
                ctx.set(dut.mult, int(mult[n]))
                ctx.set(dut.shift, int(shift[n]))
            await ctx.tick()
            if n >= Requantizer.LATENCY - 1 and len(got) < len(acc):
                got.append(ctx.get(dut.y))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == expected
