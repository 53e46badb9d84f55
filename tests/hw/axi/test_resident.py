# amaranth: UnusedElaboratable=no
"""Reads answered from the on-chip copy (velcro.hw.axi.resident), behind a read DMA."""

import random

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from velcro.hw.axi.read import ReadDma
from velcro.hw.axi.resident import ResidentReads

WORD = 8                 # bytes of a 64-bit word
BASE = 0x1000 + 3 * WORD  # the window starts inside a burst
WINDOW = 32              # words


def _dut():
    m = Module()
    m.submodules.dma = dma = ReadDma(data_width=64, channels={"a": 16}, max_burst=4)
    m.submodules.res = res = ResidentReads(data_width=64, words=WINDOW)
    wiring.connect(m, dma.axi, res.up)
    return m, dma, res


def _run(passes, memory, rng):
    """Run ``passes`` (hold, [(addr, words)], memory updates before it) through the DMA
    and the copy against a memory model with random latency; per pass, the words each
    transfer delivered and the bursts that reached the port."""
    m, dma, res = _dut()
    results = []

    async def bench(ctx):
        ctx.set(res.base, BASE)
        for hold, transfers, updates in passes:
            memory.update(updates)
            ctx.set(res.hold, hold)
            port_bursts, got = [], []
            for addr, words in transfers:
                ctx.set(dma.a_cmd.payload.addr, addr)
                ctx.set(dma.a_cmd.payload.words, words)
                ctx.set(dma.a_cmd.valid, 1)
                while not ctx.get(dma.a_cmd.ready):
                    await ctx.tick()
                await ctx.tick()
                ctx.set(dma.a_cmd.valid, 0)
                words_in, queue, cycle = [], [], 0
                while len(words_in) < words:
                    cycle += 1
                    assert cycle < 2000, "the transfer never ended"
                    ctx.set(dma.a.ready, rng.random() < 0.7)
                    ctx.set(res.down.arready, rng.random() < 0.6)
                    if ctx.get(res.down.arvalid) and ctx.get(res.down.arready):
                        start, length = ctx.get(res.down.araddr), ctx.get(res.down.arlen) + 1
                        port_bursts.append((start, length))
                        queue += [(cycle + rng.randrange(1, 6), start + i * WORD, i == length - 1)
                                  for i in range(length)]
                    due = bool(queue) and queue[0][0] <= cycle
                    ctx.set(res.down.rvalid, due)
                    if due:
                        ctx.set(res.down.rdata, memory[queue[0][1]])
                        ctx.set(res.down.rlast, queue[0][2])
                        if ctx.get(res.down.rready):
                            queue.pop(0)
                    if ctx.get(dma.a.valid) and ctx.get(dma.a.ready):
                        words_in.append(ctx.get(dma.a.payload))
                    await ctx.tick()
                assert not queue
                got.append(words_in)
            for _ in range(4):
                await ctx.tick()
            assert ctx.get(dma.idle)
            results.append((got, port_bursts))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


def test_held_reads_inside_the_window_never_reach_the_port_and_return_the_copy():
    rng = random.Random(7)
    memory = {0x1000 + i * WORD: rng.getrandbits(64) for i in range(128)}
    first = dict(memory)
    # Inside the window, straddling its end, beyond it, and inside again.
    transfers = [(BASE, 9), (BASE + 20 * WORD, 16), (BASE + 40 * WORD, 6), (BASE + 2 * WORD, 4)]
    changed = {a: v ^ 0xFFFF for a, v in memory.items()}
    (fill, fill_bursts), (held, held_bursts), (fresh, _) = _run(
        [(0, transfers, {}), (1, transfers, changed), (0, transfers, {})], memory, rng)

    def words(source, addr, n):
        return [source[addr + i * WORD] for i in range(n)]

    # Not held: everything comes from the port.
    assert fill == [words(first, a, n) for a, n in transfers]
    assert sum(n for _, n in fill_bursts) == sum(n for _, n in transfers)
    # Held: bursts wholly inside the window come from the copy made while not held (the
    # port's memory has changed since), the others from the port.
    inside = set(range(BASE, BASE + WINDOW * WORD, WORD))

    def span(bursts):
        return [{start + i * WORD for i in range(length)} for start, length in bursts]

    assert all(not burst <= inside for burst in span(held_bursts))
    assert all(burst <= inside for burst in span(fill_bursts) if burst not in span(held_bursts))
    assert len(held_bursts) < len(fill_bursts)
    from_port = set().union(*span(held_bursts))
    assert held == [[changed[a] if a in from_port else first[a]
                     for a in range(addr, addr + n * WORD, WORD)] for addr, n in transfers]
    # The window's first words come from the copy, its last from the straddling burst.
    assert held[0] == words(first, BASE, 9)
    # A new run (hold low again) reads the port, and sees what it holds now.
    assert fresh == [words(changed, a, n) for a, n in transfers]
