"""On-chip copies of the words a read port fetches again for every image.

:class:`ResidentReads` sits between a :class:`~velcro.hw.axi.read.ReadDma` and its AXI4
port and keeps a copy of the first ``words`` words of a buffer (from byte ``base``) in
on-chip memory (UltraRAM on the card):

* while ``hold`` is low, every burst goes to the port, and the data of every burst
  that lies wholly inside the window is written into the copy as it passes;
* while ``hold`` is high, a burst inside the window is answered from the copy, one word
  per cycle, and never reaches the port; bursts outside it still do.

The kernel raises ``hold`` once the first image of a run is done and lowers it at the
next start. That is sound because a run reads the same bursts of its constant buffers
(descriptors, conv kernels, requantization, masks and means, codebooks, dense weights)
for every image: the address and length of every burst come from the program and the
buffer bases alone, never from an image. So every burst a later image reads was read,
and copied, by the first, and a run's constants cross the port once however many
images it has. A new run copies again, so the host may rewrite the buffers between
runs.

Order: a burst's source (port or copy) is queued with it, and the read data leaves in
request order, as the DMA expects from a single ID: a burst of the copy is read out
only when every burst before it has delivered its last word, so a word copied from the
port is written before any read of it. Each request passes one register (one cycle)
before it reaches the port or the copy, and each word of data one register before it
reaches the DMA. Bursts are of whole words (``arsize`` the word size), as
:class:`~velcro.hw.axi.read.ReadDma` makes them, whose fixed fields (ID, size, burst
type, cache and protection) pass straight through to the port.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .bus import axi4_read_signature

__all__ = ["ResidentReads"]

_PASSED = ("arid", "arsize", "arburst", "arlock", "arcache", "arprot")


class ResidentReads(wiring.Component):
    """An AXI4 read path that answers repeated reads of a window from on-chip memory.

    Parameters
    ----------
    data_width : int
        AXI data width (bits per word).
    words : int
        Words of the window (a power of two).
    max_outstanding : int
        Bursts queued between the request and its last word, at most (at least the
        DMA's own limit, so that the DMA is never held back by this queue).
    ram_style : str
        The copy's memory, as Vivado's ``ram_style``: ``"ultra"`` (UltraRAM, default)
        or ``"block"`` (block RAM).

    Attributes
    ----------
    up : In(axi4_read_signature)
        From the DMA.
    down : Out(axi4_read_signature)
        To the port.
    base : In(64)
        Byte address of the window's first word; stable while a run reads.
    hold : In(1)
        Answer bursts inside the window from the copy.
    """

    def __init__(self, *, data_width: int, words: int, max_outstanding: int = 4,
                 ram_style: str = "ultra"):
        exact_log2(words)
        if ram_style not in ("ultra", "block"):
            raise ValueError(f"ram_style must be 'ultra' or 'block', not {ram_style!r}")
        self.ram_style = ram_style
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be at least 1, not {max_outstanding!r}")
        self.data_width = data_width
        self.words = words
        self.max_outstanding = max_outstanding
        signature = axi4_read_signature(data_width=data_width)
        super().__init__({"up": In(signature), "down": Out(signature), "base": In(64),
                          "hold": In(1)})

    def elaborate(self, platform):
        m = Module()
        up, down = self.up, self.down
        shift = exact_log2(self.data_width // 8)
        k = exact_log2(self.words)
        entry = data.StructLayout({"local": 1, "fill": 1, "index": k, "last": 8})

        # --- requests: one register, then the port or the copy -------------------------
        offset = Signal(64)
        end = Signal(k + 1)
        m.d.comb += [offset.eq(up.araddr - self.base),
                     end.eq(offset[shift:shift + k] + up.arlen)]
        inside = (offset[shift + k:] == 0) & ~end[k] & (offset[:shift] == 0)

        held = Signal()
        request = Signal(entry)
        addr = Signal(64)
        m.submodules.order = order = fifo.SyncFIFO(width=entry.size,
                                                   depth=self.max_outstanding)
        m.d.comb += up.arready.eq(~held)
        with m.If(up.arvalid & ~held):
            m.d.sync += [held.eq(1), addr.eq(up.araddr),
                         request.local.eq(inside & self.hold), request.fill.eq(inside),
                         request.index.eq(offset[shift:shift + k]),
                         request.last.eq(up.arlen)]
        m.d.comb += [down.arvalid.eq(held & ~request.local & order.w_rdy),
                     down.araddr.eq(addr), down.arlen.eq(request.last)]
        m.d.comb += [getattr(down, name).eq(getattr(up, name)) for name in _PASSED]
        moved = held & order.w_rdy & (request.local | down.arready)
        m.d.comb += [order.w_en.eq(moved), order.w_data.eq(request)]
        with m.If(moved):
            m.d.sync += held.eq(0)

        # --- read data, in request order -------------------------------------------------
        head = Signal(entry)
        m.d.comb += head.eq(order.r_data)
        m.submodules.copy = copy = Memory(shape=self.data_width, depth=self.words, init=[],
                                          attrs={"ram_style": self.ram_style})
        store = copy.write_port()
        load = copy.read_port()
        beat = Signal(8)                 # word of the head burst
        word = Signal(k)
        m.d.comb += word.eq(head.index + beat)

        # Every word leaves from a register (``shown``), where it waits until taken: a
        # word of the copy is read in one cycle and shown in the next, a word of the
        # port is taken into ``port_data``. The DMA's read logic then starts at a
        # register, not at the port.
        shown = Signal()
        shown_copy = Signal()
        shown_last = Signal()
        shown_resp = Signal(2)
        port_data = Signal(self.data_width)
        advance = ~shown | up.rready
        serve = order.r_rdy & head.local & advance
        m.d.comb += [down.rready.eq(order.r_rdy & ~head.local & advance),
                     load.addr.eq(word), load.en.eq(advance)]
        passed = down.rvalid & down.rready
        with m.If(advance):
            m.d.sync += [shown.eq(serve | passed), shown_copy.eq(serve),
                         shown_last.eq(Mux(serve, beat == head.last, down.rlast)),
                         shown_resp.eq(Mux(serve, 0, down.rresp))]
        with m.If(passed):
            m.d.sync += port_data.eq(down.rdata)
        m.d.comb += [store.addr.eq(word), store.data.eq(down.rdata),
                     store.en.eq(passed & head.fill)]

        done = (serve & (beat == head.last)) | (passed & down.rlast)
        m.d.comb += order.r_en.eq(done)
        with m.If(done):
            m.d.sync += beat.eq(0)
        with m.Elif(serve | passed):
            m.d.sync += beat.eq(beat + 1)

        m.d.comb += [up.rvalid.eq(shown), up.rdata.eq(Mux(shown_copy, load.data, port_data)),
                     up.rlast.eq(shown_last), up.rresp.eq(shown_resp), up.rid.eq(0)]
        return m
