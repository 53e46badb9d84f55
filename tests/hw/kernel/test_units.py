# amaranth: UnusedElaboratable=no
"""The kernel's own units in Amaranth's simulator: control registers, record adapters,
pooling, flattening, buffer reads and the descriptor format.

The whole kernel is checked through cocotb (``test_kernel_sim.py``); these run the
units directly, with random stalls on their streams.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Module, unsigned
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from velcro.hw.conv.config import ConvArrayConfig
from velcro.hw.conv.format import activations_layout, pack_activations, unpack_activations
from velcro.hw.kernel.buffers import BufferReader
from velcro.hw.kernel.csr import ControlRegisters
from velcro.hw.kernel.descriptor import DESCRIPTOR_BYTES, Opcode, decode, encode
from velcro.hw.kernel.flatten import Flatten
from velcro.hw.kernel.pool import MaxPool2x2
from velcro.hw.kernel.records import Packer, Unpacker, record_bytes, record_words, words_for
from velcro.hw.kernel.regmap import REGMAP
from velcro.sw import golden

CONFIG = ConvArrayConfig(lanes=4, max_height=9, max_width=9, max_channels=10)


def simulate(dut, bench, *, clock=1e-8):
    sim = Simulator(dut)
    sim.add_clock(clock)
    sim.add_testbench(bench)
    sim.run()


# --- control registers ---------------------------------------------------------------------

class Lite:
    """AXI4-Lite manager transactions in a testbench."""

    def __init__(self, ctx, bus):
        self.ctx, self.bus = ctx, bus

    async def write(self, address, data, strobe=0xF):
        ctx, bus = self.ctx, self.bus
        ctx.set(bus.awaddr, address)
        ctx.set(bus.wdata, data)
        ctx.set(bus.wstrb, strobe)
        ctx.set(bus.awvalid, 1)
        ctx.set(bus.wvalid, 1)
        ctx.set(bus.bready, 1)
        while not ctx.get(bus.awready):
            await ctx.tick()
        await ctx.tick()
        ctx.set(bus.awvalid, 0)
        ctx.set(bus.wvalid, 0)
        while not ctx.get(bus.bvalid):
            await ctx.tick()
        assert ctx.get(bus.bresp) == 0
        await ctx.tick()

    async def read(self, address):
        ctx, bus = self.ctx, self.bus
        ctx.set(bus.araddr, address)
        ctx.set(bus.arvalid, 1)
        ctx.set(bus.rready, 1)
        while not ctx.get(bus.arready):
            await ctx.tick()
        await ctx.tick()
        ctx.set(bus.arvalid, 0)
        while not ctx.get(bus.rvalid):
            await ctx.tick()
        value = ctx.get(bus.rdata)
        await ctx.tick()
        return value


CTRL = REGMAP["CTRL"]
BIT = {f.name: f.mask for f in CTRL.fields}


def test_control_block_follows_ap_ctrl_hs():
    dut = ControlRegisters()

    async def bench(ctx):
        lite = Lite(ctx, dut.bus)
        ctx.set(dut.ap_idle, 1)
        assert await lite.read(CTRL.offset) == BIT["AP_IDLE"]
        await lite.write(CTRL.offset, BIT["AP_START"])
        assert ctx.get(dut.ap_start)
        ctx.set(dut.ap_idle, 0)
        # The kernel runs; AP_START stays up until the kernel is ready.
        assert await lite.read(CTRL.offset) == BIT["AP_START"]
        ctx.set(dut.ap_done, 1)
        ctx.set(dut.ap_ready, 1)
        await ctx.tick()
        ctx.set(dut.ap_done, 0)
        ctx.set(dut.ap_ready, 0)
        ctx.set(dut.ap_idle, 1)
        assert not ctx.get(dut.ap_start)
        # Done and ready read once, then clear.
        assert await lite.read(CTRL.offset) == BIT["AP_DONE"] | BIT["AP_READY"] | BIT["AP_IDLE"]
        assert await lite.read(CTRL.offset) == BIT["AP_IDLE"]
        # With AUTO_RESTART the kernel is started again when ready.
        await lite.write(CTRL.offset, BIT["AP_START"] | BIT["AUTO_RESTART"])
        ctx.set(dut.ap_ready, 1)
        await ctx.tick()
        ctx.set(dut.ap_ready, 0)
        assert ctx.get(dut.ap_start)
        await lite.write(CTRL.offset, 0)
        ctx.set(dut.ap_ready, 1)
        await ctx.tick()
        assert not ctx.get(dut.ap_start)

    simulate(dut, bench)


def test_interrupt_needs_both_enables_and_clears_by_toggle():
    dut = ControlRegisters()
    isr, ier, gie = REGMAP["ISR"], REGMAP["IER"], REGMAP["GIE"]
    done = ier.field_named("DONE").mask

    async def pulse_done(ctx):
        ctx.set(dut.ap_done, 1)
        await ctx.tick()
        ctx.set(dut.ap_done, 0)

    async def bench(ctx):
        lite = Lite(ctx, dut.bus)
        await pulse_done(ctx)
        assert await lite.read(isr.offset) == 0 and not ctx.get(dut.interrupt)
        await lite.write(ier.offset, done)
        await pulse_done(ctx)
        assert await lite.read(isr.offset) == done
        assert not ctx.get(dut.interrupt)
        await lite.write(gie.offset, 1)
        assert ctx.get(dut.interrupt)
        await lite.write(isr.offset, done)
        assert await lite.read(isr.offset) == 0 and not ctx.get(dut.interrupt)

    simulate(dut, bench)


def test_arguments_take_byte_strobes_and_status_reads_back():
    dut = ControlRegisters()
    program, images, cycles = REGMAP["program"], REGMAP["images"], REGMAP["cycles"]

    async def bench(ctx):
        lite = Lite(ctx, dut.bus)
        await lite.write(program.words[0], 0x89ABCDEF)
        await lite.write(program.words[1], 0x01234567)
        await lite.write(program.words[1], 0xFF00FF00, strobe=0b1010)
        assert ctx.get(dut.args.program) == 0xFF23FF67_89ABCDEF
        await lite.write(images.offset, 100)
        assert ctx.get(dut.args.images) == 100
        assert await lite.read(program.words[1]) == 0xFF23FF67
        ctx.set(dut.status.cycles, 0x5_0000_0007)
        assert [await lite.read(o) for o in cycles.words] == [7, 5]
        # Status registers ignore writes; unmapped words read zero.
        await lite.write(cycles.offset, 0)
        assert await lite.read(cycles.offset) == 7
        assert await lite.read(0xFFC) == 0

    simulate(dut, bench)


# --- record adapters --------------------------------------------------------------------------

def test_record_sizes():
    assert record_bytes(81, 64) == 16 and record_words(81, 64) == (4, 1)
    assert record_bytes(1152, 64) == 192 and record_words(1152, 64) == (1, 3)
    assert record_bytes(1152, 32) == 160 and record_words(1152, 32) == (1, 5)
    assert record_bytes(512, 64) == 64 and words_for(3, 512, 32) == 6
    assert words_for(5, 53, 64) == 1 and words_for(9, 53, 64) == 2


def _records_to_words(records, payload_bits, word_bytes):
    size = record_bytes(payload_bits, word_bytes)
    raw = b"".join(int(r).to_bytes(size, "little") for r in records)
    raw += bytes(-len(raw) % word_bytes)
    return [int.from_bytes(raw[i:i + word_bytes], "little") for i in range(0, len(raw),
                                                                            word_bytes)]


@pytest.mark.parametrize("payload_bits", [8, 53, 81, 128, 512, 1152])
def test_unpacker_delivers_each_transfer_exactly(payload_bits):
    """Two transfers back to back under random stalls: each takes only its own words."""
    word_bits = 256
    rng = random.Random(payload_bits)
    transfers = [[rng.getrandbits(payload_bits) for _ in range(n)] for n in (7, 3)]
    words = [_records_to_words(t, payload_bits, word_bits // 8) for t in transfers]
    dut = Unpacker(word_bits, unsigned(payload_bits))

    async def bench(ctx):
        for records, stream in zip(transfers, words, strict=True):
            ctx.set(dut.start, 1)
            ctx.set(dut.count, len(records))
            await ctx.tick()
            ctx.set(dut.start, 0)
            got, sent = [], 0
            for _ in range(500):
                offer = sent < len(stream) and rng.random() < 0.7
                ctx.set(dut.words.valid, offer)
                if offer:
                    ctx.set(dut.words.payload, stream[sent])
                take = rng.random() < 0.7
                ctx.set(dut.records.ready, take)
                if take and ctx.get(dut.records.valid):
                    got.append(ctx.get(dut.records.payload))
                if offer and ctx.get(dut.words.ready):
                    sent += 1
                await ctx.tick()
            ctx.set(dut.words.valid, 0)
            assert got == records
            assert sent == len(stream), "the unpacker took words of the next transfer"
            assert not ctx.get(dut.busy)

    simulate(dut, bench)


@pytest.mark.parametrize("payload_bits", [128, 320, 512])
def test_packer_pads_the_last_word(payload_bits):
    word_bits = 256
    rng = random.Random(payload_bits)
    records = [rng.getrandbits(payload_bits) for _ in range(5)]
    expected = _records_to_words(records, payload_bits, word_bits // 8)
    dut = Packer(word_bits, unsigned(payload_bits))

    async def bench(ctx):
        ctx.set(dut.start, 1)
        ctx.set(dut.count, len(records))
        await ctx.tick()
        ctx.set(dut.start, 0)
        got, sent = [], 0
        for _ in range(300):
            offer = sent < len(records) and rng.random() < 0.6
            ctx.set(dut.records.valid, offer)
            if offer:
                ctx.set(dut.records.payload, records[sent])
            take = rng.random() < 0.6
            ctx.set(dut.words.ready, take)
            if take and ctx.get(dut.words.valid):
                got.append(ctx.get(dut.words.payload))
            if offer and ctx.get(dut.records.ready):
                sent += 1
            await ctx.tick()
        assert got == expected
        assert not ctx.get(dut.busy)

    simulate(dut, bench)


# --- pooling and flattening ---------------------------------------------------------------------

def run_stream_unit(dut, beats, *, collect, rng, max_cycles=5000):
    """Offer ``beats`` on ``dut.i`` with random idle cycles; ``collect(ctx)`` each cycle."""
    async def bench(ctx):
        sent = 0
        for _ in range(max_cycles):
            offer = sent < len(beats) and rng.random() < 0.7
            ctx.set(dut.i.valid, offer)
            if offer:
                ctx.set(dut.i.payload.as_value(), beats[sent])
            collect(ctx)
            if offer and ctx.get(dut.i.ready):
                sent += 1
            await ctx.tick()
            if sent == len(beats) and not ctx.get(dut.busy):
                break
        assert sent == len(beats) and not ctx.get(dut.busy)
    return bench


@pytest.mark.parametrize("shape", [(4, 8, 8), (10, 9, 7), (1, 2, 2), (5, 3, 9)])
def test_pooling_matches_golden(shape, rng):
    x = rng.integers(-128, 128, shape).astype(np.int8)
    dut = MaxPool2x2(CONFIG)
    out = []

    def collect(ctx):
        ctx.set(dut.o.ready, 1)
        if ctx.get(dut.o.valid):
            out.append(ctx.get(dut.o.payload.as_value()))

    bench = run_stream_unit(dut, pack_activations(x, CONFIG.lanes), collect=collect,
                            rng=random.Random(1))

    async def start(ctx):
        c, h, w = shape
        ctx.set(dut.groups, -(-c // CONFIG.lanes))
        ctx.set(dut.height, h)
        ctx.set(dut.width, w)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await bench(ctx)

    simulate(dut, start)
    c, h, w = shape
    got = unpack_activations(out, c, h // 2, w // 2, CONFIG.lanes)
    np.testing.assert_array_equal(got, golden.maxpool2x2(x))


@pytest.mark.parametrize("shape", [(4, 3, 3), (10, 2, 5), (7, 1, 1)])
def test_flatten_writes_c_order(shape, rng):
    x = rng.integers(-128, 128, shape).astype(np.int8)
    capacity = 128
    dut = Flatten(CONFIG, capacity)
    memory = np.zeros(capacity, np.int8)
    writes = []

    def collect(ctx):
        if ctx.get(dut.write.en):
            addr = ctx.get(dut.write.addr)
            memory[addr] = np.int8(np.uint8(ctx.get(dut.write.data)))
            writes.append(addr)

    bench = run_stream_unit(dut, pack_activations(x, CONFIG.lanes), collect=collect,
                            rng=random.Random(2))

    async def start(ctx):
        c, h, w = shape
        ctx.set(dut.channels, c)
        ctx.set(dut.height, h)
        ctx.set(dut.width, w)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await bench(ctx)
        assert not ctx.get(dut.overflow)

    simulate(dut, start)
    assert sorted(writes) == list(range(x.size)), "every byte written exactly once"
    np.testing.assert_array_equal(memory[:x.size], x.reshape(-1))


def test_flatten_flags_a_tensor_that_does_not_fit(rng):
    x = rng.integers(-128, 128, (4, 3, 3)).astype(np.int8)
    dut = Flatten(CONFIG, 20)
    high = []

    def collect(ctx):
        if ctx.get(dut.write.en):
            high.append(ctx.get(dut.write.addr))

    bench = run_stream_unit(dut, pack_activations(x, CONFIG.lanes), collect=collect,
                            rng=random.Random(3))

    async def start(ctx):
        ctx.set(dut.channels, 4)
        ctx.set(dut.height, 3)
        ctx.set(dut.width, 3)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await bench(ctx)
        assert ctx.get(dut.overflow)

    simulate(dut, start)
    assert max(high) < 20


def test_buffer_reader_streams_one_word_per_cycle_and_survives_stalls():
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


# --- descriptors ---------------------------------------------------------------------------

def test_descriptors_round_trip_and_reject_unknown_opcodes():
    raw = encode(Opcode.CONV, buf=1, relu=1, skip=1, stride=2, c_in=32, c_out=64, height=7,
                 width=7, weights={"offset": 4096, "records": 128},
                 requant={"offset": 64, "records": 64}, mask={"offset": 0, "records": 192})
    assert len(raw) == DESCRIPTOR_BYTES
    opcode, args = decode(raw)
    assert opcode == Opcode.CONV
    assert (args.buf, args.stride, args.c_in, args.c_out, args.weights.offset,
            args.mask.records) == (1, 2, 32, 64, 4096, 192)
    assert decode(encode(Opcode.END)) == (Opcode.END, None)
    assert decode(bytes(DESCRIPTOR_BYTES)) == (0, None)
    assert decode(bytes([14]) + bytes(DESCRIPTOR_BYTES - 1)) == (14, None)
    with pytest.raises(ValueError, match="END takes no arguments"):
        encode(Opcode.END, buf=1)
    with pytest.raises(ValueError, match="64 bytes"):
        decode(b"\x01")


def test_activation_layout_is_what_the_pooler_reads():
    assert activations_layout(CONFIG.lanes).size == 8 * CONFIG.lanes
