"""The register map (velcro.hw.kernel.regmap): its pinned layout, pointers and builder."""


import pytest

from velcro.hw.kernel.regmap import (
    ADDR_BITS,
    PORTS,
    REGMAP,
    Argument,
    Register,
    RegisterMap,
    Status,
)


def test_layout_is_pinned():
    """The one test that spells offsets: Vitis fixes 0x00-0x0C and arguments from 0x10."""
    assert [(r.name, r.offset, r.width) for r in REGMAP] == [
        ("CTRL", 0x00, 32), ("GIE", 0x04, 32), ("IER", 0x08, 32), ("ISR", 0x0C, 32),
        ("program", 0x10, 64), ("indices", 0x18, 64), ("inputs", 0x20, 64),
        ("outputs", 0x28, 64), ("counters", 0x30, 64), ("images", 0x38, 32),
        ("watchdog", 0x3C, 32), ("status", 0x40, 32), ("error_at", 0x44, 32),
        ("images_done", 0x48, 32), ("cycles", 0x50, 64), ("mac_cycles", 0x58, 64),
        ("skipped", 0x60, 64), ("stall_cycles", 0x68, 64)]
    ctrl = REGMAP["CTRL"]
    assert [(f.name, f.bit) for f in ctrl.fields] == [
        ("AP_START", 0), ("AP_DONE", 1), ("AP_IDLE", 2), ("AP_READY", 3), ("AUTO_RESTART", 7)]
    assert REGMAP.size == 1 << ADDR_BITS == 0x1000


def test_every_pointer_names_a_port_and_every_port_has_a_pointer():
    ports = {r.port for r in REGMAP.arguments if r.pointer}
    assert ports == set(PORTS)
    assert all(r.ctype.endswith("*") for r in REGMAP.arguments if r.pointer)
    assert all(r.ctype == "unsigned int" for r in REGMAP.arguments if not r.pointer)


def test_builder_aligns_and_rejects():
    built = RegisterMap.build((), (Argument("a", 32, "unsigned int"),
                                   Argument("b", 64, "void*", "m_axi_data")),
                              (Status("s", 32),))
    assert [(r.name, r.offset) for r in built] == [("a", 0x10), ("b", 0x18), ("s", 0x20)]
    with pytest.raises(ValueError, match="32 or 64 bits"):
        RegisterMap.build((), (Argument("a", 16, "unsigned short"),), ())
    with pytest.raises(ValueError, match="unique"):
        RegisterMap((Register("a", 0, 32, "control"), Register("a", 4, 32, "control")))
    with pytest.raises(ValueError, match="beyond the 4-bit address window"):
        RegisterMap((Register("a", 0x10, 32, "control"),), addr_bits=4)
    with pytest.raises(KeyError, match="no register 'nope'"):
        REGMAP["nope"]
