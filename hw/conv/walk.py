"""Walk of a feature buffer in stream order, for loading and draining it.

The ``ifmap`` and ``ofmap`` streams carry a tensor as one beat per channel group and
position, in order ``(group, y, x)``. :class:`PlaneWalker` tracks that position and
says where it lives: bank ``(y mod 3, x mod 3)``, word
``plane << plane_bits | (y div 3) * col_blocks + x div 3`` with
``plane = buf * max_groups + group``. The divisions by 3 are kept as counters.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .config import ConvArrayConfig

__all__ = ["PlaneWalker"]


class PlaneWalker(wiring.Component):
    """Position counters over ``groups x height x width`` of buffer ``buf``.

    Attributes
    ----------
    start : In
        Go back to the first position (takes priority over ``advance``).
    advance : In
        Move to the next position.
    channels, groups, height, width, buf : In
        Extent of the walk (``groups = ceil(channels / lanes)``) and which buffer;
        stable while walking.
    bank_row, bank_col, addr : Out
        Bank and word of the current position.
    lanes_on : Out
        Lanes of the current group that carry a channel below ``channels``.
    last : Out
        The current position is the last one.
    """

    def __init__(self, config: ConvArrayConfig):
        self.config = config
        c = config
        super().__init__({
            "start": In(1),
            "advance": In(1),
            "channels": In(range(c.max_channels + 1)),
            "groups": In(range(c.max_groups + 1)),
            "height": In(range(c.max_height + 1)),
            "width": In(range(c.max_width + 1)),
            "buf": In(1),
            "bank_row": Out(range(3)),
            "bank_col": Out(range(3)),
            "addr": Out(range(c.bank_depth)),
            "lanes_on": Out(c.lanes),
            "last": Out(1),
        })

    def elaborate(self, platform):
        c = self.config
        m = Module()
        group = Signal(range(c.max_groups))
        group_base = Signal(range(c.max_groups * c.lanes + 1))   # group * lanes
        y = Signal(range(c.max_height))
        x = Signal(range(c.max_width))
        row_base = Signal(range(c.row_blocks * c.col_blocks))   # (y div 3) * col_blocks
        col_block = Signal(range(c.col_blocks))                  # x div 3

        last_x = x == self.width - 1
        last_y = y == self.height - 1
        last_group = group == self.groups - 1
        plane = Mux(self.buf, c.max_groups, 0) + group
        m.d.comb += [
            self.addr.eq(Cat((row_base + col_block)[:c.plane_bits], plane)),
            self.last.eq(last_x & last_y & last_group),
        ]
        remaining = Signal(range(-c.max_groups * c.lanes, c.max_channels + 1))
        m.d.comb += remaining.eq(self.channels - group_base)
        m.d.comb += [self.lanes_on[lane].eq(remaining > lane) for lane in range(c.lanes)]

        with m.If(self.start):
            m.d.sync += [group.eq(0), group_base.eq(0), y.eq(0), x.eq(0), row_base.eq(0),
                         col_block.eq(0), self.bank_row.eq(0), self.bank_col.eq(0)]
        with m.Elif(self.advance):
            with m.If(~last_x):
                m.d.sync += x.eq(x + 1)
                with m.If(self.bank_col == 2):
                    m.d.sync += [self.bank_col.eq(0), col_block.eq(col_block + 1)]
                with m.Else():
                    m.d.sync += self.bank_col.eq(self.bank_col + 1)
            with m.Else():
                m.d.sync += [x.eq(0), self.bank_col.eq(0), col_block.eq(0)]
                with m.If(~last_y):
                    m.d.sync += y.eq(y + 1)
                    with m.If(self.bank_row == 2):
                        m.d.sync += [self.bank_row.eq(0), row_base.eq(row_base + c.col_blocks)]
                    with m.Else():
                        m.d.sync += self.bank_row.eq(self.bank_row + 1)
                with m.Else():
                    m.d.sync += [y.eq(0), self.bank_row.eq(0), row_base.eq(0),
                                 group.eq(group + 1), group_base.eq(group_base + c.lanes)]
        return m
