# amaranth: UnusedElaboratable=no
"""The dense engine's requantizer (velcro.hw.dense.requant) against the golden rule."""

import numpy as np
from amaranth.sim import Simulator

from velcro.hw.dense.requant import DenseRequant
from velcro.sw import golden


def _set(ctx, port, value):
    ctx.set(port.as_value() if hasattr(port, "as_value") else port, value)


def test_requant_matches_golden_at_the_edges():
    lanes = 4
    rng = np.random.default_rng(2)
    acc = np.concatenate([[golden.ACC_MAX, golden.ACC_MIN, 0, -1, 1, 1 << 30, -(1 << 30)],
                          rng.integers(golden.ACC_MIN // 2, golden.ACC_MAX // 2, 25)])
    acc = acc[:len(acc) // lanes * lanes]
    bias = np.zeros_like(acc)
    bias[-8:] = rng.integers(-(1 << 28), 1 << 28, 8)
    mult = rng.integers(0, 1 << 16, len(acc))
    mult[:4] = [0xFFFF, 0xFFFF, 1, 0]
    shift = rng.integers(0, 32, len(acc))
    shift[:4] = [31, 31, 0, 0]
    dut = DenseRequant(lanes)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    got = {False: [], True: []}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for relu in (False, True):
            ctx.set(dut.relu, relu)
            rows = list(range(0, len(acc), lanes))
            while len(got[relu]) < len(acc) // lanes:
                ctx.set(dut.i.valid, bool(rows))
                if rows:
                    r = rows.pop(0)
                    _set(ctx, dut.i.payload, dut.i.payload.shape().const({
                        "acc": acc[r:r + lanes].tolist(),
                        "params": [{"bias": int(bias[o]), "mult": int(mult[o]),
                                    "shift": int(shift[o])} for o in range(r, r + lanes)],
                        "last": 0}).as_value().value)
                if ctx.get(dut.o.valid):
                    got[relu].append(ctx.get(dut.o.payload.data))
                await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    total = (acc + bias).astype(np.int64)
    for relu in (False, True):
        want = golden.requantize(total, mult, shift, relu)
        octets = [(word >> (8 * lane)) & 0xFF for word in got[relu] for lane in range(lanes)]
        assert np.array_equal(np.array(octets, dtype=np.uint8).view(np.int8), want)

