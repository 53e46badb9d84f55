# amaranth: UnusedElaboratable=no
"""Flattening (velcro.hw.kernel.flatten): C-order output and tensors that do not fit."""

import random

import numpy as np
import pytest

from velcro.hw.conv.format import pack_activations
from velcro.hw.kernel.flatten import Flatten


async def flatten_tensor(ctx, dut, bench, shape, *, hwc=0):
    """Start ``dut`` on a ``shape`` tensor (channel-last with ``hwc``), then feed it."""
    c, h, w = shape
    ctx.set(dut.channels, c)
    ctx.set(dut.height, h)
    ctx.set(dut.width, w)
    ctx.set(dut.hwc, hwc)
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)
    await bench(ctx)


@pytest.mark.parametrize("shape", [(4, 3, 3), (10, 2, 5), (7, 1, 1)])
def test_flatten_writes_c_order(shape, rng, simulate, run_stream_unit, small_array):
    x = rng.integers(-128, 128, shape).astype(np.int8)
    capacity = 128
    dut = Flatten(small_array, capacity)
    memory = np.zeros(capacity, np.int8)
    writes = []

    def collect(ctx):
        if ctx.get(dut.write.en):
            addr = ctx.get(dut.write.addr)
            memory[addr] = np.int8(np.uint8(ctx.get(dut.write.data)))
            writes.append(addr)

    bench = run_stream_unit(dut, pack_activations(x, small_array.lanes), collect=collect,
                            rng=random.Random(2))

    async def start(ctx):
        await flatten_tensor(ctx, dut, bench, shape)
        assert not ctx.get(dut.overflow)

    simulate(dut, start)
    assert sorted(writes) == list(range(x.size)), "every byte written exactly once"
    np.testing.assert_array_equal(memory[:x.size], x.reshape(-1))


def test_flatten_flags_a_tensor_that_does_not_fit(rng, simulate, run_stream_unit, small_array):
    x = rng.integers(-128, 128, (4, 3, 3)).astype(np.int8)
    dut = Flatten(small_array, 20)
    high = []

    def collect(ctx):
        if ctx.get(dut.write.en):
            high.append(ctx.get(dut.write.addr))

    bench = run_stream_unit(dut, pack_activations(x, small_array.lanes), collect=collect,
                            rng=random.Random(3))

    async def start(ctx):
        await flatten_tensor(ctx, dut, bench, (4, 3, 3))
        assert ctx.get(dut.overflow)

    simulate(dut, start)
    assert max(high) < 20



@pytest.mark.parametrize("shape", [(8, 3, 3), (4, 2, 5)])
def test_flatten_channel_last_writes_a_word_per_beat(shape, rng, simulate, run_stream_unit,
                                                     small_array):
    lanes = small_array.lanes
    x = rng.integers(-128, 128, shape).astype(np.int8)
    capacity = 128
    dut = Flatten(small_array, capacity)
    memory = np.zeros(capacity, np.int8)
    words = []
    beats = pack_activations(x, lanes)

    def collect(ctx):
        if ctx.get(dut.write.en):
            assert ctx.get(dut.write.wide), "channel-last writes words only"
            addr = ctx.get(dut.write.addr)
            word = ctx.get(dut.write.word).to_bytes(lanes, "little")
            memory[addr * lanes:(addr + 1) * lanes] = np.frombuffer(word, np.int8)
            words.append(addr)

    bench = run_stream_unit(dut, beats, collect=collect, rng=random.Random(4))

    async def start(ctx):
        await flatten_tensor(ctx, dut, bench, shape, hwc=1)
        assert not ctx.get(dut.overflow)

    simulate(dut, start)
    assert sorted(words) == list(range(len(beats))), "every word written exactly once"
    np.testing.assert_array_equal(memory[:x.size], x.transpose(1, 2, 0).reshape(-1))


def test_flatten_channel_last_flags_a_tensor_that_does_not_fit(rng, simulate, run_stream_unit,
                                                               small_array):
    x = rng.integers(-128, 128, (8, 3, 3)).astype(np.int8)
    dut = Flatten(small_array, 40)           # 10 words of the 18
    high = []

    def collect(ctx):
        if ctx.get(dut.write.en):
            high.append(ctx.get(dut.write.addr))

    bench = run_stream_unit(dut, pack_activations(x, small_array.lanes), collect=collect,
                            rng=random.Random(5))

    async def start(ctx):
        await flatten_tensor(ctx, dut, bench, (8, 3, 3), hwc=1)
        assert ctx.get(dut.overflow)

    simulate(dut, start)
    assert high and max(high) < 10
