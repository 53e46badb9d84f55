"""Bias and requantization of the dense engine's accumulators, ``lanes`` at a time.

Per output ``o``: ``total = acc_o + bias_o`` (int32, wrapping like the hardware
accumulator; the golden model guarantees the true sum fits), then either ``total``
itself (int32 logits) or :class:`~velcro.hw.requant.Requantizer` of it with the
output's ``mult``, ``shift`` and the layer's ReLU, the same unit the conv array uses.

Three register stages (bias add, then the requantizer's two) advance together on one
enable, whenever the output register is empty or being taken, so the output stream
may stall.
"""

from amaranth import Cat, EnableInserter, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..requant import ACC_BITS, MULT_BITS, SHIFT_BITS, Requantizer

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

        # Valid and last travel beside the bias stage and the requantizer's stages.
        delay = Requantizer.LATENCY
        valid = [Signal(name=f"valid{n}") for n in range(delay + 1)]
        last = [Signal(name=f"last{n}") for n in range(delay + 1)]
        words, octets = [], []
        for lane in range(self.lanes):
            params = self.i.payload.params[lane]
            total = Signal(signed(ACC_BITS), name=f"total{lane}")
            mult = Signal(MULT_BITS, name=f"mult{lane}")
            shift = Signal(SHIFT_BITS, name=f"shift{lane}")
            kept = [Signal(signed(ACC_BITS), name=f"kept{lane}_{n}") for n in range(delay)]
            unit = EnableInserter(advance)(Requantizer())
            m.submodules[f"requant{lane}"] = unit
            m.d.comb += [unit.acc.eq(total), unit.mult.eq(mult), unit.shift.eq(shift),
                         unit.relu.eq(self.relu)]
            with m.If(advance):
                m.d.sync += [
                    total.eq(self.i.payload.acc[lane] + params.bias),
                    mult.eq(params.mult),
                    shift.eq(params.shift),
                    kept[0].eq(total),
                    *(kept[n].eq(kept[n - 1]) for n in range(1, delay)),
                ]
            words.append(kept[-1])
            octets.append(unit.y)

        with m.If(advance):
            m.d.sync += [
                valid[0].eq(self.i.valid), last[0].eq(self.i.payload.last),
                *(valid[n].eq(valid[n - 1]) for n in range(1, delay + 1)),
                *(last[n].eq(last[n - 1]) for n in range(1, delay + 1)),
            ]
        m.d.comb += [
            self.o.valid.eq(valid[-1]),
            self.o.payload.last.eq(last[-1]),
            self.o.payload.data.eq(Mux(self.logits, Cat(*words), Cat(*octets))),
        ]
        return m
