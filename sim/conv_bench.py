"""cocotb bench of the conv array (:class:`velcro.hw.conv.array.ConvArray`).

The payload (:func:`velcro.sim.runner.load_payload`) holds the array configuration,
stream stress settings and a list of cases built by :mod:`velcro.sim.conv_cases`.
A case loads an input tensor, runs a chain of ``CONV`` layers and 2x2 ``POOL`` steps
(each from one buffer into the other) and drains the last output. The scoreboard compares the
output bit-exactly with the golden output carried by the case and every measured
cycle count with the cost model's: exactly when no stream is held back, otherwise
within the idle and back-pressure cycles injected during that operation. The
measurements go back to the caller (:func:`velcro.sim.runner.save_result`).
"""

from __future__ import annotations

import random
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from velcro.hw.conv.config import Op
from velcro.hw.conv.format import (
    pack_activations,
    pack_mask,
    pack_requant,
    pack_weights,
    unpack_activations,
)

from . import runner
from .streams import Clocked, Endpoint, StreamSink, StreamSource


class Control(Endpoint):
    """Pulses ``start`` with the ``layer`` inputs and counts the ``busy`` cycles."""

    def __init__(self, dut):
        self.dut = dut
        self.start = dut.start
        self.busy = dut.busy
        self.done = dut.done
        self.start.value = 0
        self._request = None
        self._accepted = False
        self.cycles = 0
        self.finished = False

    def request(self, **fields) -> None:
        self._request = fields
        self._accepted = False
        self.cycles = 0
        self.finished = False

    def edge(self) -> None:
        if self._request is None:
            return
        if self._accepted:
            self.start.value = 0
            self._request = None
            return
        for name, value in self._request.items():
            getattr(self.dut, f"layer__{name}").value = int(value)
        self.start.value = 1

    def sample(self) -> None:
        busy = bool(self.busy.value)
        if self._request is not None and not self._accepted and self.start.value and not busy:
            self._accepted = True
        if busy:
            self.cycles += 1
            if self.done.value:
                self.finished = True


class ConvTB:
    """Clock, reset, the five streams and the operation sequencing of one conv array."""

    def __init__(self, dut, lanes: int, *, idle: float, backpressure: float, seed: int):
        self.dut = dut
        self.lanes = lanes
        rng = random.Random(seed)
        Clock(dut.clk, 10, unit="ns").start(start_high=False)
        self.control = Control(dut)
        self.ifmap = StreamSource(dut, "ifmap", idle=idle, rng=rng)
        self.weights = StreamSource(dut, "weights", idle=idle, rng=rng)
        self.requant = StreamSource(dut, "requant", idle=idle, rng=rng)
        self.mask = StreamSource(dut, "mask", idle=idle, rng=rng)
        self.ofmap = StreamSink(dut, "ofmap", backpressure=backpressure, rng=rng)
        self.sources = [self.ifmap, self.weights, self.requant, self.mask]
        self.loop = Clocked(dut.clk, [self.control, *self.sources, self.ofmap])

    async def reset(self) -> None:
        self.dut.rst.value = 1
        for _ in range(3):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    def _stress(self) -> int:
        return sum(s.idle_cycles for s in self.sources) + self.ofmap.stall_cycles

    async def operate(self, budget: int, **fields) -> tuple[int, int]:
        """Run one operation; return its busy cycles and the stress cycles injected meanwhile."""
        stress = self._stress()
        self.control.request(**fields)
        await self.loop.run(lambda: self.control.finished, budget,
                            f"{Op(fields['op']).name} done")
        # The counters take the last busy cycle in at the following edge.
        await self.loop.run(lambda: True, 1)
        assert not int(self.dut.error.value), f"{Op(fields['op']).name} rejected: {fields}"
        return self.control.cycles, self._stress() - stress

    def stats(self) -> dict:
        return {name: int(getattr(self.dut, f"stats__{name}").value)
                for name in ("cycles", "mac_cycles", "skipped")}


def _check_cycles(what: str, measured: int, expected: int, stress: int) -> None:
    if stress == 0:
        assert measured == expected, f"{what}: {measured} cycles, cost model {expected}"
    else:
        assert expected <= measured <= expected + stress, (
            f"{what}: {measured} cycles outside [{expected}, {expected} + {stress} injected]")


async def run_case(tb: ConvTB, case: dict) -> dict:
    """Load, convolve through every layer, drain; check and return the measurements."""
    lanes = tb.lanes
    x = case["x"]
    c, h, w = x.shape
    record = {"name": case["name"], "layers": []}
    buf = 0
    tb.ifmap.send(pack_activations(x, lanes))
    cycles, stress = await tb.operate(4 * x.size + 100, op=Op.LOAD, buf=buf, c_in=c,
                                      height=h, width=w)
    _check_cycles(f"{case['name']} LOAD", cycles, case["load_cycles"], stress)
    for n, spec in enumerate(case["layers"]):
        if spec.get("pool"):
            cycles, stress = await tb.operate(8 * spec["cycles"] + 100, op=Op.POOL, buf=buf,
                                              c_in=c, height=h, width=w)
            what = f"{case['name']} pool {n}"
            _check_cycles(what, cycles, spec["cycles"], stress)
            stats = tb.stats()
            assert stats["cycles"] == cycles, f"{what}: cycle counter {stats['cycles']} != {cycles}"
            assert stats["mac_cycles"] == 0 and stats["skipped"] == 0, f"{what}: {stats}"
            record["layers"].append({"cycles": cycles, "stress": stress, **stats})
            buf ^= 1
            h, w = h // 2, w // 2
            continue
        layer = spec["layer"]
        tb.weights.send(pack_weights(spec["w"], lanes))
        tb.requant.send(pack_requant(spec["bias"], spec["mult"], spec["shift"]))
        skip = spec["mask"] is not None
        if skip:
            tb.mask.send(pack_mask(spec["mask"], spec["mean"]))
        expected = spec["cycles"]
        cycles, stress = await tb.operate(
            8 * expected + 1000, op=Op.CONV, buf=buf, c_in=layer.c_in, c_out=layer.c_out,
            height=layer.height, width=layer.width, stride=layer.stride, relu=layer.relu,
            skip=skip)
        what = f"{case['name']} layer {n}"
        _check_cycles(what, cycles, expected, stress)
        stats = tb.stats()
        assert stats["cycles"] == cycles, f"{what}: cycle counter {stats['cycles']} != {cycles}"
        assert stats["mac_cycles"] == spec["mac_cycles"], (
            f"{what}: {stats['mac_cycles']} MAC cycles, expected {spec['mac_cycles']}")
        assert stats["skipped"] == spec["skipped"], (
            f"{what}: {stats['skipped']} skipped, expected {spec['skipped']}")
        for source in (tb.weights, tb.requant, tb.mask):
            assert source.pending == 0, f"{what}: {source.pending} {source.name} beats unused"
        record["layers"].append({"cycles": cycles, "stress": stress, **stats})
        buf ^= 1
        c, h, w = layer.c_out, layer.out_height, layer.out_width
    start = len(tb.ofmap.beats)
    cycles, stress = await tb.operate(8 * x.size + 100, op=Op.DRAIN, buf=buf, c_in=c,
                                      height=h, width=w)
    _check_cycles(f"{case['name']} DRAIN", cycles, case["drain_cycles"], stress)
    out = unpack_activations(tb.ofmap.beats[start:], c, h, w, lanes)
    expected = case["expected"]
    if not np.array_equal(out, expected):
        diff = np.argwhere(out != expected)
        first = tuple(int(v) for v in diff[0])
        raise AssertionError(f"{case['name']}: {len(diff)} of {out.size} outputs differ; first "
                             f"at (c, y, x) = {first}: got {out[first]}, golden "
                             f"{expected[first]}")
    record["output"] = out
    return record


async def reject(tb: ConvTB, fields: dict) -> None:
    """An operation with parameters out of range: ``error`` and one busy cycle, nothing else."""
    tb.control.request(**fields)
    await tb.loop.run(lambda: tb.control.finished, 10, "rejection")
    await tb.loop.run(lambda: True, 1)
    assert int(tb.dut.error.value) == 1, f"accepted out-of-range parameters {fields}"
    assert tb.control.cycles == 1, f"rejecting {fields} took {tb.control.cycles} cycles"


@cocotb.test()
async def conv_cases(dut):
    """Every case of the payload, in one simulation, checked against golden and cost model."""
    payload = runner.load_payload()
    tb = ConvTB(dut, payload["lanes"], idle=payload.get("idle", 0.0),
                backpressure=payload.get("backpressure", 0.0), seed=payload.get("seed", 0))
    await tb.reset()
    for fields in payload.get("invalid", ()):
        await reject(tb, fields)
    records = []
    start = time.perf_counter()
    for case in payload["cases"]:
        records.append(await run_case(tb, case))
    runner.save_result({"cases": records, "sim_cycles": tb.loop.cycle,
                        "sim_seconds": time.perf_counter() - start})
