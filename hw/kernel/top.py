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
    Reads the dense index streams and int8 weights (records of the codebook stream,
    into the dense engine's codebook input), the heaviest traffic, on a port of their own
    (in the memory bank of ``m_axi_program``:
    :mod:`velcro.hw.kernel.connectivity`).

Both read the same words for every image of a run, so each passes through an on-chip
copy (:class:`~velcro.hw.axi.resident.ResidentReads`, ``resident_program`` and
``resident_indices`` words of the configuration; the first in block RAM, the second in
UltraRAM) that the run's first image fills and
that answers the later images' reads: a run fetches its constants from device memory
once, and each further image moves only its input and its output.
``m_axi_data``
    Reads the inputs, writes the results, the per-descriptor counters and the status
    block (:data:`~velcro.hw.kernel.config.STATUS_BLOCK`) that ends every run.

Datapath
--------
Three read DMAs (:class:`~velcro.hw.axi.read.ReadDma`) feed the engines through
:class:`~velcro.hw.kernel.records.Unpacker` adapters; a channel that serves two kinds of
stream (conv kernels or dense codebooks, conv requantization or dense parameters)
fans out to both adapters, and only the one started by the current descriptor takes
words. The conv array keeps feature maps on chip between layers (its ping-pong
buffers) and pools them there (its ``POOL``, from one buffer into the other);
flattening drains it through :class:`~velcro.hw.kernel.flatten.Flatten` into the
dense engine's activation buffer, two halves that dense layers read and write
alternately. Results leave through
:class:`~velcro.hw.kernel.records.Packer` and the write DMA.

Sequencer
---------
:class:`~velcro.hw.kernel.sequencer.Sequencer` runs the descriptor program: it takes
the control registers and the state of every unit, and gives the DMA commands, the
starts of the adapters, buffer readers and engines, the selects of the stream
multiplexers below, the datapath reset (at the start of every run and when a run ends
with an error), the status registers and the status block. Each of its ports is
named after the unit it connects to.
"""

from __future__ import annotations

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
from ..axi.resident import ResidentReads
from ..axi.write import WriteDma
from ..conv.array import ConvArray
from ..conv.format import MASK_LAYOUT, REQUANT_LAYOUT, activations_layout, weights_layout
from ..dense.engine import DenseEngine
from ..dense.requant import PARAMS
from .buffers import BufferReader
from .config import COUNTERS, SHIPPED, STATUS_BLOCK, KernelConfig
from .csr import ControlRegisters
from .descriptor import DESCRIPTOR_BYTES
from .flatten import Flatten
from .records import Packer, Unpacker
from .regmap import PORTS, REGMAP
from .sequencer import Ofmap, Sequencer, VectorWrite, WriteData, attach

__all__ = ["VelcroKernel"]


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
        W, B = cfg.data_width, cfg.max_burst
        lanes = cfg.conv.lanes
        dense_cfg = cfg.dense
        m = Module()

        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += [cd.clk.eq(self.ap_clk), cd.rst.eq(~self.ap_rst_n)]
        m.submodules.sequencer = seq = Sequencer(cfg)
        route = seq.route

        # --- control registers --------------------------------------------------------
        m.submodules.csr = csr = ControlRegisters(REGMAP)
        connect_flat(m, self, "s_axi_control", csr.bus)
        m.d.comb += self.interrupt.eq(csr.interrupt)

        # --- DMAs -----------------------------------------------------------------------
        # FIFOs of several bursts in block RAM: in distributed RAM each would take
        # hundreds of LUTs, the scarcest resource of several compute units.
        m.submodules.rd_program = rd_prog = ReadDma(
            data_width=W, max_burst=B,
            channels={"desc": B, "bulk": 4 * B, "small": B, "mask": 2 * B},
            block_ram=("bulk", "mask"))
        # The indices port carries int8 weights at a word per cycle: eight bursts in
        # flight keep that rate through a run's first image under HBM-like latency.
        m.submodules.rd_indices = rd_idx = ReadDma(data_width=W, max_burst=B,
                                                   channels={"indices": 8 * B},
                                                   max_outstanding=8)
        # Four bursts of input in flight: the map loader takes a word every four cycles,
        # so three bursts cover the memory's latency while the fourth is requested.
        m.submodules.rd_data = rd_data = ReadDma(data_width=W, max_burst=B,
                                                 channels={"act": 4 * B}, block_ram=("act",))
        m.submodules.wr_data = wr = WriteDma(data_width=W, depth=2 * B, max_burst=B)
        write_half = axi4_write_signature(data_width=W)
        # The constant buffers' reads, through their on-chip copies where configured:
        # the program's in block RAM, the indices' in UltraRAM, which the feature banks
        # share, so that neither memory limits the compute units before the LUTs.
        for port, dma, words, style in (("program", rd_prog, cfg.resident_program, "block"),
                                        ("indices", rd_idx, cfg.resident_indices, "ultra")):
            read = dma.axi
            if words:
                copy = ResidentReads(data_width=W, words=words,
                                     max_outstanding=dma.max_outstanding, ram_style=style)
                m.submodules[f"resident_{port}"] = copy
                wiring.connect(m, dma.axi, copy.up)
                m.d.comb += [copy.base.eq(getattr(seq.resident, port)),
                             copy.hold.eq(seq.resident.hold)]
                read = copy.down
            connect_flat(m, self, f"m_axi_{port}", read)
            tie_off_flat(m, self, f"m_axi_{port}", write_half)
        connect_flat(m, self, "m_axi_data", rd_data.axi)
        connect_flat(m, self, "m_axi_data", wr.axi)

        # --- datapath, reset at every start and abort ---------------------------------------
        def datapath(name, unit):
            m.submodules[name] = ResetInserter(seq.reset)(unit)
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
            # An int8 layer's weights: codebook-stream records, from the indices port.
            "dense_weights": Unpacker(W, 8 * dense_cfg.macs),
            "act": Unpacker(W, act),
            "vec": Unpacker(W, dense_cfg.width),
        }
        pack = {
            "map": Packer(W, act),
            "out": Packer(W, 32 * dense_cfg.lanes),
            "counters": Packer(W, COUNTERS),
            "status": Packer(W, STATUS_BLOCK),
        }
        adapters = {**{f"unpack_{k}": v for k, v in unpack.items()},
                    **{f"pack_{k}": v for k, v in pack.items()}}
        for name, unit in adapters.items():
            datapath(name, unit)
        wfifo = datapath("weight_fifo", fifo.SyncFIFOBuffered(
            width=weights_layout(lanes).size, depth=cfg.weight_fifo_depth))
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
        fan_out(rd_idx.indices, unpack["indices"], unpack["dense_weights"])
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
        # The codebook input takes codebooks or int8 weights, whichever adapter the
        # descriptor started (the other offers nothing).
        codebooks, weights8 = unpack["codebook"].records, unpack["dense_weights"].records
        m.d.comb += [
            dense.codebook.valid.eq(codebooks.valid | weights8.valid),
            dense.codebook.payload.eq(Mux(weights8.valid, weights8.payload, codebooks.payload)),
            codebooks.ready.eq(dense.codebook.ready),
            weights8.ready.eq(dense.codebook.ready),
        ]
        wiring.connect(m, unpack["params"].records, dense.params)

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

        # Counter records (kept by the sequencer), read out through the counter packer.
        c_reader = datapath("counter_reader", BufferReader(COUNTERS, cfg.max_program))
        records = seq.counter_records
        m.d.comb += [records.addr.eq(c_reader.read.addr), c_reader.data.eq(records.data)]
        wiring.connect(m, c_reader.o, pack["counters"].records)
        # The status block, straight from the sequencer.
        wiring.connect(m, seq.status_block, pack["status"].records)

        # --- stream selects -------------------------------------------------------------------
        # Where the array's input comes from and its output goes.
        wiring.connect(m, unpack["act"].records, conv.ifmap)
        with m.Switch(route.ofmap):
            with m.Case(Ofmap.FLATTEN):
                wiring.connect(m, conv.ofmap, flat.i)
            with m.Case(Ofmap.STORE):
                wiring.connect(m, conv.ofmap, pack["map"].records)

        # Dense outputs: to the write DMA or into the activation buffer.
        out_taken = dense.out.valid & dense.out.ready
        with m.If(route.to_memory):
            m.d.comb += [pack["out"].records.valid.eq(dense.out.valid),
                         pack["out"].records.payload.eq(dense.out.payload),
                         dense.out.ready.eq(pack["out"].records.ready)]
        with m.Else():
            m.d.comb += dense.out.ready.eq(1)

        # Activation buffer writes, from vector_base on.
        x_count = Signal(range(2 * vw + 1))
        vec_take = unpack["vec"].records.valid & unpack["vec"].records.ready
        m.d.comb += unpack["vec"].records.ready.eq(1)
        x_byte = flat.write.addr[:exact_log2(xb)]
        # Channel-last words per activation-buffer word (the sequencer refuses
        # channel-last flattening when a beat is wider than a word).
        per_word = max(1, xb // lanes)
        with m.Switch(route.vector):
            with m.Case(VectorWrite.FLATTEN):
                # A byte, or a word of `lanes` bytes (channel-last), `per_word` to a word.
                slots = exact_log2(per_word)
                slot = flat.write.addr[:slots] if slots else Const(0, 1)
                lane_bytes = (1 << lanes) - 1
                m.d.comb += [
                    x_write.addr.eq(route.vector_base + Mux(
                        flat.write.wide, flat.write.addr >> slots,
                        flat.write.addr >> exact_log2(xb))),
                    x_write.data.eq(Mux(flat.write.wide,
                                        Cat(flat.write.word for _ in range(per_word)),
                                        Cat(flat.write.data for _ in range(xb)))),
                    x_write.en.eq(Mux(flat.write.en, Mux(
                        flat.write.wide, Const(lane_bytes, xb) << (slot * lanes),
                        Const(1, xb) << x_byte), 0))]
            with m.Case(VectorWrite.LOAD):
                m.d.comb += [x_write.addr.eq(route.vector_base + x_count),
                             x_write.data.eq(unpack["vec"].records.payload),
                             x_write.en.eq(Mux(vec_take, (1 << xb) - 1, 0))]
            with m.Case(VectorWrite.DENSE):
                m.d.comb += [x_write.addr.eq(route.vector_base + x_count),
                             x_write.data.eq(dense.out.payload[:dense_cfg.width]),
                             x_write.en.eq(Mux(out_taken & ~route.to_memory, (1 << xb) - 1, 0))]
        with m.If(vec_take | (out_taken & ~route.to_memory)):
            m.d.sync += x_count.eq(x_count + 1)
        # Both buffers are written from their first word for every descriptor.
        with m.If(seq.issue):
            m.d.sync += x_count.eq(0)

        # The write DMA's source.
        with m.Switch(route.write):
            with m.Case(WriteData.COUNTERS):
                wiring.connect(m, pack["counters"].words, wr.data)
            with m.Case(WriteData.STATUS):
                wiring.connect(m, pack["status"].words, wr.data)
            with m.Case(WriteData.MAP):
                wiring.connect(m, pack["map"].words, wr.data)
            with m.Default():
                wiring.connect(m, pack["out"].words, wr.data)

        # --- the sequencer ---------------------------------------------------------------------
        controlled = {"csr": csr, "rd_program": rd_prog, "rd_indices": rd_idx,
                      "rd_data": rd_data, "wr_data": wr, **adapters, "conv": conv,
                      "flatten": flat, "dense": dense, "vector_reader": x_reader,
                      "counter_reader": c_reader}
        for name, unit in controlled.items():
            attach(m, getattr(seq, name), unit)
        offered = seq.offered
        m.d.comb += [offered[name].eq(unpack[name].records.valid)
                     for name in ("act", "vec", "requant", "mask", "codebook", "params")]
        m.d.comb += offered.indices.eq(unpack["indices"].records.valid |
                                       unpack["dense_weights"].records.valid)
        m.d.comb += [offered.weights.eq(wfifo.r_rdy), offered.x.eq(x_reader.o.valid),
                     seq.weights_level.eq(wfifo.level),
                     seq.out_taken.eq(out_taken)]
        return m
