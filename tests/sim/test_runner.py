"""The shared simulation runner and stream drivers, on a stream FIFO."""

import pytest
from amaranth import Module
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from velcro.sim import runner


class StreamFifo(wiring.Component):
    """``SyncFIFOBuffered`` behind stream ports ``i`` and ``o``."""

    def __init__(self, width: int, depth: int):
        self.width, self.depth = width, depth
        super().__init__({"i": In(stream.Signature(width)), "o": Out(stream.Signature(width))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=self.width, depth=self.depth)
        wiring.connect(m, wiring.flipped(self.i), q.w_stream)
        wiring.connect(m, q.r_stream, wiring.flipped(self.o))
        return m


@pytest.mark.parametrize("simulator", runner.SIMULATORS)
def test_beats_pass_once_in_order_under_idle_and_backpressure(simulator):
    model = runner.build("stream_fifo-w72", lambda: StreamFifo(72, 4), simulator=simulator)
    beats = [(i * 0x9E3779B97F4A7C15) % (1 << 72) for i in range(300)]
    result = model.run("velcro.sim.fifo_bench",
                       {"beats": beats, "idle": 0.3, "backpressure": 0.3, "seed": 5})
    assert result["received"] == beats
    assert result["idle_cycles"] > 0 and result["stall_cycles"] > 0


@pytest.mark.parametrize("simulator", runner.SIMULATORS)
def test_full_rate_without_stalls(simulator):
    """One beat per cycle once the pipeline is full: the sampling scheme loses no cycle."""
    model = runner.build("stream_fifo-w72", lambda: StreamFifo(72, 4), simulator=simulator)
    beats = list(range(200))
    result = model.run("velcro.sim.fifo_bench", {"beats": beats, "idle": 0.0,
                                                 "backpressure": 0.0})
    assert result["received"] == beats
    assert len(beats) <= result["cycles"] <= len(beats) + 4


def test_build_is_reused_within_a_session():
    first = runner.build("stream_fifo-w72", lambda: StreamFifo(72, 4), simulator="icarus")
    again = runner.build("stream_fifo-w72", lambda: pytest.fail("rebuilt"), simulator="icarus")
    assert again is first


def test_failing_bench_raises_with_the_assertion_text():
    model = runner.build("stream_fifo-w72", lambda: StreamFifo(72, 4), simulator="icarus")
    with pytest.raises(runner.SimulationError, match="pass_through"):
        # The bench demands every beat in order; a payload of the wrong type fails it.
        model.run("velcro.sim.fifo_bench", {"beats": None, "idle": 0, "backpressure": 0})


def test_unknown_simulator_is_named():
    with pytest.raises(ValueError, match="'ghdl'"):
        runner.build("x", lambda: None, simulator="ghdl")
