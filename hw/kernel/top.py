"""``velcro_kernel``: the Vitis RTL kernel that runs a whole network per call.

Ports follow the Vitis RTL-kernel conventions with flat names (:mod:`velcro.hw.axi.bus`):
``ap_clk``, ``ap_rst_n`` (synchronous, active low), ``interrupt``, the
``s_axi_control`` register bank (:mod:`velcro.hw.kernel.regmap`, :mod:`velcro.hw.kernel.csr`) and
one AXI4 manager per entry of :data:`~velcro.hw.kernel.regmap.PORTS`, 64-bit addresses,
``data_width``-bit data:

``m_axi_program``
    Reads the descriptor program and the network constants: conv kernels,
    requantization factors, skip masks and means, dense codebooks and parameters.
``m_axi_indices``
    Reads the dense index streams, the heaviest traffic, on a port (and memory bank)
    of their own.
``m_axi_data``
    Reads the inputs, writes the results and the per-descriptor counters.

Datapath
--------
Three read DMAs (:class:`~velcro.hw.axi.read.ReadDma`) feed the engines through
:class:`~velcro.hw.kernel.records.Unpacker` adapters; a channel that serves two kinds of
stream (conv kernels or dense codebooks, conv requantization or dense parameters)
fans out to both adapters, and only the one started by the current descriptor takes
words. The conv array keeps feature maps on chip between layers (its ping-pong
buffers). Pooling drains the array through :class:`~velcro.hw.kernel.pool.MaxPool2x2` into
an on-chip buffer and loads the pooled map back; flattening drains it through
:class:`~velcro.hw.kernel.flatten.Flatten` into the dense engine's activation buffer, two
halves that dense layers read and write alternately. Results leave through
:class:`~velcro.hw.kernel.records.Packer` and the write DMA.

Sequencer
---------
Per descriptor: ``FETCH`` (request the 64 bytes) -> ``WAIT_DESC`` -> ``DECODE``
(opcode and ranges) -> ``ADDR`` (addresses) -> ``ISSUE`` (every DMA command and
adapter of the op, in one cycle) -> ``PREFETCH`` (until the first data of every
input stream is on chip, and two output channels' kernels for a conv layer) ->
``RUN`` (start the engine, wait for its end) -> op-specific tails -> ``CHECK``
(every stream consumed exactly, the engine accepted its parameters) -> ``ACCOUNT``
(add the descriptor's counters to its record). ``END`` moves to the next image or,
after the last, writes the counter records and finishes. Engines and adapters are
reset at the start of every run, and again when a run ends with an error: ``ABORT``
flushes the DMAs (requests already made are completed, their data dropped) and the
run ends with ``ap_done`` like any other.

Counters: ``busy`` counts the cycles in ``RUN`` (the engines' cost-model cycles plus
the cycle that starts them), ``stall_cycles`` the cycles in ``WAIT_DESC``,
``PREFETCH`` and waits for the write DMA; every other cycle of a descriptor is a
fixed cost of the sequencer (:mod:`velcro.hw.kernel.cost`).
"""

from __future__ import annotations

from contextlib import contextmanager

from amaranth.hdl import Cat, ClockDomain, Const, Module, Mux, ResetInserter, Signal, unsigned
from amaranth.lib import fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..axi.bus import (
    axi4_lite_signature,
    axi4_signature,
    axi4_write_signature,
    connect_flat,
    flat_members,
    tie_off_flat,
)
from ..axi.read import ReadDma
from ..axi.write import WriteDma
from ..conv.array import ConvArray
from ..conv.config import Op
from ..conv.format import MASK_LAYOUT, REQUANT_LAYOUT, activations_layout, weights_layout
from ..dense.engine import DenseEngine
from ..dense.requant import PARAMS
from .buffers import BufferReader
from .config import COUNTERS, SHIPPED, KernelConfig
from .csr import ControlRegisters
from .descriptor import DESCRIPTOR, DESCRIPTOR_BYTES, Opcode
from .flatten import Flatten
from .pool import MaxPool2x2
from .records import Packer, Unpacker, record_words
from .regmap import PORTS, REGMAP

__all__ = ["VelcroKernel"]

OP_BITS = 32


class VelcroKernel(wiring.Component):
    """The Vitis RTL kernel.

    Parameters
    ----------
    config : KernelConfig

    Attributes
    ----------
    ap_clk, ap_rst_n : In(1)
    interrupt : Out(1)
    s_axi_control_* : the control port (AXI4-Lite subordinate)
    m_axi_<port>_* : AXI4 managers, one per :data:`~velcro.hw.kernel.regmap.PORTS` entry
    """

    def __init__(self, config: KernelConfig = SHIPPED):
        if not isinstance(config, KernelConfig):
            raise TypeError(f"config must be a KernelConfig, not {config!r}")
        self.config = config
        members = {"ap_clk": In(1), "ap_rst_n": In(1), "interrupt": Out(1)}
        members.update(flat_members("s_axi_control",
                                    axi4_lite_signature(addr_width=REGMAP.addr_bits),
                                    flipped=True))
        for port in PORTS:
            members.update(flat_members(port, axi4_signature(data_width=config.data_width)))
        super().__init__(members)

    def elaborate(self, platform):
        cfg = self.config
        W, wb = cfg.data_width, cfg.word_bytes
        B = cfg.max_burst
        lanes = cfg.conv.lanes
        dense_cfg = cfg.dense
        m = Module()

        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += [cd.clk.eq(self.ap_clk), cd.rst.eq(~self.ap_rst_n)]

        # --- control registers --------------------------------------------------------
        m.submodules.csr = csr = ControlRegisters(REGMAP)
        connect_flat(m, self, "s_axi_control", csr.bus)
        m.d.comb += self.interrupt.eq(csr.interrupt)
        args = csr.args

        # --- DMAs -----------------------------------------------------------------------
        m.submodules.rd_program = rd_prog = ReadDma(
            data_width=W, max_burst=B,
            channels={"desc": B, "bulk": 4 * B, "small": B, "mask": 2 * B})
        m.submodules.rd_indices = rd_idx = ReadDma(data_width=W, max_burst=B,
                                                   channels={"indices": 4 * B})
        m.submodules.rd_data = rd_data = ReadDma(data_width=W, max_burst=B,
                                                 channels={"act": 2 * B})
        m.submodules.wr_data = wr = WriteDma(data_width=W, depth=2 * B, max_burst=B)
        write_half = axi4_write_signature(data_width=W)
        connect_flat(m, self, "m_axi_program", rd_prog.axi)
        tie_off_flat(m, self, "m_axi_program", write_half)
        connect_flat(m, self, "m_axi_indices", rd_idx.axi)
        tie_off_flat(m, self, "m_axi_indices", write_half)
        connect_flat(m, self, "m_axi_data", rd_data.axi)
        connect_flat(m, self, "m_axi_data", wr.axi)
        readers = (rd_prog, rd_idx, rd_data)

        # --- datapath, reset at every start and abort ---------------------------------------
        dp_reset = Signal()

        def datapath(name, unit):
            m.submodules[name] = ResetInserter(dp_reset)(unit)
            return unit

        conv = datapath("conv", ConvArray(cfg.conv))
        dense = datapath("dense", DenseEngine(dense_cfg))
        act = activations_layout(lanes)
        unpack = {
            "desc": Unpacker(W, 8 * DESCRIPTOR_BYTES),
            "weights": Unpacker(W, weights_layout(lanes)),
            "codebook": Unpacker(W, 8 * dense_cfg.macs),
            "requant": Unpacker(W, REQUANT_LAYOUT),
            "params": Unpacker(W, PARAMS),
            "mask": Unpacker(W, MASK_LAYOUT),
            "indices": Unpacker(W, dense_cfg.width),
            "act": Unpacker(W, act),
            "vec": Unpacker(W, dense_cfg.width),
        }
        pack = {
            "map": Packer(W, act),
            "out": Packer(W, 32 * dense_cfg.lanes),
            "counters": Packer(W, COUNTERS),
        }
        for name, unit in {**{f"unpack_{k}": v for k, v in unpack.items()},
                           **{f"pack_{k}": v for k, v in pack.items()}}.items():
            datapath(name, unit)
        wfifo = datapath("weight_fifo", fifo.SyncFIFOBuffered(
            width=weights_layout(lanes).size, depth=cfg.weight_fifo_depth))
        pool = datapath("pool", MaxPool2x2(cfg.conv))
        flat = datapath("flatten", Flatten(cfg.conv, cfg.vector_bytes))

        def fan_out(source, *adapters):
            """A DMA channel feeds the adapters; only a started one takes words."""
            for adapter in adapters:
                m.d.comb += [adapter.words.valid.eq(source.valid),
                             adapter.words.payload.eq(source.payload)]
            m.d.comb += source.ready.eq(Cat(a.words.ready for a in adapters).any())

        fan_out(rd_prog.desc, unpack["desc"])
        fan_out(rd_prog.bulk, unpack["weights"], unpack["codebook"])
        fan_out(rd_prog.small, unpack["requant"], unpack["params"])
        fan_out(rd_prog.mask, unpack["mask"])
        fan_out(rd_idx.indices, unpack["indices"])
        fan_out(rd_data.act, unpack["act"], unpack["vec"])

        # Conv array inputs.
        m.d.comb += [
            wfifo.w_data.eq(unpack["weights"].records.payload),
            wfifo.w_en.eq(unpack["weights"].records.valid),
            unpack["weights"].records.ready.eq(wfifo.w_rdy),
            conv.weights.payload.eq(wfifo.r_data), conv.weights.valid.eq(wfifo.r_rdy),
            wfifo.r_en.eq(conv.weights.ready),
        ]
        wiring.connect(m, unpack["requant"].records, conv.requant)
        wiring.connect(m, unpack["mask"].records, conv.mask)
        # Dense engine inputs.
        wiring.connect(m, unpack["indices"].records, dense.indices)
        wiring.connect(m, unpack["codebook"].records, dense.codebook)
        wiring.connect(m, unpack["params"].records, dense.params)

        # Pooling buffer: pooled map in, loaded back into the array.
        m.submodules.pool_buffer = tmem = Memory(shape=act, depth=cfg.pool_words, init=[])
        t_write = tmem.write_port()
        t_reader = datapath("pool_reader", BufferReader(act, cfg.pool_words))
        t_read = tmem.read_port()
        m.d.comb += [t_read.addr.eq(t_reader.read.addr), t_reader.data.eq(t_read.data)]
        t_count = Signal(range(cfg.pool_words + 1))
        m.d.comb += [pool.o.ready.eq(1), t_write.addr.eq(t_count),
                     t_write.data.eq(pool.o.payload), t_write.en.eq(pool.o.valid)]
        with m.If(pool.o.valid):
            m.d.sync += t_count.eq(t_count + 1)

        # Activation buffer of the dense engine: two halves of vector_words words.
        vw = cfg.vector_words
        xb = dense_cfg.x_bytes
        m.submodules.vector_buffer = xmem = Memory(shape=unsigned(dense_cfg.width),
                                                   depth=2 * vw, init=[])
        x_write = xmem.write_port(granularity=8)
        x_reader = datapath("vector_reader", BufferReader(unsigned(dense_cfg.width), 2 * vw))
        x_read = xmem.read_port()
        m.d.comb += [x_read.addr.eq(x_reader.read.addr), x_reader.data.eq(x_read.data)]
        wiring.connect(m, x_reader.o, dense.x)

        # Counter records: one per descriptor, accumulated over the images of a run.
        m.submodules.counters = cmem = Memory(shape=COUNTERS, depth=cfg.max_program, init=[])
        c_write = cmem.write_port()
        c_old = cmem.read_port()
        c_reader = datapath("counter_reader", BufferReader(COUNTERS, cfg.max_program))
        c_out = cmem.read_port()
        m.d.comb += [c_out.addr.eq(c_reader.read.addr), c_reader.data.eq(c_out.data)]
        wiring.connect(m, c_reader.o, pack["counters"].records)

        # --- sequencer state ----------------------------------------------------------
        desc = Signal(DESCRIPTOR)
        op = desc.opcode
        mp, cv, dn, vc = desc.args.map, desc.args.conv, desc.args.dense, desc.args.vec
        pc = Signal(16)
        end_pc = Signal(16)
        image = Signal(32)
        base = {name: Signal(64, name=f"base_{name}")
                for name in ("program", "indices", "inputs", "outputs", "counters")}
        images = Signal(32)
        watchdog = Signal(32)
        image_offset = Signal(64)
        io_addr = Signal(64)
        addr = {name: Signal(64, name=f"addr_{name}")
                for name in ("bulk", "small", "mask", "indices")}
        kick = Signal()                   # first cycle of RUN / POOL_RUN
        out_seen = Signal(range(dense_cfg.max_groups + 1))
        x_count = Signal(range(2 * vw + 1))

        status = Signal(REGMAP["status"].width)
        error_pc = Signal(16)
        error_op = Signal(8)
        images_done = Signal(32)
        total = {name: Signal(64, name=f"total_{name}")
                 for name in ("cycles", "mac_cycles", "skipped", "stall_cycles")}
        op_cycles = Signal(OP_BITS)
        op_busy = Signal(OP_BITS)
        op_stall = Signal(OP_BITS)
        in_busy = Signal()
        in_stall = Signal()
        bad = Signal()

        def words(stream: str, records):
            per_word, per_record = record_words(cfg.payload_bits(stream), wb)
            if per_record == 1:
                return (records + per_word - 1) >> exact_log2(per_word)
            return records * per_record

        def is_op(*opcodes):
            return Cat(op == code for code in opcodes).any()

        dense_beats = (dn.n_out + dense_cfg.lanes - 1) >> exact_log2(dense_cfg.lanes)
        half = {"src": Mux(dn.src, vw, 0), "dst": Mux(Mux(op == Opcode.DENSE, dn.dst,
                                                          Mux(op == Opcode.FLATTEN, mp.dst,
                                                              vc.dst)), vw, 0)}

        # --- conv array control -----------------------------------------------------------
        layer = conv.layer
        pool_load = Signal()
        with m.Switch(op):
            with m.Case(Opcode.CONV):
                m.d.comb += [layer.op.eq(Op.CONV), layer.buf.eq(cv.buf),
                             layer.c_in.eq(cv.c_in), layer.c_out.eq(cv.c_out),
                             layer.height.eq(cv.height), layer.width.eq(cv.width),
                             layer.stride.eq(cv.stride), layer.relu.eq(cv.relu),
                             layer.skip.eq(cv.skip)]
            with m.Case(Opcode.LOAD_MAP, Opcode.POOL, Opcode.FLATTEN, Opcode.STORE_MAP):
                loading = (op == Opcode.LOAD_MAP) | pool_load
                m.d.comb += [layer.op.eq(Mux(loading, Op.LOAD, Op.DRAIN)),
                             layer.buf.eq(mp.buf), layer.c_in.eq(mp.channels),
                             layer.height.eq(Mux(pool_load, mp.height >> 1, mp.height)),
                             layer.width.eq(Mux(pool_load, mp.width >> 1, mp.width))]
        m.d.comb += conv.start.eq(kick & is_op(Opcode.LOAD_MAP, Opcode.CONV, Opcode.POOL,
                                               Opcode.FLATTEN, Opcode.STORE_MAP))
        groups = sum(mp.channels > g * lanes for g in range(cfg.conv.max_groups))
        m.d.comb += [pool.groups.eq(groups), pool.height.eq(mp.height),
                     pool.width.eq(mp.width), pool.start.eq(kick & (op == Opcode.POOL) &
                                                           ~pool_load),
                     flat.channels.eq(mp.channels), flat.height.eq(mp.height),
                     flat.width.eq(mp.width), flat.start.eq(kick & (op == Opcode.FLATTEN))]
        # Where the array's input comes from and its output goes.
        with m.If(op == Opcode.POOL):
            wiring.connect(m, t_reader.o, conv.ifmap)
        with m.Else():
            wiring.connect(m, unpack["act"].records, conv.ifmap)
        with m.Switch(op):
            with m.Case(Opcode.POOL):
                wiring.connect(m, conv.ofmap, pool.i)
            with m.Case(Opcode.FLATTEN):
                wiring.connect(m, conv.ofmap, flat.i)
            with m.Case(Opcode.STORE_MAP):
                wiring.connect(m, conv.ofmap, pack["map"].records)

        # --- dense engine control ----------------------------------------------------------
        cmd = dense.cmd.payload
        m.d.comb += [cmd.n_seg.eq(dn.n_seg), cmd.s.eq(dn.s), cmd.index_bits.eq(dn.index_bits),
                     cmd.n_out.eq(dn.n_out), cmd.relu.eq(dn.relu), cmd.logits.eq(dn.logits),
                     dense.cmd.valid.eq(kick & (op == Opcode.DENSE))]
        if dense_cfg.int8:
            m.d.comb += cmd.int8.eq(dn.int8)
        out_taken = dense.out.valid & dense.out.ready
        with m.If(dn.to_memory):
            m.d.comb += [pack["out"].records.valid.eq(dense.out.valid),
                         pack["out"].records.payload.eq(dense.out.payload),
                         dense.out.ready.eq(pack["out"].records.ready)]
        with m.Else():
            m.d.comb += dense.out.ready.eq(1)
        with m.If(out_taken):
            m.d.sync += out_seen.eq(out_seen + 1)

        # --- activation buffer writes ----------------------------------------------------------
        vec_take = unpack["vec"].records.valid & unpack["vec"].records.ready
        m.d.comb += unpack["vec"].records.ready.eq(1)
        x_byte = flat.write.addr[:exact_log2(xb)]
        with m.Switch(op):
            with m.Case(Opcode.FLATTEN):
                m.d.comb += [x_write.addr.eq(half["dst"] + (flat.write.addr >> exact_log2(xb))),
                             x_write.data.eq(Cat(flat.write.data for _ in range(xb))),
                             x_write.en.eq(Mux(flat.write.en, Const(1, xb) << x_byte, 0))]
            with m.Case(Opcode.LOAD_VEC):
                m.d.comb += [x_write.addr.eq(half["dst"] + x_count),
                             x_write.data.eq(unpack["vec"].records.payload),
                             x_write.en.eq(Mux(vec_take, (1 << xb) - 1, 0))]
            with m.Case(Opcode.DENSE):
                m.d.comb += [x_write.addr.eq(half["dst"] + x_count),
                             x_write.data.eq(dense.out.payload[:dense_cfg.width]),
                             x_write.en.eq(Mux(out_taken & ~dn.to_memory, (1 << xb) - 1, 0))]
        with m.If(vec_take | (out_taken & ~dn.to_memory)):
            m.d.sync += x_count.eq(x_count + 1)

        # --- write DMA source ------------------------------------------------------------------
        writing_counters = Signal()
        with m.If(writing_counters):
            wiring.connect(m, pack["counters"].words, wr.data)
        with m.Elif(op == Opcode.STORE_MAP):
            wiring.connect(m, pack["map"].words, wr.data)
        with m.Else():
            wiring.connect(m, pack["out"].words, wr.data)

        # --- faults -----------------------------------------------------------------------------
        axi_read = Cat(r.error for r in readers).any()
        over_time = (watchdog != 0) & (op_cycles >= watchdog)
        status_reg = REGMAP["status"]
        fault = Signal(status_reg.width)
        for name, cause in (("AXI_READ", axi_read), ("AXI_WRITE", wr.error),
                            ("BAD_DESCRIPTOR", bad), ("WATCHDOG", over_time)):
            m.d.comb += fault[status_reg.field_named(name).bit].eq(cause)

        # --- the sequencer --------------------------------------------------------------------
        c = cfg.conv
        d = dense_cfg
        streams_left = {
            Opcode.LOAD_MAP: unpack["act"].busy,
            Opcode.CONV: unpack["weights"].busy | wfifo.r_rdy | unpack["requant"].busy |
            unpack["mask"].busy,
            Opcode.DENSE: unpack["indices"].busy | unpack["codebook"].busy |
            unpack["params"].busy | x_reader.busy | dense.busy,
            Opcode.LOAD_VEC: unpack["vec"].busy,
            Opcode.FLATTEN: flat.overflow,
        }
        # The DMA commands each op issues, and the addresses they use.
        needs = {
            "act": is_op(Opcode.LOAD_MAP, Opcode.LOAD_VEC),
            "bulk": (op == Opcode.CONV) | ((op == Opcode.DENSE) & (dn.codebook.records != 0)),
            "small": is_op(Opcode.CONV, Opcode.DENSE),
            "mask": (op == Opcode.CONV) & cv.skip,
            "indices": op == Opcode.DENSE,
            "write": (op == Opcode.STORE_MAP) | ((op == Opcode.DENSE) & dn.to_memory),
        }
        used_addr = {"act": io_addr, "bulk": addr["bulk"], "small": addr["small"],
                     "mask": addr["mask"], "indices": addr["indices"], "write": io_addr}
        misaligned = Signal()
        m.d.comb += misaligned.eq(
            Cat(needs[k] & (used_addr[k][:exact_log2(wb)] != 0) for k in needs).any())

        # Descriptor checks, each in the state that makes it (registered inputs only).
        def beyond(value, limit, low=1):
            return (value < low) | (value > limit)

        map_shape = beyond(mp.channels, c.max_channels) | beyond(mp.height, c.max_height) | \
            beyond(mp.width, c.max_width)
        decode_checks = {
            Opcode.LOAD_MAP: map_shape,
            Opcode.STORE_MAP: map_shape,
            Opcode.FLATTEN: map_shape,
            Opcode.POOL: map_shape | (mp.height < 2) | (mp.width < 2),
            Opcode.CONV: beyond(cv.c_in, c.max_channels) | beyond(cv.c_out, c.max_channels) |
            beyond(cv.height, c.max_height) | beyond(cv.width, c.max_width),
            Opcode.DENSE: beyond(dn.n_out, d.max_n_out) | beyond(dn.n_seg, d.max_n_in) |
            beyond(dn.s, d.max_s) | (~dn.int8 & beyond(dn.index_bits, d.index_bits)) |
            (dn.int8 & Const(int(not d.int8), 1)) | beyond(dn.x_records, vw, 0) |
            (~dn.to_memory & (dense_beats > vw)),
            Opcode.LOAD_VEC: beyond(vc.io.records, vw, 0),
            Opcode.END: Const(0, 1),
        }
        decode_bad = Signal()
        with m.Switch(op):
            for code, check in decode_checks.items():
                with m.Case(code):
                    m.d.comb += decode_bad.eq(check)
            with m.Default():
                m.d.comb += decode_bad.eq(1)
        check_bad = Signal()
        left = Const(0, 1)
        for code, busy in streams_left.items():
            left = left | ((op == code) & busy)
        m.d.comb += check_bad.eq(left | (is_op(Opcode.LOAD_MAP, Opcode.CONV, Opcode.POOL,
                                               Opcode.FLATTEN, Opcode.STORE_MAP) & conv.error))

        with m.FSM() as fsm:
            @contextmanager
            def active(name):
                with m.State(name):
                    with m.If(fault.any()):
                        m.next = "ABORT"
                    with m.Else():
                        yield

            with m.State("IDLE"):
                m.d.comb += csr.ap_idle.eq(1)
                m.d.sync += kick.eq(0)
                with m.If(csr.ap_start):
                    m.d.comb += [dp_reset.eq(1)] + [r.clear.eq(1) for r in readers] + \
                        [wr.clear.eq(1)]
                    m.d.sync += [base[name].eq(args[name]) for name in base]
                    m.d.sync += [images.eq(args.images), watchdog.eq(args.watchdog),
                                 image.eq(0), pc.eq(0), end_pc.eq(0), status.eq(0),
                                 error_pc.eq(0), error_op.eq(0), images_done.eq(0),
                                 op_cycles.eq(0)]
                    m.d.sync += [t.eq(0) for t in total.values()]
                    with m.If(args.images == 0):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "FETCH"

            with active("FETCH"):
                m.d.comb += [rd_prog.desc_cmd.valid.eq(1),
                             rd_prog.desc_cmd.payload.addr.eq(base["program"] +
                                                              pc * DESCRIPTOR_BYTES),
                             rd_prog.desc_cmd.payload.words.eq(words("descriptor", 1)),
                             unpack["desc"].start.eq(1), unpack["desc"].count.eq(1)]
                with m.If(rd_prog.desc_cmd.ready):
                    m.next = "WAIT_DESC"

            with active("WAIT_DESC"):
                m.d.comb += [in_stall.eq(1), unpack["desc"].records.ready.eq(1)]
                with m.If(unpack["desc"].records.valid):
                    m.d.sync += desc.eq(unpack["desc"].records.payload[:DESCRIPTOR.size])
                    m.next = "DECODE"

            with active("DECODE"):
                stride = Mux(op == Opcode.DENSE, dn.out.stride,
                             Mux(op == Opcode.LOAD_VEC, vc.io.stride, mp.io.stride))
                m.d.sync += image_offset.eq(image * stride)
                with m.If(op == Opcode.END):
                    m.next = "END_IMAGE"
                with m.Else():
                    m.next = "ADDR"

            with active("ADDR"):
                io = Mux(op == Opcode.DENSE, dn.out.offset,
                         Mux(op == Opcode.LOAD_VEC, vc.io.offset, mp.io.offset))
                io_base = Mux(is_op(Opcode.LOAD_MAP, Opcode.LOAD_VEC), base["inputs"],
                              base["outputs"])
                m.d.sync += [
                    io_addr.eq(io_base + io + image_offset),
                    addr["bulk"].eq(base["program"] + Mux(op == Opcode.CONV, cv.weights.offset,
                                                          dn.codebook.offset)),
                    addr["small"].eq(base["program"] + Mux(op == Opcode.CONV,
                                                           cv.requant.offset,
                                                           dn.params.offset)),
                    addr["mask"].eq(base["program"] + cv.mask.offset),
                    addr["indices"].eq(base["indices"] + dn.indices.offset),
                ]
                m.next = "ISSUE"

            with active("ISSUE"):
                commands = {"act": rd_data.act_cmd, "bulk": rd_prog.bulk_cmd,
                            "small": rd_prog.small_cmd, "mask": rd_prog.mask_cmd,
                            "indices": rd_idx.indices_cmd, "write": wr.cmd}
                all_ready = Cat(~needs[k] | commands[k].ready for k in needs).all()
                conv_op = op == Opcode.CONV
                act_records = Mux(op == Opcode.LOAD_VEC, vc.io.records, mp.io.records)
                m.d.comb += [
                    rd_data.act_cmd.payload.addr.eq(io_addr),
                    rd_data.act_cmd.payload.words.eq(Mux(op == Opcode.LOAD_VEC,
                                                         words("x", vc.io.records),
                                                         words("act", mp.io.records))),
                    rd_prog.bulk_cmd.payload.addr.eq(addr["bulk"]),
                    rd_prog.bulk_cmd.payload.words.eq(Mux(
                        conv_op, words("weights", cv.weights.records),
                        words("codebook", dn.codebook.records))),
                    rd_prog.small_cmd.payload.addr.eq(addr["small"]),
                    rd_prog.small_cmd.payload.words.eq(Mux(
                        conv_op, words("requant", cv.requant.records),
                        words("params", dn.params.records))),
                    rd_prog.mask_cmd.payload.addr.eq(addr["mask"]),
                    rd_prog.mask_cmd.payload.words.eq(words("mask", cv.mask.records)),
                    rd_idx.indices_cmd.payload.addr.eq(addr["indices"]),
                    rd_idx.indices_cmd.payload.words.eq(words("indices", dn.indices.records)),
                    wr.cmd.payload.addr.eq(io_addr),
                    wr.cmd.payload.words.eq(Mux(op == Opcode.STORE_MAP,
                                                words("act", mp.io.records),
                                                words("out", dense_beats))),
                ]
                with m.If(all_ready & ~misaligned):
                    m.d.comb += [commands[k].valid.eq(needs[k]) for k in needs]
                    starts = {
                        "act": (op == Opcode.LOAD_MAP, act_records),
                        "vec": (op == Opcode.LOAD_VEC, act_records),
                        "weights": (conv_op, cv.weights.records),
                        "requant": (conv_op, cv.requant.records),
                        "mask": (conv_op & cv.skip, cv.mask.records),
                        "indices": (op == Opcode.DENSE, dn.indices.records),
                        "codebook": (op == Opcode.DENSE, dn.codebook.records),
                        "params": (op == Opcode.DENSE, dn.params.records),
                    }
                    for name, (when, count) in starts.items():
                        m.d.comb += [unpack[name].start.eq(when), unpack[name].count.eq(count)]
                    m.d.comb += [
                        pack["map"].start.eq(op == Opcode.STORE_MAP),
                        pack["map"].count.eq(mp.io.records),
                        pack["out"].start.eq((op == Opcode.DENSE) & dn.to_memory),
                        pack["out"].count.eq(dense_beats),
                        x_reader.start.eq(op == Opcode.DENSE),
                        x_reader.base.eq(half["src"]), x_reader.count.eq(dn.x_records),
                    ]
                    m.d.sync += [out_seen.eq(0), x_count.eq(0), t_count.eq(0)]
                    with m.If(is_op(Opcode.LOAD_MAP, Opcode.CONV, Opcode.DENSE,
                                    Opcode.LOAD_VEC)):
                        m.next = "PREFETCH"
                    with m.Else():
                        m.d.sync += kick.eq(1)
                        m.next = "RUN"

            with active("PREFETCH"):
                m.d.comb += in_stall.eq(1)
                weights_ready = (wfifo.level == wfifo.depth) | ~unpack["weights"].busy
                ready = Mux(op == Opcode.LOAD_MAP, unpack["act"].records.valid,
                        Mux(op == Opcode.LOAD_VEC, unpack["vec"].records.valid,
                        Mux(op == Opcode.CONV,
                            weights_ready & conv.requant.valid & (~cv.skip | conv.mask.valid),
                            dense.x.valid & dense.indices.valid & dense.params.valid &
                            ((dn.codebook.records == 0) | dense.codebook.valid))))
                with m.If(ready):
                    m.d.sync += kick.eq(op != Opcode.LOAD_VEC)
                    m.next = "RUN"

            with active("RUN"):
                m.d.comb += in_busy.eq(1)
                m.d.sync += kick.eq(0)
                last_out = out_taken & (out_seen == dense_beats - 1)
                with m.Switch(op):
                    with m.Case(Opcode.LOAD_MAP, Opcode.CONV):
                        with m.If(conv.done):
                            m.next = "CHECK"
                    with m.Case(Opcode.POOL):
                        with m.If(conv.done):
                            m.next = "POOL_TAIL"
                    with m.Case(Opcode.FLATTEN):
                        with m.If(conv.done):
                            m.next = "FLATTEN_TAIL"
                    with m.Case(Opcode.STORE_MAP):
                        with m.If(conv.done):
                            m.next = "FINISH"
                    with m.Case(Opcode.DENSE):
                        with m.If(last_out & dn.to_memory):
                            m.next = "FINISH"
                        with m.Elif(last_out):
                            m.next = "CHECK"
                    with m.Case(Opcode.LOAD_VEC):
                        with m.If(~unpack["vec"].busy):
                            m.next = "CHECK"

            with active("POOL_TAIL"):
                with m.If(~pool.busy):
                    m.d.comb += [t_reader.start.eq(1), t_reader.base.eq(0),
                                 t_reader.count.eq(t_count)]
                    m.next = "POOL_PREFETCH"

            with active("POOL_PREFETCH"):
                with m.If(t_reader.o.valid):
                    m.d.sync += kick.eq(1)
                    m.next = "POOL_RUN"

            with active("POOL_RUN"):
                m.d.comb += [in_busy.eq(1), pool_load.eq(1)]
                m.d.sync += kick.eq(0)
                with m.If(conv.done):
                    m.next = "CHECK"

            with active("FLATTEN_TAIL"):
                with m.If(~flat.busy):
                    m.next = "CHECK"

            with active("FINISH"):
                m.d.comb += in_stall.eq(1)
                with m.If(~wr.busy & ~pack["map"].busy & ~pack["out"].busy):
                    m.next = "CHECK"

            with active("CHECK"):
                m.next = "ACCOUNT"

            with active("ACCOUNT"):
                first = image == 0
                is_conv = op == Opcode.CONV
                record = {
                    "cycles": op_cycles + 1,
                    "busy": op_busy,
                    "mac_cycles": Mux(is_conv, conv.stats.mac_cycles, 0),
                    "skipped": Mux(is_conv, conv.stats.skipped, 0),
                    "stall_cycles": op_stall,
                }
                m.d.comb += [c_write.addr.eq(pc), c_write.en.eq(1)]
                for name, value in record.items():
                    m.d.comb += c_write.data[name].eq(Mux(first, 0, c_old.data[name]) + value)
                m.d.sync += [total["mac_cycles"].eq(total["mac_cycles"] + record["mac_cycles"]),
                             total["skipped"].eq(total["skipped"] + record["skipped"]),
                             pc.eq(pc + 1)]
                m.next = "FETCH"

            with active("END_IMAGE"):
                m.d.sync += [images_done.eq(images_done + 1), end_pc.eq(pc),
                             image.eq(image + 1)]
                with m.If(image + 1 < images):
                    m.d.sync += pc.eq(0)
                    m.next = "FETCH"
                with m.Else():
                    m.next = "COUNTERS"

            with active("COUNTERS"):
                with m.If(end_pc == 0):
                    m.next = "DONE"
                with m.Elif(wr.cmd.ready):
                    m.d.comb += [wr.cmd.valid.eq(1), wr.cmd.payload.addr.eq(base["counters"]),
                                 wr.cmd.payload.words.eq(words("counters", end_pc)),
                                 pack["counters"].start.eq(1),
                                 pack["counters"].count.eq(end_pc),
                                 c_reader.start.eq(1), c_reader.base.eq(0),
                                 c_reader.count.eq(end_pc)]
                    m.next = "COUNTERS_WAIT"

            with active("COUNTERS_WAIT"):
                m.d.comb += [in_stall.eq(1), writing_counters.eq(1)]
                with m.If(~wr.busy & ~pack["counters"].busy & ~c_reader.busy):
                    m.next = "DONE"

            with m.State("ABORT"):
                m.d.comb += [dp_reset.eq(1), wr.flush.eq(1)] + [r.flush.eq(1) for r in readers]
                with m.If(Cat(r.idle for r in readers).all() & wr.idle):
                    m.next = "DONE"

            with m.State("DONE"):
                m.d.comb += [csr.ap_done.eq(1), csr.ap_ready.eq(1)]
                m.next = "IDLE"

        m.d.comb += bad.eq(
            (fsm.ongoing("FETCH") & (pc >= cfg.max_program)) |
            (fsm.ongoing("DECODE") & decode_bad) |
            (fsm.ongoing("ISSUE") & misaligned) |
            (fsm.ongoing("CHECK") & check_bad) |
            (fsm.ongoing("COUNTERS") & (base["counters"][:exact_log2(wb)] != 0)))

        # --- counters and status ------------------------------------------------------------
        running = ~fsm.ongoing("IDLE")
        with m.If(running):
            m.d.sync += total["cycles"].eq(total["cycles"] + 1)
        with m.If(in_stall):
            m.d.sync += total["stall_cycles"].eq(total["stall_cycles"] + 1)
        with m.If(fsm.ongoing("FETCH") | fsm.ongoing("COUNTERS")):
            m.d.sync += [op_cycles.eq(1), op_busy.eq(0), op_stall.eq(0)]
        with m.Elif(running):
            m.d.sync += [op_cycles.eq(op_cycles + 1), op_busy.eq(op_busy + in_busy),
                         op_stall.eq(op_stall + in_stall)]
        m.d.comb += c_old.addr.eq(pc)
        active_state = running & ~fsm.ongoing("ABORT") & ~fsm.ongoing("DONE")
        with m.If(active_state & fault.any()):
            m.d.sync += [status.eq(fault), error_pc.eq(pc), error_op.eq(op)]
        st = csr.status
        where = REGMAP["error_at"]
        m.d.comb += [
            st.status.eq(status),
            st.error_at.eq((error_pc << where.field_named("PC").bit) |
                           (error_op << where.field_named("OPCODE").bit)),
            st.images_done.eq(images_done),
            st.cycles.eq(total["cycles"]),
            st.mac_cycles.eq(total["mac_cycles"]),
            st.skipped.eq(total["skipped"]),
            st.stall_cycles.eq(total["stall_cycles"]),
        ]
        return m
