# amaranth: UnusedElaboratable=no
"""The index unpacker (velcro.hw.dense.unpack) alone in Amaranth's simulator."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from velcro.hw.dense import format as dense_streams
from velcro.hw.dense.unpack import DenseIndexUnpacker
from velcro.sw.export.bits import pack_indices


def _set(ctx, port, value):
    ctx.set(port.as_value() if hasattr(port, "as_value") else port, value)


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
def test_unpacker_cuts_runs_into_groups_of_one_segment(bits, small_dense):
    """Groups carry one segment's indices in row order, whatever the index width."""
    config = small_dense
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

