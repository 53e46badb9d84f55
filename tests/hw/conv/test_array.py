"""The conv array's Verilog against the golden model, through cocotb (velcro.sim.conv_bench).

Each test builds its configuration once and runs all its cases in one simulation;
the bench checks every output bit-exactly against ``velcro.sw.golden`` and every
cycle count against ``velcro.hw.conv.cost``, and the checks are repeated here on
the returned measurements.
"""

import numpy as np
import pytest

from velcro.hw.conv.array import ConvArray
from velcro.hw.conv.config import SHIPPED, ConvArrayConfig, ConvLayer, Op
from velcro.sim import runner
from velcro.sim.conv_cases import (
    POOL,
    edge_cases,
    finish_case,
    layer_spec,
    random_case,
    reference_cases,
)

SMALL = ConvArrayConfig(lanes=4, max_height=16, max_width=16, max_channels=12)
# One element per cycle: the single-slot datapath, on Icarus.
TINY = ConvArrayConfig(lanes=2, max_height=8, max_width=8, max_channels=5, slots=1)
SKIP_RATIOS = (None, 0.0, 0.25, 0.5, 0.9, 1.0)


def run_cases(config, cases, simulator, *, stress=0.0, seed=0, invalid=()):
    model = runner.build(f"conv_array-{config.name}", lambda: ConvArray(config),
                         simulator=simulator)
    result = model.run("velcro.sim.conv_bench", {
        "lanes": config.lanes, "cases": cases, "idle": stress, "backpressure": stress,
        "seed": seed, "invalid": list(invalid)})
    assert [record["name"] for record in result["cases"]] == [case["name"] for case in cases]
    for case, record in zip(cases, result["cases"], strict=True):
        np.testing.assert_array_equal(record["output"], case["expected"], err_msg=case["name"])
        for spec, measured in zip(case["layers"], record["layers"], strict=True):
            if stress == 0:
                assert measured["cycles"] == spec["cycles"], case["name"]
            else:
                assert spec["cycles"] <= measured["cycles"] <= spec["cycles"] + measured["stress"]
            assert measured["mac_cycles"] == spec["mac_cycles"], case["name"]
            assert measured["skipped"] == spec["skipped"], case["name"]
    return result


def chained_case(config, rng, name, first, second, skip=None):
    x = rng.integers(-128, 128, (first.c_in, first.height, first.width)).astype(np.int8)
    return finish_case(name, x, [layer_spec(first, rng, skip), layer_spec(second, rng, skip)],
                       config)


def breadth_cases(config):
    """Random shapes over the whole range of ``config``, every skip ratio, the edges."""
    rng = np.random.default_rng(2024)
    lanes, hmax, wmax, cmax = (config.lanes, config.max_height, config.max_width,
                               config.max_channels)
    cases = []
    shapes = [(1, 1, 1, 1, 1), (cmax, cmax, hmax, wmax, 1), (lanes + 1, 3, 1, wmax, 2),
              (lanes - 1 or 1, 2, hmax, 1, 1), (2 * lanes + 1, lanes, hmax - 1, wmax - 2, 2)]
    for _ in range(8):
        shapes.append((int(rng.integers(1, cmax + 1)), int(rng.integers(1, cmax + 1)),
                       int(rng.integers(1, hmax + 1)), int(rng.integers(1, wmax + 1)),
                       int(rng.integers(1, 3))))
    for n, (c_in, c_out, h, w, stride) in enumerate(shapes):
        skip = SKIP_RATIOS[n % len(SKIP_RATIOS)]
        layer = ConvLayer(c_in, c_out, h, w, stride=stride, relu=n % 4 != 3)
        cases.append(random_case(f"random{n}_{c_in}to{c_out}_{h}x{w}_s{stride}_skip{skip}",
                                 layer, rng, config, skip))
    first = ConvLayer(lanes + 2, cmax, hmax, wmax - 3, stride=2)
    second = ConvLayer(cmax, 3, first.out_height, first.out_width)
    cases.append(chained_case(config, rng, "chained_stride2_then_1", first, second, skip=0.25))
    return cases + void_cases(config, rng) + pool_cases(config, rng) + edge_cases(config, rng)


def void_cases(config, rng):
    """Masks with whole channels void, nearly void or barely skipped, side by side: void
    blocks pass under computed ones and run ahead into later channels, whose halves
    must still wait for their own kernels."""
    cases = []
    for n in range(6):
        c_in = int(rng.integers(config.lanes + 1, config.max_channels + 1))
        c_out = int(rng.integers(4, config.max_channels + 1))
        h, w = int(rng.integers(3, 10)), int(rng.integers(3, 10))
        layer = ConvLayer(c_in, c_out, h, w, stride=1 + n % 2)
        spec = layer_spec(layer, rng, 0.0)
        shape = (layer.out_height, layer.out_width)
        for o, mode in enumerate(rng.integers(0, 4, c_out)):
            spec["mask"][o] = (np.ones(shape, bool) if mode == 0 else
                               rng.random(shape) < (0.95, 0.3, 0.7)[mode - 1])
        x = rng.integers(-128, 128, (c_in, h, w)).astype(np.int8)
        cases.append(finish_case(f"voids{n}_{c_in}to{c_out}_{h}x{w}", x, [spec], config))
    return cases


def pool_cases(config, rng):
    """``POOL`` on loaded maps (even, odd, smallest, largest) and between conv layers."""
    lanes, hmax, wmax, cmax = (config.lanes, config.max_height, config.max_width,
                               config.max_channels)
    cases = []
    for c, h, w in ((cmax, hmax, wmax), (lanes + 1, hmax - 1, wmax - 3), (1, 2, 2),
                    (2 * lanes, 5, 2), (lanes - 1 or 1, 3, 7)):
        x = rng.integers(-128, 128, (c, h, w)).astype(np.int8)
        cases.append(finish_case(f"pool_{c}x{h}x{w}", x, [POOL], config))
    first = ConvLayer(lanes + 1, cmax, hmax, wmax - 1)
    second = ConvLayer(cmax, lanes, hmax // 2, (wmax - 1) // 2)
    x = rng.integers(-128, 128, (first.c_in, first.height, first.width)).astype(np.int8)
    chain = [layer_spec(first, rng, 0.25), POOL, layer_spec(second, rng), POOL, POOL]
    cases.append(finish_case("conv_pool_conv_pool_pool", x, chain, config))
    return cases


INVALID = [
    {"op": Op.CONV, "buf": 0, "c_in": 0, "c_out": 1, "height": 4, "width": 4, "stride": 1},
    {"op": Op.CONV, "buf": 0, "c_in": 1, "c_out": 13, "height": 4, "width": 4, "stride": 1},
    {"op": Op.CONV, "buf": 0, "c_in": 1, "c_out": 1, "height": 4, "width": 4, "stride": 3},
    {"op": Op.LOAD, "buf": 1, "c_in": 2, "height": 17, "width": 4},
    {"op": Op.DRAIN, "buf": 1, "c_in": 2, "height": 4, "width": 0},
    {"op": Op.POOL, "buf": 0, "c_in": 1, "height": 1, "width": 1},
    {"op": Op.POOL, "buf": 1, "c_in": 2, "height": 4, "width": 1},
    {"op": Op.POOL, "buf": 0, "c_in": 13, "height": 4, "width": 4},
]


@pytest.fixture(scope="module")
def small_cases():
    return breadth_cases(SMALL)


def test_small_array_is_bit_exact_and_cycle_exact(small_cases):
    run_cases(SMALL, small_cases, "verilator", invalid=INVALID)


def test_small_array_under_idle_and_backpressure(small_cases):
    result = run_cases(SMALL, small_cases, "verilator", stress=0.3, seed=7)
    assert sum(layer["stress"] for record in result["cases"] for layer in record["layers"]) > 0


def test_tiny_array_under_icarus():
    rng = np.random.default_rng(5)
    cases = [random_case("icarus_3to4_5x7_skip50", ConvLayer(3, 4, 5, 7), rng, TINY, 0.5),
             random_case("icarus_5to2_8x8_s2", ConvLayer(5, 2, 8, 8, stride=2), rng, TINY),
             random_case("icarus_1to1_1x1_skip100", ConvLayer(1, 1, 1, 1), rng, TINY, 1.0)]
    cases += edge_cases(TINY, rng)[:1]
    x = rng.integers(-128, 128, (5, 8, 7)).astype(np.int8)
    cases.append(finish_case("icarus_pool_5x8x7_twice", x, [POOL, POOL], TINY))
    run_cases(TINY, cases, "icarus", stress=0.2, seed=3,
              invalid=[{"op": Op.LOAD, "buf": 0, "c_in": 6, "height": 1, "width": 1}])


@pytest.fixture(scope="module")
def shipped_cases():
    rng = np.random.default_rng(11)
    cases = reference_cases(SHIPPED)
    cases.append(random_case("shipped_20to2_64x64_skip25", ConvLayer(20, 2, 64, 64), rng,
                             SHIPPED, 0.25))
    cases.append(random_case("shipped_17to3_64x61_s2", ConvLayer(17, 3, 64, 61, stride=2), rng,
                             SHIPPED))
    x = rng.integers(-128, 128, (64, 64, 64)).astype(np.int8)
    cases.append(finish_case("shipped_pool_64x64x64", x, [POOL], SHIPPED))
    return cases


@pytest.mark.parametrize("stress", [0.0, 0.1])
def test_shipped_array_runs_the_reference_model_and_64x64_maps(shipped_cases, stress):
    result = run_cases(SHIPPED, shipped_cases, "verilator", stress=stress, seed=1)
    skipped = {record["name"]: record["layers"][0]["skipped"] for record in result["cases"]}
    assert skipped["reference_conv2"] > 0
