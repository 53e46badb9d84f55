# amaranth: UnusedElaboratable=no
"""Activation buffer reads (velcro.hw.kernel.buffers) under stalls."""

import random

from amaranth.hdl import Module, unsigned
from amaranth.lib.memory import Memory

from velcro.hw.kernel.buffers import BufferReader


def test_buffer_reader_streams_one_word_per_cycle_and_survives_stalls(simulate):
    depth = 32
    values = list(range(100, 100 + depth))
    m = Module()
    m.submodules.mem = mem = Memory(shape=16, depth=depth, init=values)
    m.submodules.reader = reader = BufferReader(unsigned(16), depth)
    port = mem.read_port()
    m.d.comb += [port.addr.eq(reader.read.addr), reader.data.eq(port.data)]
    rng = random.Random(4)

    async def bench(ctx):
        for base, count, stall in ((3, 20, 0.0), (0, 32, 0.5)):
            ctx.set(reader.base, base)
            ctx.set(reader.count, count)
            ctx.set(reader.start, 1)
            await ctx.tick()
            ctx.set(reader.start, 0)
            got, cycles = [], 0
            while len(got) < count:
                take = rng.random() >= stall
                ctx.set(reader.o.ready, take)
                if take and ctx.get(reader.o.valid):
                    got.append(ctx.get(reader.o.payload))
                await ctx.tick()
                cycles += 1
            assert got == values[base:base + count]
            if not stall:
                assert cycles == count + BufferReader.LATENCY - 1
            await ctx.tick()
            assert not ctx.get(reader.busy)

    simulate(m, bench)

