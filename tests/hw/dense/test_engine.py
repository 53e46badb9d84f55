# amaranth: UnusedElaboratable=no
"""The dense engine in Amaranth's simulator, its configuration, cost model and stream formats.

The cocotb benches (``test_dense_sim.py``) check the generated Verilog; these tests
run the Amaranth design directly, which needs no compile step, on small
configurations.
"""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from velcro.hw.dense import format as dense_streams
from velcro.hw.dense.config import SHIPPED, DenseConfig, DenseLayer, expected_cycles, index_bound
from velcro.hw.dense.engine import DenseEngine
from velcro.hw.dense.requant import DenseRequant
from velcro.hw.dense.unpack import DenseIndexUnpacker
from velcro.sim.dense_bench import random_case
from velcro.sw import golden
from velcro.sw.export.bits import pack_indices

SMALL = DenseConfig(width=64, max_k=256, max_s=8, macs=8, max_n_in=128, max_n_out=64)
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
def test_engine_matches_golden_back_to_back(idle, backpressure):
    rng = np.random.default_rng(7)
    cases = [random_case(layer, SMALL, rng, shared=n % 2 == 1) for n, layer in enumerate(LAYERS)]
    out, cycles = run_engine(SMALL, cases, idle=idle, backpressure=backpressure, seed=3)
    assert out == [beat for case in cases for beat in case["expected"]]
    model = [expected_cycles(layer, SMALL) for layer in LAYERS]
    if idle == backpressure == 0:
        assert cycles == model
    else:
        assert all(c >= m for c, m in zip(cycles, model, strict=True))


def test_engine_saturates_and_wraps_like_golden():
    rng = np.random.default_rng(11)
    layers = [DenseLayer(n_in=32, n_out=24, k=16, s=4, relu=False),
              DenseLayer(n_in=32, n_out=24, k=256, s=8, relu=True),
              DenseLayer(n_in=64, n_out=9, mode="int8", relu=False),
              DenseLayer(n_in=64, n_out=9, mode="int8", logits=True)]
    cases = [random_case(layer, SMALL, rng, extreme=True) for layer in layers]
    ys = np.concatenate([case["y"] for case in cases[:3]])
    assert {-128, 0, 127} <= set(ys.tolist()), "the extreme cases must reach both clamps"
    out, _ = run_engine(SMALL, cases)
    assert out == [beat for case in cases for beat in case["expected"]]


def unpack(config, bits, n_seg, n_out, beats):
    """Run the unpacker alone over ``beats``; return the groups it emits."""
    groups = -(-n_out // config.lanes)
    tail = n_out - (groups - 1) * config.lanes
    dut = DenseIndexUnpacker(config)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    seen = []

    async def bench(ctx):
        _set(ctx, dut.settings, dut.settings.shape().const({
            "index_bits": bits, "n_seg": n_seg, "groups": groups,
            "full_shift": bits * config.lanes, "last_shift": -(-tail * bits // 8) * 8,
            "beats": len(beats)}).as_value().value)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        queue = list(beats)
        ctx.set(dut.groups.ready, 1)
        for _ in range(4 * n_seg * groups + len(beats) + 8):
            ctx.set(dut.indices.valid, bool(queue))
            if queue:
                ctx.set(dut.indices.payload, queue[0])
            took = queue and ctx.get(dut.indices.ready)
            if ctx.get(dut.groups.valid):
                group = ctx.get(dut.groups.payload)
                seen.append((list(group.index), group.row, group.bank, group.first,
                             group.last, group.final))
            await ctx.tick()
            if took:
                queue.pop(0)
        assert not queue, "index beats left unread"

    sim.add_testbench(bench)
    sim.run()
    return seen


@pytest.mark.parametrize("bits", range(1, 9))
def test_unpacker_cuts_runs_into_groups_of_one_segment(bits):
    """Groups carry one segment's indices in row order, whatever the index width."""
    config = SMALL
    rng = np.random.default_rng(bits)
    n_out, n_seg = int(rng.integers(1, 30)), int(rng.integers(1, 6))
    indices = rng.integers(0, 1 << bits, (n_out, n_seg))
    beats = dense_streams.index_beats(pack_indices(indices, bits), config)
    seen = unpack(config, bits, n_seg, n_out, beats)
    groups = -(-n_out // config.lanes)
    assert len(seen) == n_seg * groups
    for n, (index, row, bank, first, last, final) in enumerate(seen):
        j, g = divmod(n, groups)
        rows = range(g * config.lanes, min(n_out, (g + 1) * config.lanes))
        assert index[:len(rows)] == [int(indices[o, j]) for o in rows], (j, g)
        assert (row, bank, first, last, final) == (
            g, j % 2, j == 0, g == groups - 1, n == len(seen) - 1)


def test_requant_matches_golden_at_the_edges():
    lanes = 4
    rng = np.random.default_rng(2)
    acc = np.concatenate([[golden.ACC_MAX, golden.ACC_MIN, 0, -1, 1, 1 << 30, -(1 << 30)],
                          rng.integers(golden.ACC_MIN // 2, golden.ACC_MAX // 2, 25)])
    acc = acc[:len(acc) // lanes * lanes]
    bias = np.zeros_like(acc)
    bias[-8:] = rng.integers(-(1 << 28), 1 << 28, 8)
    mult = rng.integers(0, 1 << 16, len(acc))
    mult[:4] = [0xFFFF, 0xFFFF, 1, 0]
    shift = rng.integers(0, 32, len(acc))
    shift[:4] = [31, 31, 0, 0]
    dut = DenseRequant(lanes)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    got = {False: [], True: []}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for relu in (False, True):
            ctx.set(dut.relu, relu)
            rows = list(range(0, len(acc), lanes))
            while len(got[relu]) < len(acc) // lanes:
                ctx.set(dut.i.valid, bool(rows))
                if rows:
                    r = rows.pop(0)
                    _set(ctx, dut.i.payload, dut.i.payload.shape().const({
                        "acc": acc[r:r + lanes].tolist(),
                        "params": [{"bias": int(bias[o]), "mult": int(mult[o]),
                                    "shift": int(shift[o])} for o in range(r, r + lanes)],
                        "last": 0}).as_value().value)
                if ctx.get(dut.o.valid):
                    got[relu].append(ctx.get(dut.o.payload.data))
                await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    total = (acc + bias).astype(np.int64)
    for relu in (False, True):
        want = golden.requantize(total, mult, shift, relu)
        octets = [(word >> (8 * lane)) & 0xFF for word in got[relu] for lane in range(lanes)]
        assert np.array_equal(np.array(octets, dtype=np.uint8).view(np.int8), want)


# -- configuration and cost model --------------------------------------------------

@pytest.mark.parametrize("params, name", [
    ({"width": 96}, "width"),
    ({"width": 32}, "width"),
    ({"max_k": 3}, "max_k"),
    ({"max_k": 512}, "max_k"),
    ({"max_k": 8}, "max_k"),
    ({"max_s": 0}, "max_s"),
    ({"max_s": 9}, "max_s"),
    ({"macs": 24}, "macs"),
    ({"max_k": 16, "macs": 32}, "macs"),
    ({"max_n_in": 100}, "max_n_in"),
    ({"max_n_out": 8}, "max_n_out"),
])
def test_bad_configuration_names_the_parameter(params, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        DenseConfig(**params)


def test_engine_refuses_a_non_config():
    with pytest.raises(TypeError, match="DenseConfig"):
        DenseEngine({"width": 64})


@pytest.mark.parametrize("params, match", [
    ({"k": 12}, "k must be a power of two"),
    ({"k": 1}, "k must be a power of two"),
    ({"s": 3}, "s = 3 must divide n_in = 16"),
    ({"mode": "int4"}, "mode must be"),
    ({"mode": "int8", "k": 16}, "int8 mode"),
    ({"n_out": 0}, "n_out must be"),
])
def test_bad_layer_is_named(params, match):
    with pytest.raises(ValueError, match=match):
        DenseLayer(**{"n_in": 16, "n_out": 4, **params})


@pytest.mark.parametrize("layer, match", [
    (DenseLayer(n_in=256, n_out=4), "n_in = 256 exceeds max_n_in = 128"),
    (DenseLayer(n_in=16, n_out=128), "n_out = 128 exceeds max_n_out = 64"),
    (DenseLayer(n_in=16, n_out=4, s=16), "s = 16 exceeds max_s = 8"),
])
def test_layer_beyond_the_configuration_is_refused(layer, match):
    with pytest.raises(ValueError, match=match):
        expected_cycles(layer, SMALL)


def test_int8_mode_needs_the_full_table():
    with pytest.raises(ValueError, match="int8 mode needs max_k = 256"):
        expected_cycles(DenseLayer(n_in=16, n_out=4, mode="int8"),
                        DenseConfig(width=64, max_k=16, macs=8, max_n_out=64))


def test_cost_model_follows_the_slower_pipeline():
    config = DenseConfig(width=64, max_k=256, max_s=8, macs=8, max_n_in=4096, max_n_out=1024)
    # Lookup-bound: 8 groups per segment against 2 cycles of table building.
    a = expected_cycles(DenseLayer(n_in=400, n_out=64, k=16, s=1), config)
    b = expected_cycles(DenseLayer(n_in=800, n_out=64, k=16, s=1), config)
    assert b - a == 400 * 8
    # Builder-bound: 32 * 8 cycles per segment against 1 group.
    a = expected_cycles(DenseLayer(n_in=80, n_out=8, k=256, s=8), config)
    b = expected_cycles(DenseLayer(n_in=160, n_out=8, k=256, s=8), config)
    assert b - a == 10 * 32 * 8


def test_shipped_configuration_is_within_five_percent_of_the_index_bound():
    config = SHIPPED
    layer = DenseLayer(n_in=1024, n_out=256, k=256, s=4)
    assert index_bound(layer, config) == 1024 * 256 * 8 / 4 / config.width
    assert expected_cycles(layer, config) <= 1.05 * index_bound(layer, config)


# -- stream formats ----------------------------------------------------------------

def test_codebook_beats_interleave_elements_of_a_block():
    config = DenseConfig(width=64, max_k=16, max_s=2, macs=4, max_n_in=16, max_n_out=16)
    layer = DenseLayer(n_in=4, n_out=4, k=8, s=2)
    cb = np.arange(2 * 8 * 2, dtype=np.int8).reshape(2, 8, 2)
    beats = dense_streams.codebook_beats(cb, layer, config)
    # Segment 0, block 0, element 0: element 0 of codewords 0..3.
    assert beats[0] == int.from_bytes(bytes([0, 2, 4, 6]), "little")
    assert beats[1] == int.from_bytes(bytes([1, 3, 5, 7]), "little")
    assert beats[2] == int.from_bytes(bytes([8, 10, 12, 14]), "little")
    assert len(beats) == 2 * 2 * 2
    shared = dense_streams.codebook_beats(cb[:1], layer, config)
    assert shared[4:] == shared[:4]


def test_output_beats_round_trip():
    config = SMALL
    rng = np.random.default_rng(0)
    for logits in (False, True):
        layer = DenseLayer(n_in=8, n_out=13, logits=logits)
        y = rng.integers(-128, 128, 13).astype(np.int8) if not logits \
            else rng.integers(golden.ACC_MIN, golden.ACC_MAX, 13).astype(np.int32)
        beats = dense_streams.out_beats(y, layer, config)
        assert len(beats) == 2
        assert np.array_equal(dense_streams.decode_out(beats, layer, config), y)


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
