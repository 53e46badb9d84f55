"""Pipelined requantization of int32 accumulators to int8, exactly as the golden model.

``y = clamp((acc * mult + (1 << (shift - 1))) >> shift, lo, 127)`` with ``mult``
unsigned 16-bit, ``shift`` in ``[0, 31]`` (no rounding term when it is 0), an
arithmetic shift, and ``lo = 0`` after ReLU, ``-128`` otherwise
(:func:`velcro.sw.golden.requantize`). One result per cycle, :attr:`LATENCY` cycles
after the operands.
"""


from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Requantizer"]

ACC_BITS, MULT_BITS, SHIFT_BITS = 32, 16, 5


class Requantizer(wiring.Component):
    """``acc``/``mult``/``shift``/``relu`` in, ``y`` out :attr:`LATENCY` cycles later.

    The product is registered before the rounding add and the shift, which lets the
    multiplier map onto DSP slices with their output register.
    """

    LATENCY = 2

    acc: In(signed(ACC_BITS))
    mult: In(unsigned(MULT_BITS))
    shift: In(unsigned(SHIFT_BITS))
    relu: In(1)
    y: Out(signed(8))

    def elaborate(self, platform):
        m = Module()
        product = Signal(signed(ACC_BITS + MULT_BITS + 1))
        shift = Signal.like(self.shift)
        relu = Signal()
        m.d.sync += [product.eq(self.acc * self.mult), shift.eq(self.shift),
                     relu.eq(self.relu)]

        # (1 << shift) >> 1 is 1 << (shift - 1), and 0 for shift == 0.
        rounding = (Const(1, unsigned(2 ** SHIFT_BITS)) << shift) >> 1
        shifted = Signal(signed(ACC_BITS + MULT_BITS + 2))
        m.d.comb += shifted.eq((product + rounding) >> shift)
        lo = Mux(relu, 0, -128)
        m.d.sync += self.y.eq(Mux(shifted > 127, 127, Mux(shifted < lo, lo, shifted)))
        return m
