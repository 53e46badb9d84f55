"""The conv array's feature banks: 9 memories addressed by ``(y mod 3, x mod 3)``, one
copy of them per slot.

Each slot of the array reads its own 3x3 window in a cycle, one word from each of the 9
banks; two windows of one block can need two words of the same bank, so every slot has
its own copy, and every copy is written alike through one write per bank. The write is
registered here, so that a memory's write enables, address and data come from
flip-flops: it lands in the cycle after the array decides it. No operation of the array
reads the buffer it writes, and the next one starts, at the earliest, in the cycle after
``done``, when its predecessor's last write has landed.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import ConvArrayConfig
from .format import TAPS, activations_layout

__all__ = ["FeatureBanks", "window_taps", "write_layout"]


def write_layout(config: ConvArrayConfig) -> data.StructLayout:
    """One bank's write: word address, a word of one int8 per lane, an enable per lane."""
    return data.StructLayout({"addr": range(config.bank_depth),
                              "data": activations_layout(config.lanes),
                              "en": config.lanes})


def window_taps(words, route_row, route_col) -> list:
    """The 9 words a window reads (tap ``3 * ky + kx``) from the 9 banks' ``words``, for a
    centre with ``(y mod 3, x mod 3) = (route_row, route_col)``: tap ``(ky, kx)`` lives in
    bank ``((route_row + ky - 1) mod 3, (route_col + kx - 1) mod 3)``."""
    words = [words[bank].as_value() for bank in range(TAPS)]
    taps = []
    for ky in range(3):
        row = Array((a + ky - 1) % 3 for a in range(3))[route_row]
        columns = [Array(words[3 * r + col] for r in range(3))[row] for col in range(3)]
        for kx in range(3):
            taps.append(Array(columns)[Array((b + kx - 1) % 3 for b in range(3))[route_col]])
    return taps


class FeatureBanks(wiring.Component):
    """``slots`` copies of the 9 feature banks.

    Attributes
    ----------
    write : In
        Per bank (``3 * (y mod 3) + x mod 3``), the write of this cycle, landing in
        every copy in the next.
    read_addr : In
        Per slot and bank, the word to read (synchronous: its data the next cycle).
    read_data : Out
        Per slot and bank, the word read.
    """

    def __init__(self, config: ConvArrayConfig):
        self.config = config
        word = activations_layout(config.lanes)
        addresses = data.ArrayLayout(range(config.bank_depth), TAPS)
        super().__init__({
            "write": In(data.ArrayLayout(write_layout(config), TAPS)),
            "read_addr": In(data.ArrayLayout(addresses, config.slots)),
            "read_data": Out(data.ArrayLayout(data.ArrayLayout(word, TAPS), config.slots)),
        })

    def elaborate(self, platform):
        c = self.config
        m = Module()
        landing = Signal.like(self.write)
        m.d.sync += landing.eq(self.write)
        for slot in range(c.slots):
            for bank in range(TAPS):
                # UltraRAM: on the shipped array each bank is 4,096 words of 128 bits,
                # two URAM288 blocks instead of sixteen 36-kbit block RAMs.
                mem = Memory(shape=activations_layout(c.lanes), depth=c.bank_depth, init=[],
                             attrs={"ram_style": "ultra"})
                suffix = "" if slot == 0 else f"_copy{slot}"
                m.submodules[f"bank{bank // 3}{bank % 3}{suffix}"] = mem
                # One write enable per lane (per element of the word).
                write = mem.write_port(granularity=1)
                read = mem.read_port()
                m.d.comb += [write.addr.eq(landing[bank].addr),
                             write.data.eq(landing[bank].data),
                             write.en.eq(landing[bank].en),
                             read.addr.eq(self.read_addr[slot][bank]),
                             self.read_data[slot][bank].eq(read.data)]
        return m
