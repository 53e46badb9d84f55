"""Logic depth from a Yosys JSON netlist: LUT levels between registers, by the stated rule."""

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from velcro.sw.build.depth import lut_levels
from velcro.sw.build.yosys import synthesize


class Netlist:
    """A one-module netlist in Yosys's JSON form, built cell by cell."""

    def __init__(self):
        self.cells, self.nets, self.ports, self.next_bit = {}, {}, {}, 2

    def bit(self, name=None):
        bit, self.next_bit = self.next_bit, self.next_bit + 1
        if name:
            self.nets[name] = {"hide_name": 0, "bits": [bit]}
        return bit

    def cell(self, kind, inputs, outputs, **parameters):
        connections = {**{p: [b] for p, b in inputs.items()},
                       **{p: [b] for p, b in outputs.items()}}
        directions = {**{p: "input" for p in inputs}, **{p: "output" for p in outputs}}
        self.cells[f"c{len(self.cells)}"] = {"type": kind, "parameters": parameters,
                                             "port_directions": directions,
                                             "connections": connections}

    def register(self, d, name):
        q = self.bit(name)
        self.cell("FDRE", {"C": self.bit(), "D": d, "CE": self.bit(), "R": self.bit()},
                  {"Q": q})
        return q

    def lut(self, *inputs, name=None):
        out = self.bit(name)
        self.cell(f"LUT{len(inputs)}", {f"I{n}": b for n, b in enumerate(inputs)}, {"O": out})
        return out

    def json(self):
        return {"modules": {"top": {"attributes": {"top": "1"}, "ports": self.ports,
                                    "cells": self.cells, "netnames": self.nets},
                            "LUT2": {"attributes": {}, "cells": {}}}}


def test_levels_are_luts_between_registers_and_the_deepest_path_is_named():
    n = Netlist()
    a, b = n.register(n.bit(), "a"), n.register(n.bit(), "b")
    n.register(n.lut(n.lut(a, b, name="mid"), a), "two")       # a -> LUT -> LUT -> two
    n.register(n.lut(b), "one")
    depth = lut_levels(n.json())
    assert depth["lut_levels"] == 2 and depth["carry"] == 0
    assert depth["paths"][0] == {"from": "a", "to": "two", "lut_levels": 2, "carry": 0,
                                 "through": ["mid"]}
    assert [p["to"] for p in depth["paths"]] == ["two", "one", "a", "b"]


def test_carry_cells_and_wide_muxes_add_no_level_but_carries_are_reported():
    n = Netlist()
    a = n.register(n.bit(), "a")
    s = n.lut(a)
    co = n.bit()
    n.cell("CARRY8", {"S": s, "CI": n.bit(), "DI": a}, {"CO": co})
    co2 = n.bit()
    n.cell("CARRY8", {"S": n.lut(a), "CI": co, "DI": a}, {"CO": co2})
    f7 = n.bit()
    n.cell("MUXF7", {"I0": co2, "I1": a, "S": a}, {"O": f7})
    n.register(n.lut(f7), "sum")
    depth = lut_levels(n.json())
    assert (depth["lut_levels"], depth["carry"]) == (2, 2)


def test_a_dsp_with_its_m_or_p_register_ends_a_path_one_without_passes_it_on():
    for preg, levels in (("1", 1), ("0", 2)):
        n = Netlist()
        a = n.register(n.bit(), "a")
        p = n.bit()
        n.cell("DSP48E2", {"A": n.lut(a), "B": a}, {"P": p}, MREG="0", PREG=preg)
        n.register(n.lut(p), "product")
        assert lut_levels(n.json())["lut_levels"] == levels, preg


def test_a_black_box_is_a_boundary_and_lut_ram_counts_one_level_from_its_address():
    n = Netlist()
    a = n.register(n.bit(), "a")
    box = n.bit()
    n.cell("velcro_kernel.conv", {"x": n.lut(n.lut(a))}, {"y": box})
    n.register(n.lut(box), "after_box")
    ram = n.bit()
    n.cell("RAM64M", {"ADDRA": n.lut(a), "DIA": n.lut(n.lut(n.lut(a)))}, {"DOA": ram})
    n.register(ram, "read")
    depth = {p["to"]: p["lut_levels"] for p in lut_levels(n.json())["paths"]}
    # Into the box: 2; out of it: 1; address -> RAM read: 1 + 1; data input: 3, an end.
    assert depth["velcro_kernel.conv"] == 2 and depth["after_box"] == 1
    assert depth["read"] == 2 and depth["RAM64M"] == 3


def test_module_ports_start_and_end_paths():
    n = Netlist()
    x = n.bit("x")
    y = n.lut(n.lut(x))
    n.ports = {"x": {"direction": "input", "bits": [x]}, "y": {"direction": "output",
                                                             "bits": [y]}}
    assert lut_levels(n.json())["paths"][0] == {"from": "x", "to": "y", "lut_levels": 2,
                                                "carry": 0, "through": []}


def test_a_combinational_loop_or_a_missing_top_is_refused():
    n = Netlist()
    loop_a, loop_b = n.bit(), n.bit()
    n.cell("LUT1", {"I0": loop_b}, {"O": loop_a})
    n.cell("LUT1", {"I0": loop_a}, {"O": loop_b})
    n.register(loop_a, "r")
    with pytest.raises(ValueError, match="combinational loop"):
        lut_levels(n.json())
    with pytest.raises(ValueError, match="no module 'other'"):
        lut_levels(n.json(), "other")


def _parity(width):
    """A registered parity of ``width`` registered bits."""

    class Parity(wiring.Component):
        a: In(width)
        p: Out(1)

        def elaborate(self, platform):
            m = Module()
            a = Signal(width)
            m.d.sync += [a.eq(self.a), self.p.eq(a.xor())]
            return m

    return Parity()


def test_synthesis_reports_the_depth_of_the_mapped_luts():
    # Six inputs fit one LUT6; a seventh needs a second level.
    two = synthesize(_parity(7), "parity")["depth"]
    assert two["lut_levels"] == 2
    assert two["paths"][0]["from"].startswith("a") and two["paths"][0]["to"] == "p"


def test_the_shipped_scanner_stays_within_eight_lut_levels():
    from velcro.hw.conv.config import SHIPPED
    from velcro.hw.conv.scan import SkipScanner

    depth = synthesize(SkipScanner(SHIPPED), "scanner")["depth"]
    assert depth["lut_levels"] <= 8, depth["paths"]
