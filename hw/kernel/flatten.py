"""Flatten: a tensor streamed in the conv array's order, written in C order as bytes, or
in channel-last order as words.

The conv array drains a ``[C, H, W]`` tensor as one beat per channel group and
position, ``(group, y, x)``, lane ``l`` carrying channel ``group * lanes + l``. A dense
layer wants the flattening ``x[c * H * W + y * W + x]`` (the order of
:func:`torch.flatten` and of the package). The lanes of one beat land ``H * W``
bytes apart, so this unit writes them one byte per cycle into the dense engine's
activation buffer, taking the next beat while it writes the last byte of the
current one: a tensor of ``C * H * W`` bytes takes that many cycles.

With ``hwc`` the unit writes the channel-last flattening ``x[(y * W + x) * C + c]``
instead, for ``C`` a multiple of ``lanes``: a beat's lanes are then ``lanes``
consecutive bytes, written as one word in the cycle after the beat is taken, so the
tensor takes one cycle per beat. The program that asks for it gives the next dense
layer its inputs in the same order (its weight columns permuted), which leaves the
layer's outputs unchanged.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..conv.config import ConvArrayConfig
from ..conv.format import activations_layout

__all__ = ["Flatten"]


class Flatten(wiring.Component):
    """Beats of ``lanes`` int8 in, byte writes at C-order addresses out.

    Parameters
    ----------
    config : ConvArrayConfig
    capacity : int
        Bytes the destination holds; a tensor that does not fit sets ``overflow``
        and writes nothing past the end.

    Attributes
    ----------
    start : In(1)
        Begin a tensor (``channels``, ``height``, ``width`` and ``hwc`` sampled).
    i : In(stream)
    write : Out(struct: addr, data, en, word, wide)
        A byte (``data`` at byte ``addr``), or with ``wide`` a word of ``lanes`` bytes
        (``word`` at byte ``addr * lanes``).
    busy : Out(1)
    overflow : Out(1)
        Sticky until the next ``start``.
    """

    def __init__(self, config: ConvArrayConfig, capacity: int):
        self.config = config
        self.capacity = capacity
        super().__init__({
            "start": In(1),
            "channels": In(range(config.max_channels + 1)),
            "height": In(range(config.max_height + 1)),
            "width": In(range(config.max_width + 1)),
            "hwc": In(1),
            "i": In(stream.Signature(activations_layout(config.lanes))),
            "write": Out(data.StructLayout({"addr": range(capacity), "data": 8, "en": 1,
                                            "word": 8 * config.lanes, "wide": 1})),
            "busy": Out(1),
            "overflow": Out(1),
        })

    def elaborate(self, platform):
        c = self.config
        m = Module()
        lanes = c.lanes
        total = c.max_channels * c.max_height * c.max_width
        plane = Signal(range(c.max_height * c.max_width + 1))      # H * W
        group_step = Signal(range(lanes * c.max_height * c.max_width + 1))
        channels = Signal.like(self.channels)
        # The last position of a plane and whether the group is the last, registered so
        # that no subtraction or comparison of the count feeds the beat's handshake.
        plane_end = Signal.like(plane)
        last_group = Signal()
        with m.If(self.start):
            m.d.sync += [plane.eq(self.height * self.width), channels.eq(self.channels),
                         plane_end.eq(self.height * self.width - 1)]
        m.d.comb += group_step.eq(plane * lanes)

        # Position of the next beat.
        pos = Signal.like(plane)
        group_base = Signal(range(total + lanes * c.max_height * c.max_width + 1))
        first_channel = Signal(range(c.max_groups * lanes + 1))
        active = Signal()
        # The beat being written.
        hold = Signal(activations_layout(lanes))
        lane = Signal(range(lanes))
        left = Signal(range(lanes + 1))
        addr = Signal(range(total + lanes * c.max_height * c.max_width + 1))

        # Channel-last: the word of the next beat, and of the next group's first beat.
        hwc = Signal()
        groups = Signal(range(c.max_groups + 1))
        word_next = Signal(range(total // lanes + 1))
        word_group = Signal(range(c.max_groups + 1))
        word_addr = Signal.like(word_next)
        word_en = Signal()
        m.d.sync += word_en.eq(0)

        take = self.i.valid & self.i.ready
        m.d.comb += self.i.ready.eq(active & (left <= 1))
        on = Signal(range(lanes + 1))
        remaining = channels - first_channel
        m.d.comb += on.eq(Mux(remaining > lanes, lanes, remaining))
        last_pos = pos == plane_end

        log2_lanes = lanes.bit_length() - 1
        with m.If(self.start):
            m.d.sync += [pos.eq(0), group_base.eq(0), first_channel.eq(0), active.eq(1),
                         left.eq(0), self.overflow.eq(0),
                         last_group.eq(self.channels <= lanes),
                         hwc.eq(self.hwc), groups.eq(self.channels >> log2_lanes),
                         word_next.eq(0), word_group.eq(0)]
        with m.Elif(take):
            m.d.sync += [hold.eq(self.i.payload), lane.eq(0), left.eq(Mux(hwc, 0, on)),
                         addr.eq(group_base + pos),
                         word_addr.eq(word_next), word_en.eq(hwc)]
            with m.If(last_pos):
                m.d.sync += [pos.eq(0), group_base.eq(group_base + group_step),
                             first_channel.eq(first_channel + lanes),
                             last_group.eq(first_channel + 2 * lanes >= channels),
                             word_next.eq(word_group + 1), word_group.eq(word_group + 1)]
                with m.If(last_group):
                    m.d.sync += active.eq(0)
            with m.Else():
                m.d.sync += [pos.eq(pos + 1), word_next.eq(word_next + groups)]
        with m.Elif(left != 0):
            m.d.sync += [lane.eq(lane + 1), left.eq(left - 1), addr.eq(addr + plane)]

        fits = addr < self.capacity
        word_fits = word_addr < self.capacity // lanes
        m.d.comb += [
            self.write.addr.eq(Mux(word_en, word_addr, addr)),
            self.write.data.eq(Array(hold[n] for n in range(lanes))[lane]),
            self.write.word.eq(hold),
            self.write.wide.eq(word_en),
            self.write.en.eq(Mux(word_en, word_fits, (left != 0) & fits)),
            self.busy.eq(active | (left != 0) | word_en),
        ]
        with m.If(((left != 0) & ~fits) | (word_en & ~word_fits)):
            m.d.sync += self.overflow.eq(1)
        return m
