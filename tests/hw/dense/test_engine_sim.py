"""The dense engine's Verilog under cocotb, bit-exact against the golden model.

Every scenario runs without stalls (cycles must equal the cost model) and crossed
with random idle on all five input streams and back-pressure on the output.
One test configuration (8 lanes, 16 multipliers, room for the reference model's
fc1) is compiled once per simulator and session; the shipped configuration is
compiled only by the slow test.
"""

import numpy as np
import pytest

from velcro.hw.dense.config import SHIPPED, DenseConfig, DenseLayer, expected_cycles, index_bound
from velcro.sim import runner
from velcro.sim.dense_bench import (
    BOUND_LAYER,
    REFERENCE_MODES,
    build_engine,
    random_case,
    reference_cases,
    run_cases,
)

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


@pytest.mark.parametrize("idle, backpressure", STRESS)
@pytest.mark.parametrize("simulator", runner.SIMULATORS)
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
