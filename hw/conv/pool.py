"""2x2 max-pooling inside the conv array's banks (its ``POOL`` operation).

A plane is spread over 9 banks by ``(y mod 3, x mod 3)``
(:class:`~velcro.hw.conv.walk.PlaneWalker`). The window of pooled position ``(y, x)``
covers input rows ``2y, 2y + 1`` and columns ``2x, 2x + 1``; two consecutive rows
differ modulo 3, and so do two columns, so the window's four elements sit in four
different banks and are read in one cycle, for all lanes at once. Pooling therefore
takes one cycle per pooled position and channel group, reads buffer ``buf`` and leaves
the result where the array writes it (the other buffer), without a stream.

:class:`WindowPool` walks the pooled positions in stream order ``(group, y, x)``,
addresses the banks and reduces the four words they return. Each row is tracked as
``(row mod 3, (row div 3) * col_blocks)`` and each column as ``(col mod 3, col div
3)``; a step of two adds 2 modulo 3 and carries into the word counter, so no address
needs a multiplication. The comparisons are signed: any int8 map pools, not only the
non-negative output of a ReLU.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .config import ConvArrayConfig
from .format import TAPS, activations_layout

__all__ = ["WindowPool"]


def _lane_max(a, b, lanes: int):
    """Per-lane signed maximum of two words of ``lanes`` int8 values."""
    def byte(v, n):
        return v[8 * n:8 * n + 8]
    return Cat(Mux(byte(a, n).as_signed() > byte(b, n).as_signed(), byte(a, n), byte(b, n))
               for n in range(lanes))


class WindowPool(wiring.Component):
    """Bank addresses and maxima of the 2x2 windows of a pooling, in output order.

    Pipeline, for the position the counters hold in cycle ``t``: the window's bank
    addresses are registered (``addr`` in ``t + 1``), the banks answer (``words`` in
    ``t + 2``, a synchronous read), the maxima of the window's two rows are registered
    (``t + 3``) and the window's maximum (``pooled`` in ``t + 4`` = ``t + LATENCY``).

    Attributes
    ----------
    start : In
        Go back to the first position (takes priority over ``advance``).
    advance : In
        Move to the next position.
    groups, height, width, buf : In
        Channel groups, *pooled* extent and the buffer read; stable while walking.
    addr : Out(array of 9)
        Word to read in bank ``3 * (row mod 3) + col mod 3``; banks outside the window
        get one of the window's words.
    words : In(array of 9)
        What the banks read at ``addr`` (one cycle later).
    pooled : Out
        The window's maximum, all lanes.
    """

    LATENCY = 4

    def __init__(self, config: ConvArrayConfig):
        self.config = config
        c = config
        word = activations_layout(c.lanes)
        super().__init__({
            "start": In(1),
            "advance": In(1),
            "groups": In(range(c.max_groups + 1)),
            "height": In(range(c.max_height + 1)),
            "width": In(range(c.max_width + 1)),
            "buf": In(1),
            "addr": Out(range(c.bank_depth)).array(TAPS),
            "words": In(word).array(TAPS),
            "pooled": Out(word),
        })

    def elaborate(self, platform):
        c = self.config
        m = Module()
        group = Signal(range(c.max_groups))
        y = Signal(range(c.max_height))
        x = Signal(range(c.max_width))
        rows = [(Signal(range(3), name=f"row{k}_phase", init=k),
                 Signal(range(c.row_blocks * c.col_blocks), name=f"row{k}_base"))
                for k in range(2)]
        cols = [(Signal(range(3), name=f"col{k}_phase", init=k),
                 Signal(range(c.col_blocks), name=f"col{k}_block"))
                for k in range(2)]

        def step_two(phase, word, unit):
            """``phase, word`` of the row or column two further on."""
            return [phase.eq(Mux(phase == 0, 2, phase - 1)),
                    word.eq(Mux(phase == 0, word, word + unit))]

        def restart(tracks):
            """Row (column) ``k`` of the first window: phase ``k``, word 0."""
            return [s.eq(k if n == 0 else 0) for k, track in enumerate(tracks)
                    for n, s in enumerate(track)]

        last_x = x == self.width - 1
        last_y = y == self.height - 1
        with m.If(self.start):
            m.d.sync += [group.eq(0), y.eq(0), x.eq(0), *restart(rows), *restart(cols)]
        with m.Elif(self.advance):
            with m.If(~last_x):
                m.d.sync += x.eq(x + 1)
                for phase, word in cols:
                    m.d.sync += step_two(phase, word, 1)
            with m.Else():
                m.d.sync += [x.eq(0), *restart(cols)]
                with m.If(~last_y):
                    m.d.sync += y.eq(y + 1)
                    for phase, word in rows:
                        m.d.sync += step_two(phase, word, c.col_blocks)
                with m.Else():
                    m.d.sync += [y.eq(0), *restart(rows), group.eq(group + 1)]

        # t + 1: the window's word in every bank, and where its rows and columns are.
        plane = Mux(self.buf, c.max_groups, 0) + group
        for bank in range(TAPS):
            r, col = divmod(bank, 3)
            row_base = Mux(rows[0][0] == r, rows[0][1], rows[1][1])
            col_block = Mux(cols[0][0] == col, cols[0][1], cols[1][1])
            m.d.sync += self.addr[bank].eq(Cat((row_base + col_block)[:c.plane_bits], plane))
        phases = {}
        for name, tracks in (("row", rows), ("col", cols)):
            for k, (phase, _) in enumerate(tracks):
                stages = [Signal(range(3), name=f"{name}{k}_phase_d{n}") for n in (1, 2)]
                m.d.sync += [stages[0].eq(phase), stages[1].eq(stages[0])]
                phases[name, k] = stages[1]

        # t + 2 -> t + 3: the maximum of each row's two elements.
        words = [self.words[bank].as_value() for bank in range(TAPS)]
        row_max = []
        for k in range(2):
            row = [Array(words[3 * r + col] for r in range(3))[phases["row", k]]
                   for col in range(3)]
            pair = [Array(row)[phases["col", j]] for j in range(2)]
            reg = Signal(len(words[0]), name=f"row{k}_max")
            m.d.sync += reg.eq(_lane_max(*pair, c.lanes))
            row_max.append(reg)
        # t + 4: the window's.
        m.d.sync += self.pooled.eq(_lane_max(*row_max, c.lanes))
        return m
