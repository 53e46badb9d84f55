# amaranth: UnusedElaboratable=no
"""Record adapters (velcro.hw.kernel.records): sizes, unpacking and packing under random stalls."""

import random

import pytest
from amaranth.hdl import unsigned

from velcro.hw.kernel.records import Packer, Unpacker, record_bytes, record_words, words_for


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
def test_unpacker_delivers_each_transfer_exactly(payload_bits, simulate):
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
def test_packer_pads_the_last_word(payload_bits, simulate):
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

