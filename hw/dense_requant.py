"""Bias, requantization and ReLU of the dense engine's accumulators, ``lanes`` at a time.

Per output ``o``: ``acc = acc_o + bias_o`` (int32, wrapping like the hardware
accumulator; the golden model guarantees the true sum fits), then either the int32
``acc`` itself (logits) or
``clamp((acc * mult_o + (1 << (shift_o - 1))) >> shift_o, lo, 127)`` with an
arithmetic shift, no rounding term for ``shift_o = 0`` and ``lo`` 0 with ReLU, -128
without. ``acc * mult`` needs 48 bits plus sign; the shift reads the rounded 50-bit
value, so nothing is lost before the clamp.

Three register stages (bias add, multiply, round/shift/clamp into the output
register) with one stall signal: the pipeline advances whenever its output register
is empty or being taken.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .dense_config import ACC_BITS, MULT_BITS, SHIFT_BITS

#: Per-output parameters, one beat of the parameter stream each.
PARAMS = data.StructLayout({
    "bias": signed(ACC_BITS),
    "mult": unsigned(MULT_BITS),
    "shift": unsigned(SHIFT_BITS),
})


class DenseRequant(wiring.Component):
    """Rows of accumulators and their parameters in, output beats out.

    Parameters
    ----------
    lanes : int
        Outputs per row.

    Members
    -------
    relu, logits : In(1)
        Layer settings, constant while rows flow.
    i : In(stream.Signature(...))
        ``acc[l]``, ``params[l]`` for the ``lanes`` outputs of one row, and ``last``.
    o : Out(stream.Signature(...))
        ``data``: ``lanes`` int32 words (logits) or ``lanes`` int8 bytes packed from bit 0
        (requantized), and ``last``.
    """

    def __init__(self, lanes: int):
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        self.lanes = lanes
        super().__init__({
            "relu": In(1),
            "logits": In(1),
            "i": In(stream.Signature(data.StructLayout({
                "acc": data.ArrayLayout(signed(ACC_BITS), lanes),
                "params": data.ArrayLayout(PARAMS, lanes),
                "last": 1,
            }))),
            "o": Out(stream.Signature(data.StructLayout({
                "data": ACC_BITS * lanes,
                "last": 1,
            }))),
        })

    def elaborate(self, platform):
        m = Module()
        advance = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(advance)

        valid = [Signal(name=f"valid{n}") for n in (1, 2)]
        last = [Signal(name=f"last{n}") for n in (1, 2)]
        words, octets = [], []
        for lane in range(self.lanes):
            params = self.i.payload.params[lane]
            total = Signal(signed(ACC_BITS), name=f"total{lane}")
            mult = Signal(MULT_BITS, name=f"mult{lane}")
            shift1 = Signal(SHIFT_BITS, name=f"shift1_{lane}")
            product = Signal(signed(ACC_BITS + MULT_BITS + 1), name=f"product{lane}")
            kept = Signal(signed(ACC_BITS), name=f"kept{lane}")
            shift2 = Signal(SHIFT_BITS, name=f"shift2_{lane}")
            with m.If(advance):
                m.d.sync += [
                    total.eq(self.i.payload.acc[lane] + params.bias),
                    mult.eq(params.mult),
                    shift1.eq(params.shift),
                    product.eq(total * mult),
                    kept.eq(total),
                    shift2.eq(shift1),
                ]
            rounding = (Const(1, 1) << shift2)[1:]
            shifted = Signal(signed(ACC_BITS + MULT_BITS + 2), name=f"shifted{lane}")
            m.d.comb += shifted.eq((product + rounding) >> shift2)
            low = Mux(self.relu, 0, -128)
            clamped = Mux(shifted > 127, 127, Mux(shifted < low, low, shifted))
            words.append(kept)
            octets.append(clamped[:8])

        with m.If(advance):
            m.d.sync += [
                valid[0].eq(self.i.valid), last[0].eq(self.i.payload.last),
                valid[1].eq(valid[0]), last[1].eq(last[0]),
                self.o.valid.eq(valid[1]), self.o.payload.last.eq(last[1]),
                self.o.payload.data.eq(Mux(self.logits, Cat(*words), Cat(*octets))),
            ]
        return m
