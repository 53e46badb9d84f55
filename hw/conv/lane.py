"""One input-channel lane of the conv array: a 3x3 convolution instance.

A lane multiplies the 3x3 windows of its current input channel (one per slot: two
output elements of one block) by that channel's 3x3 kernel of the current output
channel and sums each window's nine products. It keeps the kernels of two output
channels, one being used while the other is loaded, in a small memory indexed by
``half * max_groups + group``. :func:`adder_tree` sums the lanes' results.

Two slots share the kernel, so each tap is one multiplication in a DSP48E2 (the
AMD INT8 packing of two products with a shared operand): the 27-bit operand is
``(a1 << 18) + a0``, the 18-bit one the weight ``w``, and the product
``P = (w * a1 << 18) + w * a0``. Bits ``[0, 18)`` of ``P``, read as signed, are
``w * a0`` (``|w * a0| <= 2 ** 14``); the bits from 18 up are ``w * a1`` minus the
borrow of a negative ``w * a0``, which is bit 17 of ``P``, added back in the lane's sum.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .format import TAPS

__all__ = ["ConvLane", "adder_tree", "tree_latency"]

PRODUCT_BITS = 16                 # int8 * int8
SUM_BITS = PRODUCT_BITS + 4       # nine products
PACK_SHIFT = 18                   # where the second window's element sits in the operand


class ConvLane(wiring.Component):
    """Nine multipliers and their sum, with double-buffered kernels.

    Parameters
    ----------
    kernel_slots : int
        Kernels held (two output channels times the channel groups per lane).
    slots : int
        Windows multiplied by the kernel per cycle, 1 or 2.

    Attributes
    ----------
    w_addr, w_data, w_en : In
        Kernel write port (``w_data`` is one kernel of 9 taps, tap ``3 * ky + kx``).
    rd_addr : In
        Kernel to use, presented in the issue cycle ``t``.
    act : In
        The routed, zero-padded 3x3 window of each slot, presented in cycle ``t + 1``.
    sum : Out
        ``sum(act[s][k] * kernel[k])`` of each slot ``s``, valid in cycle
        ``t + 1 + LATENCY``.
    """

    LATENCY = 3

    def __init__(self, kernel_slots: int, slots: int = 1):
        if not isinstance(kernel_slots, int) or kernel_slots < 1:
            raise ValueError(f"kernel_slots must be a positive integer, not {kernel_slots!r}")
        if slots not in (1, 2):
            raise ValueError(f"slots must be 1 or 2, not {slots!r}")
        self.kernel_slots, self.slots = kernel_slots, slots
        window = data.ArrayLayout(signed(8), TAPS)
        super().__init__({
            "w_addr": In(range(kernel_slots)),
            "w_data": In(window),
            "w_en": In(1),
            "rd_addr": In(range(kernel_slots)),
            "act": In(data.ArrayLayout(window, slots)),
            "sum": Out(data.ArrayLayout(signed(SUM_BITS), slots)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.kernels = kernels = Memory(
            shape=data.ArrayLayout(signed(8), TAPS), depth=self.kernel_slots, init=[])
        write = kernels.write_port()
        read = kernels.read_port()
        m.d.comb += [write.addr.eq(self.w_addr), write.data.eq(self.w_data),
                     write.en.eq(self.w_en), read.addr.eq(self.rd_addr)]

        # Registers on both multiplier inputs and on the products: the shape of a
        # DSP48E2 with AREG/BREG and MREG.
        act = Signal.like(self.act)
        weight = Signal(data.ArrayLayout(signed(8), TAPS))
        m.d.sync += [act.eq(self.act), weight.eq(read.data)]
        if self.slots == 1:
            products = [Signal(signed(PRODUCT_BITS), name=f"product{k}") for k in range(TAPS)]
            m.d.sync += [p.eq(act[0][k] * weight[k]) for k, p in enumerate(products)]
            m.d.sync += self.sum[0].eq(sum(products))
            return m
        packed = []
        for k in range(TAPS):
            operand = Signal(signed(PACK_SHIFT + 9), name=f"operand{k}")
            m.d.comb += operand.eq((act[1][k] << PACK_SHIFT) + act[0][k])
            product = Signal(signed(PACK_SHIFT + 9 + 8), name=f"packed{k}")
            m.d.sync += product.eq(operand * weight[k])
            packed.append(product)
        low = [p[:PACK_SHIFT].as_signed() for p in packed]
        high = [p[PACK_SHIFT:].as_signed() for p in packed]
        borrows = [p[PACK_SHIFT - 1] for p in packed]
        m.d.sync += [self.sum[0].eq(sum(low)), self.sum[1].eq(sum(high) + sum(borrows))]
        return m


def tree_latency(lanes: int) -> int:
    """Register stages of the cross-lane adder tree (one every two adder levels)."""
    levels = (lanes - 1).bit_length()
    return levels // 2


def adder_tree(m: Module, values: list, name: str):
    """Sum of ``values`` (the lanes' sums), registered after every second adder level."""
    level = 0
    while len(values) > 1:
        pairs = [values[n] + values[n + 1] for n in range(0, len(values) - 1, 2)]
        values = pairs + values[len(values) - len(values) % 2:]
        level += 1
        if level % 2 == 0:
            regs = []
            for n, value in enumerate(values):
                reg = Signal(signed(len(value)), name=f"{name}{level}_{n}")
                m.d.sync += reg.eq(value)
                regs.append(reg)
            values = regs
    return values[0]
