"""Sequential reading of an on-chip buffer as a stream.

The kernel keeps tensors between engines in on-chip memories (the pooled map on its
way back into the conv array, the dense engine's activations). A
:class:`BufferReader` reads ``count`` consecutive words from ``base`` through a
synchronous read port and offers them as a stream, one per cycle for as long as the
consumer takes them: it keeps up to three words in reads and a small FIFO, so a
stall of the consumer never loses a word and never costs more than itself.
"""

from __future__ import annotations

from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["BufferReader"]


class BufferReader(wiring.Component):
    """``count`` words from ``base`` of a memory, streamed.

    Parameters
    ----------
    shape : shape or layout
        A memory word.
    depth : int
        Words of the memory.

    Attributes
    ----------
    start : In(1)
        Begin (``base`` and ``count`` sampled).
    base, count : In
    read : Out(struct: addr), In data
        To the memory's synchronous read port: ``read.addr`` out, ``data`` in.
    data : In(shape)
    o : Out(stream of shape)
    busy : Out(1)
    """

    #: Cycles from ``start`` to the first word offered.
    LATENCY = 3

    def __init__(self, shape, depth: int):
        self.shape = shape
        self.depth = depth
        super().__init__({
            "start": In(1),
            "base": In(range(depth)),
            "count": In(range(depth + 1)),
            "read": Out(data.StructLayout({"addr": range(depth)})),
            "data": In(shape),
            "o": Out(stream.Signature(shape)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        width = Shape.cast(self.shape).width
        m.submodules.fifo = buf = fifo.SyncFIFO(width=width, depth=3)
        remaining = Signal.like(self.count)
        addr = Signal.like(self.base)
        inflight = Signal()
        issue = Signal()
        m.d.comb += issue.eq((remaining != 0) & (buf.level + inflight < buf.depth))
        m.d.sync += inflight.eq(issue)
        with m.If(self.start):
            m.d.sync += [remaining.eq(self.count), addr.eq(self.base), inflight.eq(0)]
        with m.Elif(issue):
            m.d.sync += [remaining.eq(remaining - 1), addr.eq(addr + 1)]
        m.d.comb += [
            self.read.addr.eq(addr),
            buf.w_en.eq(inflight), buf.w_data.eq(self.data),
            self.o.valid.eq(buf.r_rdy), self.o.payload.eq(buf.r_data),
            buf.r_en.eq(self.o.ready),
            self.busy.eq((remaining != 0) | inflight | buf.r_rdy),
        ]
        return m
