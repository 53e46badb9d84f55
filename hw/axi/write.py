"""An AXI4 write DMA: one word stream written to consecutive addresses.

A command gives a byte address and a number of data-width words; the words arrive on
``data`` and go through a FIFO. A burst (ending on a multiple of ``max_burst`` words,
so never across a 4 KiB page) is requested only once the FIFO holds all of its
words, so its write data never waits on the producer and a burst that was requested
is always completed, even while flushing. One burst's data is sent at a time;
responses may lag behind. A response other than ``OKAY`` sets ``error`` (sticky
until ``clear``).

``busy`` stays high until every word of the command has been written and
acknowledged. ``flush`` drops the rest of a command: bursts already requested are
finished and their responses collected, then the FIFO is emptied; ``idle`` says no
burst is in flight.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, ResetInserter, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .bus import axi4_write_signature, burst_words, drive_fixed
from .read import COMMAND

__all__ = ["WriteDma"]


class WriteDma(wiring.Component):
    """AXI4 writes of one word stream.

    Parameters
    ----------
    data_width : int
    depth : int
        FIFO words (at least ``max_burst``).
    max_burst : int
    max_outstanding : int
        Bursts whose response has not arrived, at most.

    Attributes
    ----------
    axi : Out(axi4_write_signature)
    cmd : In(stream of COMMAND)
    data : In(stream of data_width)
    busy, idle, error : Out(1)
    flush, clear : In(1)
    """

    def __init__(self, *, data_width: int, depth: int = 32, max_burst: int = 16,
                 max_outstanding: int = 4):
        exact_log2(max_burst)
        if depth < max_burst:
            raise ValueError(f"depth must be at least max_burst = {max_burst}, not {depth!r}")
        if max_burst * data_width // 8 > 4096:
            raise ValueError(f"bursts of {max_burst} words of {data_width} bits cross 4 KiB "
                             "pages")
        self.data_width = data_width
        self.depth = depth
        self.max_burst = max_burst
        self.max_outstanding = max_outstanding
        super().__init__({
            "axi": Out(axi4_write_signature(data_width=data_width)),
            "cmd": In(stream.Signature(COMMAND)),
            "data": In(stream.Signature(data_width)),
            "busy": Out(1), "idle": Out(1), "error": Out(1),
            "flush": In(1), "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        word_shift = exact_log2(self.data_width // 8)
        drive_fixed(m, axi)
        m.d.comb += [axi.awsize.eq(word_shift),
                     axi.wstrb.eq(Const(-1, self.data_width // 8))]

        remaining = Signal(32)
        more = Signal()                 # remaining != 0, registered
        addr = Signal(64)
        aw_pending = Signal()
        w_left = Signal(range(self.max_burst + 1))
        outstanding = Signal(range(self.max_outstanding + 1))

        # The FIFO is emptied only when no requested burst still needs its data.
        empty_fifo = Signal()
        m.submodules.fifo = buf = ResetInserter(empty_fifo)(
            fifo.SyncFIFOBuffered(width=self.data_width, depth=self.depth))
        m.d.comb += [buf.w_data.eq(self.data.payload),
                     buf.w_en.eq(self.data.valid & ~self.flush),
                     self.data.ready.eq(buf.w_rdy & ~self.flush)]

        m.d.comb += self.cmd.ready.eq(~more & ~self.flush)
        burst = Signal(range(self.max_burst + 1))
        m.d.comb += burst.eq(burst_words(remaining, addr, max_burst=self.max_burst,
                                         word_bytes=self.data_width // 8))
        issue = Signal()
        m.d.comb += issue.eq(more & ~aw_pending & (w_left == 0) &
                             (buf.level >= burst) & (outstanding < self.max_outstanding) &
                             ~self.flush)

        m.d.comb += [axi.awvalid.eq(aw_pending)]
        with m.If(issue):
            m.d.sync += [aw_pending.eq(1), axi.awaddr.eq(addr), axi.awlen.eq(burst - 1),
                         w_left.eq(burst), addr.eq(addr + (burst << word_shift)),
                         remaining.eq(remaining - burst), more.eq(remaining != burst)]
        with m.Elif(aw_pending & axi.awready):
            m.d.sync += aw_pending.eq(0)
        with m.If(self.flush):
            m.d.sync += [remaining.eq(0), more.eq(0)]
        with m.Elif(self.cmd.valid & self.cmd.ready):
            m.d.sync += [remaining.eq(self.cmd.payload.words), addr.eq(self.cmd.payload.addr),
                         more.eq(self.cmd.payload.words != 0)]

        # Write data: the FIFO holds the whole burst, so wvalid is high throughout.
        send = Signal()
        m.d.comb += [axi.wvalid.eq((w_left != 0) & buf.r_rdy), axi.wdata.eq(buf.r_data),
                     axi.wlast.eq(w_left == 1), send.eq(axi.wvalid & axi.wready),
                     buf.r_en.eq(send)]
        with m.If(send):
            m.d.sync += w_left.eq(w_left - 1)

        # Responses.
        m.d.comb += axi.bready.eq(1)
        response = axi.bvalid & axi.bready
        m.d.sync += outstanding.eq(outstanding + issue - response)
        with m.If(self.clear):
            m.d.sync += self.error.eq(0)
        with m.If(response & (axi.bresp != 0)):
            m.d.sync += self.error.eq(1)

        in_flight = aw_pending | (w_left != 0) | (outstanding != 0)
        m.d.comb += [self.idle.eq(~in_flight),
                     self.busy.eq(in_flight | more),
                     empty_fifo.eq(self.flush & (w_left == 0))]
        return m
