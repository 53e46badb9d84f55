"""cocotb bench of a stream FIFO: pins :mod:`velcro.sim.runner` and :mod:`velcro.sim.streams`.

The design under test is any component with a stream input ``i`` and a stream output
``o`` that passes beats through unchanged (``tests/sim/test_runner.py`` uses
``amaranth.lib.fifo.SyncFIFOBuffered``). The payload lists the beats and the idle and
back-pressure probabilities; the result reports what arrived and the cycle count.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from . import runner
from .streams import Clocked, StreamSink, StreamSource


@cocotb.test()
async def pass_through(dut):
    """Every beat sent arrives once, in order; the cycle count comes back to the caller."""
    payload = runner.load_payload()
    rng = random.Random(payload.get("seed", 0))
    Clock(dut.clk, 10, unit="ns").start(start_high=False)
    dut.rst.value = 1
    source = StreamSource(dut, "i", idle=payload["idle"], rng=rng)
    sink = StreamSink(dut, "o", backpressure=payload["backpressure"], rng=rng)
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    beats = payload["beats"]
    source.send(beats)
    loop = Clocked(dut.clk, [source, sink])
    cycles = await loop.run(lambda: len(sink.beats) == len(beats), 100 * len(beats) + 100,
                            "all beats out")
    assert sink.beats == beats, "beats reordered, lost or corrupted"
    runner.save_result({"received": sink.beats, "cycles": cycles,
                        "idle_cycles": source.idle_cycles, "stall_cycles": sink.stall_cycles})
