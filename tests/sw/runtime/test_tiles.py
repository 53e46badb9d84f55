"""Convolutions larger than the conv array's buffers, run on the kernel in tiles."""

import numpy as np
import pytest

from velcro.hw.conv.config import ConvArrayConfig
from velcro.hw.dense.config import DenseConfig
from velcro.hw.kernel.config import KernelConfig
from velcro.sw import golden
from velcro.sw.runtime.partition import partition, placement
from velcro.sw.runtime.tiles import span, tile_layer

#: A kernel whose conv array holds 8x8 maps of 4 channels.
SMALL_MAPS = KernelConfig(ConvArrayConfig(lanes=2, max_height=8, max_width=8, max_channels=4),
                          DenseConfig(width=64, max_k=256, max_s=2, macs=8, max_n_in=64,
                                      max_n_out=8), data_width=256, max_program=8)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("limit", [5, 8, 64])
def test_tiles_along_an_axis_cover_every_output_once_with_their_whole_windows(stride, limit):
    for size in range(1, 140):
        tiles = span(size, limit, stride)
        out = (size - 1) // stride + 1
        kept = [o for _, _, o0, o1 in tiles for o in range(o0, o1)]
        assert kept == list(range(out)), (size, tiles)
        for i0, i1, o0, o1 in tiles:
            assert 1 <= i1 - i0 <= limit and i0 % stride == 0, (size, tiles)
            own = (i1 - i0 - 1) // stride + 1           # the tile's own output rows
            for o in range(o0, o1):
                assert 0 <= o - i0 // stride < own
                for row in (stride * o - 1, stride * o + 1):
                    # Inside the tile, or beyond the map where padding is zero anyway.
                    assert i0 <= row < i1 or not 0 <= row < size, (size, o, tiles)
        if size <= limit:
            assert tiles == [(0, size, 0, out)]


@pytest.mark.parametrize("c_in, c_out, side, stride, relu, tiles", [
    (3, 6, 20, 1, True, 2 * 4 * 4),     # channels in 2 runs; 20 rows, 6 kept a tile
    (2, 3, 19, 2, True, 4 * 4),         # stride 2: 10 rows, 3 kept a tile
    (4, 9, 8, 1, False, 3),             # the map fits, the output channels do not
])
def test_a_conv_beyond_the_buffers_runs_in_tiles_and_equals_the_golden_model(
        rng, conv_package, golden_accelerator, images_for, c_in, c_out, side, stride, relu, tiles):
    package = conv_package(rng, c_in, c_out, side, stride, relu)
    stages = partition(package, SMALL_MAPS)
    assert stages[0].device and len(stages[0].tiles) == tiles
    device = golden_accelerator(package, SMALL_MAPS)
    images = images_for(package, 5)
    np.testing.assert_array_equal(device.run(images), golden.run(package, images))
    where, fraction, tiled = placement(device, package, device.counts())
    assert where[package.layers[0].name] == "kernel" and tiled[package.layers[0].name] == tiles
    assert all(tiled[name] == int(side == "kernel") for name, side in where.items()
               if name != package.layers[0].name)
    assert fraction > 0.5
    # Every output is computed by one tile alone; the rest of a tile is skipped, and the
    # kernel's counters (one call per tile and batch) add up over the tiles.
    layer = package.layers[0]
    parts = [tile_layer(layer, tile) for tile in stages[0].tiles]
    computed = sum(np.prod(part.out_shape) - part.attrs["skipped"] for part in parts)
    assert computed == np.prod(layer.out_shape) - layer.attrs["skipped"]
    (conv,) = [step for step in device.counters() if step.name == layer.name]
    assert conv.skipped == 5 * sum(part.attrs["skipped"] for part in parts)


def test_a_conv_with_more_input_channels_than_the_array_holds_runs_on_the_host(
        rng, conv_package, golden_accelerator, images_for):
    package = conv_package(rng, 5, 2, 6, 1)
    stages = partition(package, SMALL_MAPS)
    assert not stages[0].device and not stages[0].tiles
    device = golden_accelerator(package, SMALL_MAPS)
    images = images_for(package, 3)
    np.testing.assert_array_equal(device.run(images), golden.run(package, images))
