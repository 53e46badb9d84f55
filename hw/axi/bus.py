"""AXI4 and AXI4-Lite interfaces as Amaranth signatures, and flat port names for a top level.

Inside the kernel every AXI interface is one signature member whose fields carry the
AMBA names (``araddr``, ``rvalid``, ...), seen from the manager: :func:`axi4_signature`
and :func:`axi4_lite_signature`. A Vitis RTL kernel, Vivado's interface inference and
cocotbext-axi's ``from_prefix`` all want the same interfaces as flat top-level ports
(``m_axi_gmem0_araddr``); Amaranth names a nested member ``m_axi_gmem0__araddr``. So
the top level declares the flat ports with :func:`flat_members`, built from the very
same signature, and :func:`connect_flat` ties them to the nested interface field by
field, following each field's direction. Nothing is renamed by hand.

Managers drive constant fields the kernel never varies (one ID, incrementing
bursts, normal non-cacheable bufferable accesses): :data:`AXI_FIXED` lists them.
"""

from __future__ import annotations

import enum

from amaranth.hdl import Const, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

__all__ = ["AXI_FIXED", "Resp", "axi4_lite_signature", "axi4_read_signature", "axi4_signature",
           "axi4_write_signature", "burst_words", "connect_flat", "drive_fixed", "flat_members",
           "tie_off_flat"]

ID_BITS = 1


class Resp(enum.IntEnum):
    """AXI response codes (``bresp``/``rresp``)."""

    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


def _check_widths(data_width: int, addr_width: int) -> None:
    if data_width not in (32, 64, 128, 256, 512, 1024):
        raise ValueError(f"data_width must be a power of two from 32 to 1024, not "
                         f"{data_width!r}")
    if not isinstance(addr_width, int) or not 12 <= addr_width <= 64:
        raise ValueError(f"addr_width must be an integer from 12 to 64, not {addr_width!r}")


def _address_channel(ch: str, addr_width: int) -> dict:
    return {f"{ch}id": Out(ID_BITS), f"{ch}addr": Out(addr_width), f"{ch}len": Out(8),
            f"{ch}size": Out(3), f"{ch}burst": Out(2), f"{ch}lock": Out(1),
            f"{ch}cache": Out(4), f"{ch}prot": Out(3), f"{ch}valid": Out(1),
            f"{ch}ready": In(1)}


def axi4_read_signature(*, data_width: int, addr_width: int = 64) -> wiring.Signature:
    """The read half of an AXI4 manager (AR and R channels), as the manager sees it."""
    _check_widths(data_width, addr_width)
    return wiring.Signature({
        **_address_channel("ar", addr_width),
        "rid": In(ID_BITS), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
        "rvalid": In(1), "rready": Out(1),
    })


def axi4_write_signature(*, data_width: int, addr_width: int = 64) -> wiring.Signature:
    """The write half of an AXI4 manager (AW, W and B channels), as the manager sees it."""
    _check_widths(data_width, addr_width)
    return wiring.Signature({
        **_address_channel("aw", addr_width),
        "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
        "wvalid": Out(1), "wready": In(1),
        "bid": In(ID_BITS), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
    })


def axi4_signature(*, data_width: int, addr_width: int = 64) -> wiring.Signature:
    """A full AXI4 manager interface (all five channels), as the manager sees it.

    Parameters
    ----------
    data_width : int
        Bits of ``wdata``/``rdata``: a power of two from 32 to 1024.
    addr_width : int
        Bits of ``awaddr``/``araddr``.
    """
    return wiring.Signature({
        **axi4_write_signature(data_width=data_width, addr_width=addr_width).members,
        **axi4_read_signature(data_width=data_width, addr_width=addr_width).members,
    })


def axi4_lite_signature(*, addr_width: int, data_width: int = 32) -> wiring.Signature:
    """An AXI4-Lite manager interface, as the manager sees it."""
    return wiring.Signature({
        "awaddr": Out(addr_width), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1),
        "wready": In(1),
        "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "araddr": Out(addr_width), "arvalid": Out(1), "arready": In(1),
        "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
    })


#: Fields of an AXI4 manager that keep one value: a single ID (responses in order),
#: incrementing bursts, unlocked, "normal non-cacheable bufferable" (what Vitis
#: HLS kernels drive), unprivileged secure data accesses.
AXI_FIXED = {"id": 0, "burst": 1, "lock": 0, "cache": 0b0011, "prot": 0b000}


def flat_members(prefix: str, signature: wiring.Signature, *, flipped: bool = False) -> dict:
    """Top-level members ``<prefix>_<field>`` for every field of ``signature``.

    ``flipped`` gives the subordinate's view (for ``s_axi_*`` ports).
    """
    members = {}
    for name, member in signature.members.items():
        if not member.is_port:
            raise TypeError(f"{prefix}: field {name!r} is not a port")
        members[f"{prefix}_{name}"] = member.flip() if flipped else member
    return members


def connect_flat(m, owner, prefix: str, interface) -> None:
    """Connect the flat ports ``<prefix>_<field>`` of ``owner`` to a submodule's ``interface``.

    ``interface`` is the submodule's member whose signature the flat ports were made
    from (flipped or not); each field flows from the side that drives it.
    """
    for name, member in interface.signature.members.items():
        port = getattr(owner, f"{prefix}_{name}")
        inner = getattr(interface, name)
        if member.flow == wiring.Out:
            m.d.comb += port.eq(inner)
        else:
            m.d.comb += inner.eq(port)


def drive_fixed(m, interface) -> None:
    """Drive the :data:`AXI_FIXED` fields of the address channels of ``interface``."""
    for ch in ("aw", "ar"):
        for field, value in AXI_FIXED.items():
            if hasattr(interface, ch + field):
                target = getattr(interface, ch + field)
                m.d.comb += target.eq(Const(value, len(target)))


def burst_words(words, address, *, max_burst: int, word_bytes: int):
    """The words of the next burst of a transfer of ``words`` words from byte ``address``:
    all of them, at most up to the next multiple of ``max_burst`` words."""
    word_shift = exact_log2(word_bytes)
    to_boundary = max_burst - address[word_shift:word_shift + exact_log2(max_burst)]
    return Mux(words < to_boundary, words, to_boundary)


def tie_off_flat(m, owner, prefix: str, signature: wiring.Signature) -> None:
    """Drive every manager output ``<prefix>_<field>`` of ``signature`` idle: no request,
    responses always accepted (the unused half of a read-only or write-only port)."""
    for name, member in signature.members.items():
        if member.flow == wiring.Out:
            port = getattr(owner, f"{prefix}_{name}")
            m.d.comb += port.eq(1 if name in ("bready", "rready") else 0)
