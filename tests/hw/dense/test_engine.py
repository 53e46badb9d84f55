# amaranth: UnusedElaboratable=no
"""The dense engine: the Amaranth design in Amaranth's simulator and its Verilog under cocotb.

The Amaranth tests need no compile step and run small configurations; the cocotb
benches (velcro.sim.dense_bench) check the generated Verilog bit-exact against the
golden model. Every cocotb scenario runs without stalls (cycles must equal the cost
model) and crossed with random idle on all five input streams and back-pressure on the
output. One test configuration (8 lanes, 16 multipliers, room for the reference
model's fc1) is compiled once per simulator and session; the shipped configuration
runs the reference model's codebook layers without stalls in the default suite, and
its index bound and stress cases in the slow test.
"""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from velcro.hw.dense.config import SHIPPED, DenseConfig, DenseLayer
from velcro.hw.dense.cost import expected_cycles, index_bound
from velcro.hw.dense.engine import DenseEngine
from velcro.sim import runner
from velcro.sim.dense_bench import (
    BOUND_LAYER,
    REFERENCE_MODES,
    build_engine,
    random_case,
    reference_cases,
    run_cases,
)

INPUTS = ("cmd", "x", "indices", "codebook", "params")


def _set(ctx, port, value):
    ctx.set(port.as_value() if hasattr(port, "as_value") else port, value)


def run_engine(config, cases, *, idle=0.0, backpressure=0.0, seed=0, max_cycles=100_000):
    """Feed ``cases`` back to back; return the output beats and the cycles of each layer."""
    dut = DenseEngine(config)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    rng = random.Random(seed)
    queues = {name: [beat for case in cases for beat in case[name]] for name in INPUTS}
    wanted = sum(len(case["expected"]) for case in cases)
    record = {"out": [], "out_cycles": [], "cmd_cycles": []}

    async def bench(ctx):
        offered = dict.fromkeys(INPUTS, False)
        for cycle in range(max_cycles):
            for name in INPUTS:
                port = getattr(dut, name)
                if not offered[name] and queues[name] and rng.random() >= idle:
                    _set(ctx, port.payload, queues[name][0])
                    ctx.set(port.valid, 1)
                    offered[name] = True
                elif not offered[name]:
                    ctx.set(port.valid, 0)
            ready = rng.random() >= backpressure
            ctx.set(dut.out.ready, ready)
            taken = [name for name in INPUTS if offered[name] and ctx.get(getattr(dut, name).ready)]
            if ready and ctx.get(dut.out.valid):
                record["out"].append(ctx.get(dut.out.payload))
                record["out_cycles"].append(cycle)
            if "cmd" in taken:
                record["cmd_cycles"].append(cycle)
            await ctx.tick()
            for name in taken:
                queues[name].pop(0)
                offered[name] = False
            if len(record["out"]) == wanted:
                return
        raise TimeoutError(f"{len(record['out'])} of {wanted} output beats in {max_cycles} cycles")

    sim.add_testbench(bench)
    sim.run()
    assert not any(queues.values()), "input beats left unread"
    cycles, last = [], 0
    for n, case in enumerate(cases):
        last += len(case["expected"])
        cycles.append(record["out_cycles"][last - 1] - record["cmd_cycles"][n] + 1)
    return record["out"], cycles


LAYERS = [
    DenseLayer(n_in=16, n_out=16, k=16, s=2),
    DenseLayer(n_in=24, n_out=20, k=256, s=4, logits=True),
    DenseLayer(n_in=16, n_out=12, mode="int8", relu=False),
    DenseLayer(n_in=40, n_out=64, k=8, s=1),
    DenseLayer(n_in=21, n_out=7, k=2, s=7, relu=False),
    DenseLayer(n_in=48, n_out=63, k=4, s=8),
]


@pytest.mark.parametrize("idle, backpressure", [(0.0, 0.0), (0.3, 0.4)])
def test_engine_matches_golden_back_to_back(idle, backpressure, small_dense):
    rng = np.random.default_rng(7)
    cases = [random_case(layer, small_dense, rng, shared=n % 2 == 1)
             for n, layer in enumerate(LAYERS)]
    out, cycles = run_engine(small_dense, cases, idle=idle, backpressure=backpressure, seed=3)
    assert out == [beat for case in cases for beat in case["expected"]]
    model = [expected_cycles(layer, small_dense) for layer in LAYERS]
    if idle == backpressure == 0:
        assert cycles == model
    else:
        assert all(c >= m for c, m in zip(cycles, model, strict=True))


def test_engine_saturates_and_wraps_like_golden(small_dense):
    rng = np.random.default_rng(11)
    layers = [DenseLayer(n_in=32, n_out=24, k=16, s=4, relu=False),
              DenseLayer(n_in=32, n_out=24, k=256, s=8, relu=True),
              DenseLayer(n_in=64, n_out=9, mode="int8", relu=False),
              DenseLayer(n_in=64, n_out=9, mode="int8", logits=True)]
    cases = [random_case(layer, small_dense, rng, extreme=True) for layer in layers]
    ys = np.concatenate([case["y"] for case in cases[:3]])
    assert {-128, 0, 127} <= set(ys.tolist()), "the extreme cases must reach both clamps"
    out, _ = run_engine(small_dense, cases)
    assert out == [beat for case in cases for beat in case["expected"]]


def test_engine_refuses_a_non_config():
    with pytest.raises(TypeError, match="DenseConfig"):
        DenseEngine({"width": 64})


def test_build_verilog_writes_the_shipped_dense_engine(tmp_path):
    from velcro.sw.cli import main

    assert main(["build", "verilog", "--out", str(tmp_path), "--engine", "dense_engine"]) == 0
    text = (tmp_path / "dense_engine.v").read_text()
    assert "module dense_engine(" in text
    for port in ("cmd__payload", "x__valid", "indices__ready", "params__valid", "busy"):
        assert port in text
    # Shipped widths: 128-bit indices, 64 table multipliers, 16 lanes of 32 bits out.
    assert f"input [{SHIPPED.width - 1}:0] indices__payload" in text
    assert f"input [{8 * SHIPPED.macs - 1}:0] codebook__payload" in text
    assert f"output [{32 * SHIPPED.lanes - 1}:0] out__payload" in text


TEST = DenseConfig(width=64, max_k=256, max_s=8, macs=16, max_n_in=1024, max_n_out=256)


STRESS = [(0.0, 0.0), (0.25, 0.5), (0.6, 0.2)]


def run(config, cases, simulator, idle, backpressure, seed=1):
    """Run ``cases`` (the bench checks every output beat); check the cycles."""
    model = build_engine(config, simulator)
    result = run_cases(model, cases, idle=idle, backpressure=backpressure, seed=seed)
    want = [expected_cycles(case["layer"], config) for case in cases]
    if idle == backpressure == 0:
        assert result["cycles"] == want
    else:
        assert all(c >= w for c, w in zip(result["cycles"], want, strict=True))
        assert result["idle_cycles"] > 0 and result["stall_cycles"] > 0
    return result


def random_layers(rng):
    """Every index width 1..8 bits (k = 2..256) and every s = 1..8, plus int8 layers."""
    layers = []
    for bits, s in zip(range(1, 9), rng.permutation(np.arange(1, 9)), strict=True):
        n_seg = int(rng.integers(1, 5))
        layers.append(DenseLayer(n_in=n_seg * int(s), n_out=int(rng.integers(1, 41)),
                                 k=1 << bits, s=int(s), relu=bool(bits % 2),
                                 logits=bits % 3 == 0))
    layers += [DenseLayer(n_in=int(rng.integers(1, 12)), n_out=int(rng.integers(1, 30)),
                          mode="int8", relu=relu) for relu in (False, True)]
    # One input per block, three blocks of 16 outputs: each block's sums wait for the
    # previous block's two rows to drain.
    layers.append(DenseLayer(n_in=1, n_out=40, mode="int8", relu=False))
    return layers


def extreme_layers():
    return [DenseLayer(n_in=64, n_out=20, k=256, s=8, relu=False),
            DenseLayer(n_in=48, n_out=9, k=4, s=3, relu=True),
            DenseLayer(n_in=40, n_out=17, mode="int8", relu=False),
            DenseLayer(n_in=40, n_out=17, mode="int8", logits=True)]


@pytest.fixture(scope="module")
def cases():
    """Random layers, then layers at the int8 and int32 edges, back to back."""
    rng = np.random.default_rng(2024)
    random = [{**random_case(layer, TEST, rng, shared=n % 3 == 1), "layer": layer}
              for n, layer in enumerate(random_layers(rng))]
    extreme = [{**random_case(layer, TEST, rng, extreme=True), "layer": layer}
               for layer in extreme_layers()]
    return random + extreme


def test_extreme_cases_reach_both_clamps(cases):
    values = np.concatenate([case["y"] for case in cases[-4:-1]])
    assert {-128, 0, 127} <= set(values.tolist())


# Each stress level on one simulator by default, alternating; the rest in the slow set.
MATRIX = [pytest.param(simulator, *stress, marks=() if (n + i) % 2 == 0 else pytest.mark.slow)
          for n, stress in enumerate(STRESS) for i, simulator in enumerate(runner.SIMULATORS)]


@pytest.mark.parametrize("simulator, idle, backpressure", MATRIX)
def test_layers_match_golden(simulator, idle, backpressure, cases):
    run(TEST, cases, simulator, idle, backpressure)


@pytest.fixture(scope="module")
def reference():
    return reference_cases(TEST, REFERENCE_MODES)


@pytest.mark.parametrize("idle, backpressure", STRESS[:2])
def test_reference_model_dense_layers(idle, backpressure, reference):
    """fc1 + ReLU and fc2 logits of the shipped CNN, int8, PQ and shared k-means."""
    cases = list(reference.values())
    run(TEST, cases, "verilator", idle, backpressure, seed=7)


def test_shipped_configuration_runs_the_reference_codebook_layers():
    """fc1 and fc2 of the shipped CNN product quantized and k-means clustered, on the
    shipped engine: bit-exact outputs and the cost model's cycles."""
    modes = {name: REFERENCE_MODES[name] for name in ("pq", "km")}
    cases = list(reference_cases(SHIPPED, modes).values())
    assert {case["layer"].mode for case in cases} == {"codebook"}
    run(SHIPPED, cases, "verilator", 0.0, 0.0)


@pytest.mark.slow
def test_shipped_configuration_reaches_the_index_bound():
    """The 1024 x 256 PQ layer (k = 256, s = 4) within 5 % of the index bound, and the
    reference layers, on the shipped configuration."""
    config = SHIPPED
    rng = np.random.default_rng(3)
    cases = [{**random_case(BOUND_LAYER, config, rng), "layer": BOUND_LAYER}]
    result = run(config, cases, "verilator", 0.0, 0.0)
    assert result["cycles"][0] <= 1.05 * index_bound(BOUND_LAYER, config)
    cases = list(reference_cases(config, REFERENCE_MODES).values())
    run(config, cases, "verilator", 0.0, 0.0)
    run(config, cases, "verilator", 0.3, 0.3)

