"""Pipelined requantization of int32 accumulators to int8, exactly as the golden model.

``y = clamp((acc * mult + (1 << (shift - 1))) >> shift, lo, 127)`` with ``mult``
unsigned 16-bit, ``shift`` in ``[0, 31]`` (no rounding term when it is 0), an
arithmetic shift, and ``lo = 0`` after ReLU, ``-128`` otherwise
(:func:`velcro.sw.golden.requantize`). One result per cycle, :attr:`LATENCY` cycles
after the operands.

The 32 x 16-bit product needs more than one DSP48E2 multiplier (27 x 18 bits,
signed), so it is split at bit 26 of the accumulator:
``acc * mult = (acc[26:] * mult << 26) + acc[:26] * mult``. The low part, 26 x 16
bits unsigned, fits one DSP slice; the high part, 6 x 16 bits, is six shifted
additions in fabric (written out, so that synthesis does not give it a DSP slice
of its own).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Requantizer"]

ACC_BITS, MULT_BITS, SHIFT_BITS = 32, 16, 5
LOW_BITS = 26   # accumulator bits multiplied in the DSP slice (27-bit signed port)


class Requantizer(wiring.Component):
    """``acc``/``mult``/``shift``/``relu`` in, ``y`` out :attr:`LATENCY` cycles later.

    Three register stages, so that no path between registers is deeper than a few
    LUTs: the partial products (the low one maps onto a DSP slice with its output
    register), then their sum with the rounding term shifted by the multiple of 8 in
    ``shift``, then the rest of the shift and the clamp.
    """

    LATENCY = 3

    acc: In(signed(ACC_BITS))
    mult: In(unsigned(MULT_BITS))
    shift: In(unsigned(SHIFT_BITS))
    relu: In(1)
    y: Out(signed(8))

    def elaborate(self, platform):
        m = Module()
        high_bits = ACC_BITS - LOW_BITS
        low = Signal(unsigned(LOW_BITS + MULT_BITS))
        high = Signal(signed(high_bits + MULT_BITS + 1))
        shift = Signal.like(self.shift)
        relu = Signal()
        acc_high = self.acc[LOW_BITS:]
        # acc_high as two's complement: bit (high_bits - 1) weighs -2 ** (high_bits - 1).
        terms = [Mux(acc_high[i], self.mult << i, 0) for i in range(high_bits)]
        m.d.sync += [low.eq(self.acc[:LOW_BITS] * self.mult),
                     high.eq(sum(terms[:-1]) - terms[-1]),
                     shift.eq(self.shift), relu.eq(self.relu)]

        # (1 << shift) >> 1 is 1 << (shift - 1), and 0 for shift == 0. The shift is split:
        # by its multiple of 8 after the sum, by the rest before the clamp.
        rounding = (Const(1, unsigned(2 ** SHIFT_BITS)) << shift) >> 1
        total = (high << LOW_BITS) + low + rounding
        coarse = Signal(signed(ACC_BITS + MULT_BITS + 2))
        fine = Signal(3)
        coarse_relu = Signal()
        m.d.sync += [coarse.eq(total >> Cat(Const(0, 3), shift[3:])), fine.eq(shift[:3]),
                     coarse_relu.eq(relu)]

        shifted = Signal.like(coarse)
        m.d.comb += shifted.eq(coarse >> fine)
        lo = Mux(coarse_relu, 0, -128)
        m.d.sync += self.y.eq(Mux(shifted > 127, 127, Mux(shifted < lo, lo, shifted)))
        return m
