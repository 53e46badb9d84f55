"""cocotb bench of the dense engine (:class:`~velcro.hw.dense.engine.DenseEngine`), and its
host side.

The host side (run by pytest and ``velcro bench hw``) builds cases, layers with their
operands, stream beats and golden output beats, compiles the engine and reports its
cycle figures. The cocotb side is :func:`layers`.

The payload lists layers, each with its beats for the five input streams (encoded by
:mod:`velcro.hw.dense.format`), the number of output beats and the expected output
beats, which the caller computed with :mod:`velcro.sw.golden`. All layers are queued
at once, so commands follow each other as fast as the engine takes them; every stream
gets the same idle probability and the output the back-pressure probability.

The scoreboard compares each output beat as it arrives and fails on the first wrong
one, naming the layer and the beat. The result gives, per layer, the cycles from the
command's transfer to the layer's last output transfer (both included), and for the
run the simulated cycles and the wall time, from which the caller derives the
simulator speed.
"""

from __future__ import annotations

import dataclasses
import random
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from velcro.hw.dense.config import SHIPPED, DenseConfig, DenseLayer
from velcro.hw.dense.cost import expected_cycles, index_bound
from velcro.hw.dense.format import layer_beats, out_beats
from velcro.sw import golden
from velcro.sw.export.bits import pack_indices
from velcro.sw.export.codebooks import deploy
from velcro.sw.vq.methods import kmeans, product_quantize

from . import runner
from .streams import Clocked, Endpoint, StreamSink, StreamSource

INPUTS = ("cmd", "x", "indices", "codebook", "params")


def case(layer: DenseLayer, config: DenseConfig, x, bias, mult, shift, *, weights=None,
         codebooks=None, indices=None) -> dict:
    """Stream beats and golden output beats of ``layer`` on given operands.

    ``weights`` (int8 ``[n_out, n_in]``) in int8 mode; ``codebooks`` (``[n_seg or 1,
    k, s]``) and ``indices`` (``[n_out, n_seg]``) otherwise.
    """
    if layer.mode == "int8":
        acc = golden.dense_acc(x, weights, bias)
        beats = layer_beats(layer, config, x, bias, mult, shift, weights=weights)
    else:
        acc = golden.dense_codebook_acc(x, codebooks, indices, bias)
        beats = layer_beats(layer, config, x, bias, mult, shift, codebooks=codebooks,
                            packed=pack_indices(indices, layer.index_bits))
    y = acc.astype(np.int32) if layer.logits else golden.requantize(acc, mult, shift, layer.relu)
    return {**beats, "expected": out_beats(y, layer, config), "y": y}


def random_case(layer: DenseLayer, config: DenseConfig, rng: np.random.Generator, *,
                shared: bool = False, extreme: bool = False) -> dict:
    """:func:`case` on random operands.

    ``shared`` uses one codebook for every segment. ``extreme`` draws activations,
    codewords and weights from {-128, 127} (mostly -128), multipliers near 65535 and
    small shifts, and biases up to the edge of int32, so products, sums and the
    requantization clamp reach their limits.
    """
    if extreme:
        def int8(shape):
            return np.where(rng.random(shape) < 0.8, -128, 127).astype(np.int8)
        mult = rng.integers(65000, 1 << 16, layer.n_out)
        shift = rng.integers(0, 4, layer.n_out)
    else:
        def int8(shape):
            return rng.integers(-128, 128, shape).astype(np.int8)
        mult = rng.integers(0, 1 << 16, layer.n_out)
        shift = rng.integers(0, 32, layer.n_out)
    headroom = (1 << 31) - 1 - layer.n_in * 128 * 128
    bias = rng.integers(-headroom, headroom + 1, layer.n_out) if extreme \
        else rng.integers(-(1 << 20), 1 << 20, layer.n_out)
    x = int8(layer.n_in)
    if layer.mode == "int8":
        return case(layer, config, x, bias, mult, shift, weights=int8((layer.n_out, layer.n_in)))
    codebooks = int8((1 if shared else layer.n_seg, layer.k, layer.s))
    indices = rng.integers(0, layer.k, (layer.n_out, layer.n_seg))
    return case(layer, config, x, bias, mult, shift, codebooks=codebooks, indices=indices)


def reference_cases(config: DenseConfig, modes: dict[str, dict], image: int = 0) -> dict:
    """fc1 (1024 -> 256, ReLU) and fc2 (256 -> 10, logits) of the shipped reference CNN.

    Activations are quantized per tensor from one Fashion-MNIST test image. Each of
    ``modes`` (name -> spec) compresses both layers' float weights:
    ``{"mode": "int8"}`` to int8 per output row; ``{"method": "pq", "k": .., "s": ..}``
    (x-axis product quantization) or ``{"method": "km", "k": ..}`` (scalar k-means, one
    shared codebook) with :mod:`velcro.sw.vq.methods` and its int8
    :func:`~velcro.sw.export.codebooks.deploy` form; fc2 uses at most 8 codewords, having only
    10 rows to cluster. fc2's input is the golden fc1 output of the same mode. Returns
    ``{"<name>/fc1": case, "<name>/fc2": case}`` with ``case["layer"]`` set.
    """
    import torch

    from velcro.sw.data import load_fashion_mnist, to_float
    from velcro.sw.models import load_reference

    model = load_reference()
    names = list(model._modules)
    image_batch = to_float(load_fashion_mnist("test").images[image:image + 1])
    with torch.inference_mode():
        features = model[:names.index("fc1")](image_batch)[0].numpy()
        hidden = model[:names.index("relu5") + 1](image_batch)[0].numpy()
    x_scale = float(features.max()) / 127
    h_scale = float(hidden.max()) / 127
    x = np.clip(np.round(features / x_scale), 0, 127).astype(np.int8)

    def compress(fc, spec):
        """The layer, its operands for :func:`case` and its per-row weight scales."""
        w = fc.weight.detach().numpy()
        n_out, n_in = w.shape
        if spec.get("mode") == "int8":
            scale = np.abs(w).max(axis=1).astype(np.float64) / 127
            weights = np.round(w / scale[:, None]).astype(np.int8)
            return DenseLayer(n_in, n_out, mode="int8"), {"weights": weights}, scale
        k = min(spec["k"], 8) if n_out < 16 else spec["k"]
        q = product_quantize(w, k, spec["s"]) if spec["method"] == "pq" else kmeans(w, k)
        deployed = deploy(q)
        layer = DenseLayer(n_in, n_out, k=k, s=deployed.segment)
        return layer, {"codebooks": deployed.codebooks, "indices": deployed.indices}, \
            np.full(n_out, deployed.scale)

    cases = {}
    for name, spec in modes.items():
        layer1, ops1, w1_scale = compress(model.fc1, spec)
        layer2, ops2, w2_scale = compress(model.fc2, spec)
        layer2 = dataclasses.replace(layer2, logits=True)
        b1 = model.fc1.bias.detach().numpy().astype(np.float64)
        b2 = model.fc2.bias.detach().numpy().astype(np.float64)
        mult1, shift1 = golden.requant_params(x_scale * w1_scale / h_scale)
        first = case(layer1, config, x, np.round(b1 / (x_scale * w1_scale)).astype(np.int64),
                     mult1, shift1, **ops1)
        second = case(layer2, config, first["y"],
                      np.round(b2 / (h_scale * w2_scale)).astype(np.int64),
                      np.zeros(10, np.int64), np.zeros(10, np.int64), **ops2)
        cases[f"{name}/fc1"] = {**first, "layer": layer1}
        cases[f"{name}/fc2"] = {**second, "layer": layer2}
    return cases


def build_engine(config: DenseConfig, simulator: str | None = None) -> runner.SimModel:
    """The engine at ``config``, compiled for ``simulator`` (once per process and Verilog)."""
    from velcro.hw.dense.engine import DenseEngine

    return runner.build(config.name(), lambda: DenseEngine(config), simulator=simulator)


def run_cases(model: runner.SimModel, cases: list[dict], *, idle: float = 0.0,
              backpressure: float = 0.0, seed: int = 0, max_cycles: int = 1_000_000) -> dict:
    """Run ``cases`` back to back on ``model``; see :func:`layers` for the result."""
    layers_payload = [{name: c[name] for name in (*INPUTS, "expected")} for c in cases]
    return model.run(__name__, {"layers": layers_payload, "idle": idle,
                                "backpressure": backpressure, "seed": seed,
                                "max_cycles": max_cycles})


class Transfers(Endpoint):
    """Records the cycle of every transfer on the stream ``prefix`` of ``dut``."""

    def __init__(self, dut, prefix: str, loop: Clocked):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.loop = loop
        self.cycles: list[int] = []

    def sample(self) -> None:
        if self.valid.value and self.ready.value:
            self.cycles.append(self.loop.cycle)


class Scoreboard(Endpoint):
    """Checks the output beats of each layer against the expected ones, in order."""

    def __init__(self, sink: StreamSink, layers: list[dict]):
        self.sink = sink
        self.expected = [(n, i, beat) for n, layer in enumerate(layers)
                         for i, beat in enumerate(layer["expected"])]
        self.checked = 0

    def sample(self) -> None:
        while self.checked < len(self.sink.beats):
            layer, index, want = self.expected[self.checked]
            got = self.sink.beats[self.checked]
            assert got == want, (f"layer {layer}, output beat {index}: got {got:#x}, "
                                 f"expected {want:#x}")
            self.checked += 1


class TB:
    """Clock, reset and the stream endpoints of one engine."""

    def __init__(self, dut, idle: float, backpressure: float, seed: int):
        self.dut = dut
        rng = random.Random(seed)
        self.sources = {name: StreamSource(dut, name, idle=idle, rng=rng) for name in INPUTS}
        self.sink = StreamSink(dut, "out", backpressure=backpressure, rng=rng)
        self.loop = Clocked(dut.clk, [*self.sources.values(), self.sink])
        self.commands = self.loop.add(Transfers(dut, "cmd", self.loop))
        self.outputs = self.loop.add(Transfers(dut, "out", self.loop))

    async def reset(self) -> None:
        Clock(self.dut.clk, 10, unit="ns").start(start_high=False)
        self.dut.rst.value = 1
        for _ in range(2):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0


@cocotb.test()
async def layers(dut):
    """Every layer's outputs match the golden model; the cycles come back to the caller."""
    payload = runner.load_payload()
    tb = TB(dut, payload.get("idle", 0.0), payload.get("backpressure", 0.0),
            payload.get("seed", 0))
    await tb.reset()
    cases = payload["layers"]
    for case in cases:
        for name in INPUTS:
            tb.sources[name].send(case[name])
    scoreboard = tb.loop.add(Scoreboard(tb.sink, cases))
    total = sum(len(case["expected"]) for case in cases)
    budget = payload.get("max_cycles", 1_000_000)
    start = time.perf_counter()
    simulated = await tb.loop.run(lambda: scoreboard.checked == total, budget,
                                  "all output beats")
    wall = time.perf_counter() - start
    for name, source in tb.sources.items():
        assert not source.pending, f"{source.pending} {name} beats left unread"
    cycles, first = [], 0
    for n, case in enumerate(cases):
        first += len(case["expected"])
        cycles.append(tb.outputs.cycles[first - 1] - tb.commands.cycles[n] + 1)
    runner.save_result({"cycles": cycles, "simulated_cycles": simulated, "seconds": wall,
                        "idle_cycles": sum(s.idle_cycles for s in tb.sources.values()),
                        "stall_cycles": tb.sink.stall_cycles})


#: The layer of the acceptance figure: a 1024 x 256 PQ layer, k = 256, s = 4.
BOUND_LAYER = DenseLayer(n_in=1024, n_out=256, k=256, s=4)

#: The reference model's dense layers in each mode the figures report.
REFERENCE_MODES = {"int8": {"mode": "int8"}, "pq": {"method": "pq", "k": 16, "s": 4},
                   "km": {"method": "km", "k": 16}}


def figures(config: DenseConfig | None = None,
            simulators: tuple[str, ...] = ("verilator", "icarus"), seed: int = 0) -> dict:
    """Cycle and simulator-speed figures of the engine at ``config`` (default: shipped).

    ``dense_cycles_over_bound`` is the measured cycles of :data:`BOUND_LAYER` over its
    index-bandwidth bound; ``dense_<mode>_<fc>_cycles`` are the measured cycles of the
    reference model's layers (:data:`REFERENCE_MODES`); simulator speeds are simulated
    cycles per second of wall time inside the simulator (compiling excluded). Every run
    is checked against the golden model and against the cost model.
    """
    config = config or SHIPPED
    rng = np.random.default_rng(seed)
    target = {**random_case(BOUND_LAYER, config, rng), "layer": BOUND_LAYER}
    reference = reference_cases(config, REFERENCE_MODES)
    out = {"dense_config": config.name(), "dense_lanes": config.lanes,
           "dense_bound_layer": "1024x256 PQ k=256 s=4 (per-segment codebooks)"}
    for simulator in simulators:
        model = build_engine(config, simulator)
        out[f"dense_{simulator}_build_s"] = model.build_seconds
        # Icarus runs ~100x slower: it measures its speed on the bound layer alone.
        cases = [target, *reference.values()] if simulator == "verilator" else [target]
        result = run_cases(model, cases)
        for case, cycles in zip(cases, result["cycles"], strict=True):
            if cycles != expected_cycles(case["layer"], config):
                raise AssertionError(f"{simulator}: {case['layer']} took {cycles} cycles, "
                                     f"the cost model says "
                                     f"{expected_cycles(case['layer'], config)}")
        out[f"dense_{simulator}_cycles_per_s"] = round(
            result["simulated_cycles"] / result["seconds"])
        if simulator == "verilator":
            bound = index_bound(BOUND_LAYER, config)
            out["dense_cycles"] = result["cycles"][0]
            out["dense_index_bound"] = bound
            out["dense_cycles_over_bound"] = round(result["cycles"][0] / bound, 4)
            for (name, case), cycles in zip(reference.items(), result["cycles"][1:],
                                            strict=True):
                key = name.replace("/", "_")
                out[f"dense_{key}_cycles"] = cycles
                out[f"dense_{key}_over_bound"] = round(
                    cycles / index_bound(case["layer"], config), 3)
    return out
