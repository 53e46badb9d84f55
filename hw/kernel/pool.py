"""2x2 max-pooling (stride 2, floor) of a tensor streamed in the conv array's order.

The input is the conv array's ``ofmap`` stream: one beat per channel group and
position, in order ``(group, y, x)``, ``lanes`` int8 values per beat. The output is
the pooled tensor in the same format and order, ready to be loaded back into the
array: ``(group, y // 2, x // 2)``. Odd trailing rows and columns are dropped, as in
:func:`velcro.sw.golden.maxpool2x2`.

Per row pair, the maxima of horizontal pairs of the even row wait in a line buffer
(``max_width // 2`` beats of distributed RAM, read combinationally); the odd row
combines its own pairs with them and emits. Every input beat is taken in the cycle it
is offered unless the output is held back.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..conv.config import ConvArrayConfig
from ..conv.format import activations_layout

__all__ = ["MaxPool2x2"]


class MaxPool2x2(wiring.Component):
    """Streaming 2x2 max-pooling of ``lanes``-wide activation beats.

    Parameters
    ----------
    config : ConvArrayConfig
        Lanes and the largest map.

    Attributes
    ----------
    start : In(1)
        Begin a tensor of ``groups x height x width`` beats (sampled at ``start``).
    groups, height, width : In
    i : In(stream)
        Input beats.
    o : Out(stream)
        Pooled beats.
    busy : Out(1)
        Input beats of the tensor are still expected or the last output waits.
    """

    def __init__(self, config: ConvArrayConfig):
        self.config = config
        word = activations_layout(config.lanes)
        super().__init__({
            "start": In(1),
            "groups": In(range(config.max_groups + 1)),
            "height": In(range(config.max_height + 1)),
            "width": In(range(config.max_width + 1)),
            "i": In(stream.Signature(word)),
            "o": Out(stream.Signature(word)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        c = self.config
        m = Module()
        lanes = c.lanes
        word = activations_layout(lanes)
        m.submodules.line = line = Memory(shape=word, depth=max(1, c.max_width // 2), init=[])
        line_write = line.write_port()
        line_read = line.read_port(domain="comb")

        groups, height, width = Signal.like(self.groups), Signal.like(self.height), \
            Signal.like(self.width)
        x = Signal(range(c.max_width))
        y = Signal(range(c.max_height))
        group = Signal(range(c.max_groups + 1))
        even = Signal(word)                       # the even column of the current pair
        active = Signal()
        with m.If(self.start):
            m.d.sync += [groups.eq(self.groups), height.eq(self.height), width.eq(self.width),
                         x.eq(0), y.eq(0), group.eq(0), active.eq(1)]

        take = self.i.valid & self.i.ready
        m.d.comb += self.i.ready.eq(active & (~self.o.valid | self.o.ready))
        last_x = x == width - 1
        last_y = y == height - 1
        inside = (x < (width & ~1)) & (y < (height & ~1))
        pair = Signal(word)
        for lane in range(lanes):
            a, b = even[lane], self.i.payload[lane]
            m.d.comb += pair[lane].eq(Mux(a > b, a, b))
        pooled = Signal(word)
        for lane in range(lanes):
            a, b = line_read.data[lane], pair[lane]
            m.d.comb += pooled[lane].eq(Mux(a > b, a, b))
        m.d.comb += [line_read.addr.eq(x >> 1), line_write.addr.eq(x >> 1),
                     line_write.data.eq(pair)]

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(take):
            with m.If(~x[0]):
                m.d.sync += even.eq(self.i.payload)
            with m.Elif(inside):
                with m.If(~y[0]):
                    m.d.comb += line_write.en.eq(1)
                with m.Else():
                    m.d.sync += [self.o.payload.eq(pooled), self.o.valid.eq(1)]
            m.d.sync += x.eq(Mux(last_x, 0, x + 1))
            with m.If(last_x):
                m.d.sync += y.eq(Mux(last_y, 0, y + 1))
                with m.If(last_y):
                    m.d.sync += group.eq(group + 1)
                    with m.If(group == groups - 1):
                        m.d.sync += active.eq(0)
        m.d.comb += self.busy.eq(active | self.o.valid)
        return m

