"""The descriptor sequencer on its own, in Amaranth's simulator.

The testbench plays the datapath: every DMA takes commands at once and is idle, the
program channel delivers the descriptor at the fetched address one cycle after the
request, every input stream offers its first beat at once, and the status block's
packer takes the block at once. The whole kernel runs
the same sequencer against real units in ``test_top.py``.
"""

from amaranth.sim import Simulator

from velcro.hw.kernel.config import SMALL, STATUS_MAGIC
from velcro.hw.kernel.cost import END_FIXED, RUN_FIXED, STEP_FIXED
from velcro.hw.kernel.descriptor import DESCRIPTOR_BYTES, Opcode, encode
from velcro.hw.kernel.regmap import REGMAP
from velcro.hw.kernel.sequencer import Sequencer

PROGRAM_BASE = 0x1000
ERROR_BIT = {f.name: f.bit for f in REGMAP["status"].fields}
ERROR_AT = {f.name: f.bit for f in REGMAP["error_at"].fields}
#: Cycles from the status block's write command to ``DONE`` here: the block is taken,
#: then the (never busy) write DMA is seen idle.
BLOCK_WAIT = 2


def run(program: list[bytes], *, images: int = 1, limit: int = 200) -> dict:
    """Run ``program`` to ``ap_done``; the status registers and the first counter
    record, read back after the run, and the status block the run gave."""
    seq = Sequencer(SMALL)
    result = {}

    async def bench(ctx):
        for dma in (seq.rd_program, seq.rd_indices, seq.rd_data, seq.wr_data):
            ctx.set(dma.idle, 1)
        for cmd in (seq.rd_program.bulk_cmd, seq.rd_program.small_cmd,
                    seq.rd_program.mask_cmd, seq.rd_indices.indices_cmd,
                    seq.rd_data.act_cmd, seq.wr_data.cmd, seq.rd_program.desc_cmd):
            ctx.set(cmd.ready, 1)
        for name in seq.offered.shape().members:
            ctx.set(seq.offered[name], 1)
        ctx.set(seq.unpack_desc.records.valid, 1)
        ctx.set(seq.status_block.ready, 1)
        blocks = []
        ctx.set(seq.csr.args.program, PROGRAM_BASE)
        ctx.set(seq.csr.args.images, images)
        ctx.set(seq.csr.ap_start, 1)
        await ctx.tick()
        ctx.set(seq.csr.ap_start, 0)
        for _ in range(limit):
            if ctx.get(seq.csr.ap_done):
                break
            fetch = seq.rd_program.desc_cmd
            if ctx.get(fetch.valid):
                index = (ctx.get(fetch.payload.addr) - PROGRAM_BASE) // DESCRIPTOR_BYTES
                ctx.set(seq.unpack_desc.records.payload,
                        int.from_bytes(program[index], "little"))
            if ctx.get(seq.status_block.valid):
                payload = seq.status_block.payload
                blocks.append({name: ctx.get(payload[name])
                               for name in payload.shape().members})
            await ctx.tick()
        else:
            raise AssertionError(f"no ap_done within {limit} cycles")
        await ctx.tick()
        assert ctx.get(seq.csr.ap_idle)
        status = seq.csr.status
        for name in status.shape().members:
            result[name] = ctx.get(status[name])
        ctx.set(seq.counter_records.addr, 0)
        await ctx.tick()
        result["record"] = {name: ctx.get(seq.counter_records.data[name])
                            for name in ("cycles", "busy", "stall_cycles")}
        result["blocks"] = blocks

    sim = Simulator(seq)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return result


def load_vec(records=1):
    return encode(Opcode.LOAD_VEC, dst=0, io={"offset": 0, "stride": 0, "records": records})


def test_an_end_per_image_finishes_at_the_modelled_cost():
    status = run([encode(Opcode.END)], images=3)
    assert status["status"] == 0
    assert status["images_done"] == 3
    assert status["cycles"] == 3 * END_FIXED + RUN_FIXED + status["stall_cycles"]
    # One cycle waiting for each descriptor, and the status block's write.
    assert status["stall_cycles"] == 3 + BLOCK_WAIT
    check_block(status)


def check_block(status):
    """One status block: the registers' figures, less the cycles its write waited."""
    (block,) = status["blocks"]
    assert block["magic"] == STATUS_MAGIC
    for name in ("status", "error_at", "images_done", "mac_cycles", "skipped"):
        assert block[name] == status[name], name
    assert block["cycles"] == status["cycles"] - BLOCK_WAIT
    assert block["stall_cycles"] == status["stall_cycles"] - BLOCK_WAIT


def test_a_dense_layer_beyond_the_limits_faults_with_its_index_and_opcode():
    too_wide = encode(Opcode.DENSE, n_out=SMALL.dense.max_n_out + 1, n_seg=1, s=1,
                      index_bits=1, x_records=1)
    status = run([load_vec(), too_wide, encode(Opcode.END)])
    assert status["status"] == 1 << ERROR_BIT["BAD_DESCRIPTOR"]
    assert status["error_at"] == (1 << ERROR_AT["PC"]) | (Opcode.DENSE << ERROR_AT["OPCODE"])
    assert status["images_done"] == 0
    # The descriptor before it ran and was accounted: fixed + busy + stall cycles.
    record = status["record"]
    assert record["busy"] >= 1
    assert record["cycles"] == STEP_FIXED + record["busy"] + record["stall_cycles"]
    check_block(status)


def test_an_unknown_opcode_faults():
    status = run([load_vec(), load_vec(), bytes(DESCRIPTOR_BYTES)])
    assert status["status"] == 1 << ERROR_BIT["BAD_DESCRIPTOR"]
    assert status["error_at"] == 2 << ERROR_AT["PC"]
    check_block(status)


def test_a_channel_last_flatten_of_a_partial_channel_group_faults():
    lanes = SMALL.conv.lanes
    flatten = encode(Opcode.FLATTEN, buf=0, dst=0, channels=lanes + 1, height=2, width=2,
                     hwc=1)
    status = run([flatten, encode(Opcode.END)])
    assert status["status"] == 1 << ERROR_BIT["BAD_DESCRIPTOR"]
    assert status["error_at"] == Opcode.FLATTEN << ERROR_AT["OPCODE"]
    check_block(status)
