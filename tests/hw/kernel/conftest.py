"""Set-up shared by the tests of the kernel's own units in Amaranth's simulator."""

import pytest
from amaranth.sim import Simulator

from velcro.hw.conv.config import ConvArrayConfig


def _simulate(dut, bench, *, clock=1e-8):
    sim = Simulator(dut)
    sim.add_clock(clock)
    sim.add_testbench(bench)
    sim.run()


def _run_stream_unit(dut, beats, *, collect, rng, max_cycles=5000):
    """Offer ``beats`` on ``dut.i`` with random idle cycles; ``collect(ctx)`` each cycle."""
    async def bench(ctx):
        sent = 0
        for _ in range(max_cycles):
            offer = sent < len(beats) and rng.random() < 0.7
            ctx.set(dut.i.valid, offer)
            if offer:
                ctx.set(dut.i.payload.as_value(), beats[sent])
            collect(ctx)
            if offer and ctx.get(dut.i.ready):
                sent += 1
            await ctx.tick()
            if sent == len(beats) and not ctx.get(dut.busy):
                break
        assert sent == len(beats) and not ctx.get(dut.busy)
    return bench


@pytest.fixture
def simulate():
    """``simulate(dut, bench)``: run an async testbench on ``dut`` with one clock."""
    return _simulate


@pytest.fixture
def run_stream_unit():
    """Testbench factory feeding a stream unit's input with random idle cycles."""
    return _run_stream_unit


@pytest.fixture
def small_array():
    """A conv array small enough for Amaranth's simulator: 4 lanes, 9x9, 10 channels."""
    return ConvArrayConfig(lanes=4, max_height=9, max_width=9, max_channels=10)
