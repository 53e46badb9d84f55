"""Parsing of Yosys ``stat``, parts synthesized apart, and one DSP48E2 per multiplier of a lane."""

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from velcro.hw.conv.lane import ConvLane
from velcro.sw.build.yosys import add_figures, parse_stat, synthesize

STAT_COUNT_FIRST = """
=== conv_array ===

        +----------Local Count, excluding submodules.
        |
    56208 wires
   123456 cells
      144   DSP48E2
       40   RAMB36E2
        6   RAMB18E2
     1200   FDRE
       30   FDSE
      900   LUT6
      100   LUT2
       12   RAM64M
        8   CARRY8
"""

STAT_NAME_FIRST = """
=== conv_array ===

   Number of wires:              56208
   Number of cells:             123456
     DSP48E2                       144
     FDRE                         1200
     LUT3                           77
     RAMB18E2                        4
"""


def test_counts_after_the_name_or_before_it():
    first = parse_stat(STAT_COUNT_FIRST)
    assert (first["dsp48e2"], first["ff"], first["lut"], first["bram36"], first["lutram"],
            first["carry"]) == (144, 1230, 1000, 43.0, 12, 8)
    second = parse_stat(STAT_NAME_FIRST)
    assert (second["dsp48e2"], second["ff"], second["lut"], second["bram36"]) == \
        (144, 1200, 77, 2.0)
    assert "cells" not in second["cells"] and second["cells"]["LUT3"] == 77


@pytest.mark.slow
def test_a_lane_maps_each_multiplier_to_one_dsp():
    figures = synthesize(ConvLane(8), "conv_lane")
    assert figures["dsp48e2"] == 9


def test_figures_of_parts_add_up_cell_by_cell():
    first, second = parse_stat(STAT_COUNT_FIRST), parse_stat(STAT_NAME_FIRST)
    first["yosys_seconds"], second["parts"] = 5.0, {"x": {}}
    total = add_figures(first, second)
    assert (total["dsp48e2"], total["ff"], total["lut"], total["bram36"]) == \
        (288, 2430, 1077, 45.0)
    assert total["cells"]["LUT3"] == 77 and total["cells"]["FDRE"] == 2400
    assert "yosys_seconds" not in total and "parts" not in total


class _Product(wiring.Component):
    """A registered 16 x 16 multiplier: one DSP48E2."""

    a: In(16)
    b: In(16)
    p: Out(32)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.p.eq(self.a * self.b)
        return m


class _TwoProducts(wiring.Component):
    """``(a * b) * c`` in two multipliers, one of them in the submodule ``first``."""

    a: In(16)
    b: In(16)
    c: In(16)
    p: Out(32)

    def elaborate(self, platform):
        m = Module()
        m.submodules.first = first = _Product()
        m.d.comb += [first.a.eq(self.a), first.b.eq(self.b)]
        m.d.sync += self.p.eq(first.p[:16] * self.c)
        return m


def test_a_part_synthesized_apart_is_counted_once_in_the_whole():
    figures = synthesize(_TwoProducts(), "two", apart=("first",), jobs=2)
    first, rest = figures["parts"]["first"], figures["parts"]["rest"]
    assert (first["dsp48e2"], rest["dsp48e2"], figures["dsp48e2"]) == (1, 1, 2)
    assert figures["ff"] == first["ff"] + rest["ff"]
    with pytest.raises(ValueError, match="jobs must be a positive integer, not 0"):
        synthesize(None, "two", jobs=0)


class _Walk(wiring.Component):
    """Eight states stepped by ``go``; ``at`` shows which one is current."""

    go: In(1)
    at: Out(8)

    def __init__(self, one_hot: bool):
        self.one_hot = one_hot
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        with m.FSM() as fsm:
            for n in range(8):
                with m.State(f"S{n}"):
                    m.d.comb += self.at[n].eq(1)
                    with m.If(self.go):
                        m.next = f"S{(n + 1) % 8}"
        if self.one_hot:
            fsm.state.attrs["fsm_encoding"] = "one_hot"
        return m


def test_a_state_register_marked_one_hot_takes_a_flip_flop_per_state():
    assert synthesize(_Walk(one_hot=True), "walk")["ff"] == 8
    # Unmarked, it stays as Amaranth encodes it: three bits.
    assert synthesize(_Walk(one_hot=False), "walk")["ff"] == 3


class _Table(wiring.Component):
    """A 1024 x 64-bit memory with one write and one synchronous read port."""

    addr: In(10)
    data: In(64)
    en: In(1)
    out: Out(64)

    def __init__(self, ultra: bool):
        self.ultra = ultra
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=64, depth=1024, init=[],
                                        attrs={"ram_style": "ultra"} if self.ultra else None)
        write, read = mem.write_port(), mem.read_port()
        m.d.comb += [write.addr.eq(self.addr), write.data.eq(self.data), write.en.eq(self.en),
                     read.addr.eq(self.addr), self.out.eq(read.data)]
        return m


def test_a_memory_marked_ultra_maps_to_ultraram():
    ultra = synthesize(_Table(ultra=True), "table")
    assert (ultra["uram"], ultra["bram36"]) == (1, 0)
    plain = synthesize(_Table(ultra=False), "table")
    assert plain["uram"] == 0 < plain["bram36"]
