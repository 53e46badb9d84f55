# amaranth: UnusedElaboratable=no
"""2x2 max pooling (velcro.hw.kernel.pool) against the golden model, with random stalls."""

import random

import numpy as np
import pytest

from velcro.hw.conv.format import activations_layout, pack_activations, unpack_activations
from velcro.hw.kernel.pool import MaxPool2x2
from velcro.sw import golden


@pytest.mark.parametrize("shape", [(4, 8, 8), (10, 9, 7), (1, 2, 2), (5, 3, 9)])
def test_pooling_matches_golden(shape, rng, simulate, run_stream_unit, small_array):
    x = rng.integers(-128, 128, shape).astype(np.int8)
    dut = MaxPool2x2(small_array)
    out = []

    def collect(ctx):
        ctx.set(dut.o.ready, 1)
        if ctx.get(dut.o.valid):
            out.append(ctx.get(dut.o.payload.as_value()))

    bench = run_stream_unit(dut, pack_activations(x, small_array.lanes), collect=collect,
                            rng=random.Random(1))

    async def start(ctx):
        c, h, w = shape
        ctx.set(dut.groups, -(-c // small_array.lanes))
        ctx.set(dut.height, h)
        ctx.set(dut.width, w)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await bench(ctx)

    simulate(dut, start)
    c, h, w = shape
    got = unpack_activations(out, c, h // 2, w // 2, small_array.lanes)
    np.testing.assert_array_equal(got, golden.maxpool2x2(x))


def test_activation_layout_is_what_the_pooler_reads(small_array):
    assert activations_layout(small_array.lanes).size == 8 * small_array.lanes

