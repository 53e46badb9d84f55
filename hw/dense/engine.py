"""The codebook-lookup dense engine: ``y[o] = bias[o] + sum_j LUT_j[idx[o, j]]``, requantized.

Organisation, and why
---------------------
A codebook dense layer is cheap in arithmetic (``k * s`` multiply-adds build the
table ``LUT_j`` of segment ``j``, then one add per index) and heavy in index traffic,
so the engine is built around the index stream: it looks up as many indices per
cycle as one ``width``-bit beat holds at the widest index (``lanes = width /
log2(max_k)``), and everything else is sized so as not to slow that down.

- :class:`~velcro.hw.dense.unpack.DenseIndexUnpacker` cuts the packed stream
  (segment-major, runs padded to bytes) into groups of ``lanes`` indices of one
  segment, one group per cycle.
- :class:`~velcro.hw.dense.lut.DenseLutBuilder` stores the activations and builds
  each segment's table with ``macs`` multipliers into one of two banks of the table
  memory, while the lookups read the other; its latency overlaps the lookups.
- The lookup stage reads ``LUT_j[idx]`` for every lane (the table memory has a read
  port per lane) and adds it to the output's accumulator. Accumulators
  live in a memory of ``lanes``-wide rows, one row per group, read and written back
  one row per cycle; the read port is transparent so that a group may follow its own
  row's write (a segment of at most ``lanes`` outputs).
- After the last group, the rows drain through
  :class:`~velcro.hw.dense.requant.DenseRequant` (bias, requantization, ReLU, or
  int32 logits), one output beat of ``lanes`` results per cycle.

Limits that follow from this organisation: a layer with ``k < max_k`` packs more
indices per beat than there are lanes, so it runs at ``log2(max_k) / log2(k)`` times
its index bound (build the engine with ``max_k = k`` to get ``width / log2(k)``
lanes); a layer whose tables cost more than its lookups (``k / macs * s >
n_out / lanes``, e.g. 10-output logits) is bound by table building; and every
segment's table reads ``k * s`` codebook bytes, ``macs`` per cycle from their own
stream (a codebook shared by all segments is sent again for each).

The int8 mode uses the builder's multipliers as a MAC array instead: the weights
arrive on the ``codebook`` stream, ``macs`` per beat (one input's weights to ``macs``
consecutive outputs), and each multiplier accumulates one output over the whole
input, so a layer takes ``n_in`` cycles per block of ``macs`` outputs, a full beat of
weights per cycle, against ``n_out / lanes`` per input through the lookups. A block's
sums are held in a register and drain through the requantizer, ``lanes`` outputs per
cycle, while the next block accumulates; the lookups and their accumulator memory
stay idle.

Streams and formats
-------------------
All streams are ``amaranth.lib.stream`` (payload/valid/ready). Per layer: one
``cmd`` beat (:func:`command_layout`), then ``x`` (activations, ``width // 8`` int8 per
beat), ``indices`` (packed indices; none in int8 mode), ``codebook`` (codebooks, or
int8 weights in int8 mode) and ``params`` (one :data:`~velcro.hw.dense.requant.PARAMS`
per output), all consumed concurrently; ``out`` carries ``ceil(n_out / lanes)`` beats.
:mod:`velcro.hw.dense.format` encodes and decodes every stream. A new command is
taken once the previous layer's last output beat has gone.

Cost
----
:func:`~velcro.hw.dense.cost.expected_cycles` gives the cycles of a layer exactly
when no stream stalls: per segment ``max(k / macs, 1) * s`` cycles of table building
against ``ceil(n_out / lanes)`` cycles of lookups, overlapped, plus a few cycles of
start-up and drain; in int8 mode ``n_in`` cycles per block of ``macs`` outputs.
"""

from amaranth import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..requant import ACC_BITS
from .config import DenseConfig, DenseLayer
from .cost import expected_cycles
from .lut import DenseLutBuilder, table_row, table_rows
from .requant import PARAMS, DenseRequant
from .unpack import DenseIndexUnpacker


def command_layout(config: DenseConfig) -> data.StructLayout:
    """The layer command: segments, segment length, index bits, outputs and flags.

    ``n_seg`` is ``n_in / s`` (``n_in`` in int8 mode); ``index_bits`` is ``log2(k)``;
    ``logits`` skips requantization; ``int8`` (only when ``max_k`` is 256) selects the
    int8 mode, in which ``s`` and ``index_bits`` are ignored.
    """
    fields = {
        "n_seg": range(config.max_n_in + 1),
        "s": range(config.max_s + 1),
        "index_bits": range(config.index_bits + 1),
        "n_out": range(config.max_n_out + 1),
        "relu": 1,
        "logits": 1,
    }
    if config.int8:
        fields["int8"] = 1
    return data.StructLayout(fields)


class DenseEngine(wiring.Component):
    """Codebook-lookup (and int8) dense layers, streamed.

    Parameters
    ----------
    config : DenseConfig
        Elaboration parameters; validated by :class:`DenseConfig`.

    Members
    -------
    cmd : In(stream.Signature(command_layout(config)))
        One beat per layer.
    x : In(stream.Signature(width))
        Activations.
    indices : In(stream.Signature(width))
        Packed indices (not used in int8 mode).
    codebook : In(stream.Signature(8 * macs))
        Codewords, element-interleaved per block of ``macs`` codewords; in int8 mode the
        weights, per block of ``macs`` outputs, per input.
    params : In(stream.Signature(PARAMS))
        Bias, multiplier and shift of each output, in output order.
    out : Out(stream.Signature(32 * lanes))
        ``lanes`` results per beat: int32 words (logits) or int8 bytes from bit 0;
        positions past ``n_out`` in the last beat, and the unused upper bits in int8
        mode, are zero.
    busy : Out(1)
        A layer is in flight.
    """

    def __init__(self, config: DenseConfig):
        if not isinstance(config, DenseConfig):
            raise TypeError(f"config must be a DenseConfig, not {config!r}")
        self.config = config
        super().__init__({
            "cmd": In(stream.Signature(command_layout(config))),
            "x": In(stream.Signature(config.width)),
            "indices": In(stream.Signature(config.width)),
            "codebook": In(stream.Signature(8 * config.macs)),
            "params": In(stream.Signature(PARAMS)),
            "out": Out(stream.Signature(ACC_BITS * config.lanes)),
            "busy": Out(1),
        })

    def expected_cycles(self, layer: DenseLayer) -> int:
        """Cycles of ``layer`` without stalls (:func:`velcro.hw.dense.cost.expected_cycles`)."""
        return expected_cycles(layer, self.config)

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        lanes = cfg.lanes
        log2_lanes = lanes.bit_length() - 1
        log2_bytes = cfg.x_bytes.bit_length() - 1

        m.submodules.unpacker = unpacker = DenseIndexUnpacker(cfg)
        m.submodules.builder = builder = DenseLutBuilder(cfg)
        # Distributed RAM: each lane's read port becomes copies of multi-port LUT RAM
        # instead of a register file and a wide multiplexer, a third of the LUTs and
        # a much faster synthesis (Yosys keeps a table of few rows in registers).
        m.submodules.table = table = memory.Memory(
            shape=table_row(cfg), depth=table_rows(cfg), init=[],
            attrs={"ram_style": "distributed"})
        wiring.connect(m, builder.table, table.write_port())
        m.submodules.requant = requant = DenseRequant(lanes)
        wiring.connect(m, wiring.flipped(self.indices), unpacker.indices)
        wiring.connect(m, wiring.flipped(self.x), builder.x)
        wiring.connect(m, wiring.flipped(self.codebook), builder.codebook)

        # Command: derive the per-layer settings once, start the units a cycle later.
        cmd = self.cmd.payload
        accept = self.cmd.valid & self.cmd.ready
        start = Signal()
        groups = Signal(range(cfg.max_groups + 1))
        tail_lanes = Signal(range(lanes + 1))
        relu, logits, direct = Signal(), Signal(), Signal()
        m.d.comb += [
            self.cmd.ready.eq(~self.busy),
            unpacker.start.eq(start & ~direct),
            builder.start.eq(start),
            requant.relu.eq(relu),
            requant.logits.eq(logits),
        ]
        m.d.sync += start.eq(accept)

        int8 = cmd.int8 if cfg.int8 else 0
        s = Mux(int8, 1, cmd.s)
        bits = Mux(int8, 8, cmd.index_bits)
        n_groups = (cmd.n_out + lanes - 1) >> log2_lanes
        tail = ((cmd.n_out - 1) & (lanes - 1)) + 1          # outputs in the last group
        run_bytes = (cmd.n_out * bits + 7) >> 3
        blocks = Array(max(1, (1 << b) // cfg.macs) for b in range(cfg.index_bits + 1))
        log2_macs = cfg.macs.bit_length() - 1
        # Int8 mode: one segment of n_in elements, a block per macs outputs.
        int8_blocks = (cmd.n_out + cfg.macs - 1) >> log2_macs
        with m.If(accept):
            m.d.sync += [
                self.busy.eq(1),
                groups.eq(n_groups),
                tail_lanes.eq(tail),
                relu.eq(cmd.relu),
                logits.eq(cmd.logits),
                unpacker.settings.index_bits.eq(bits),
                unpacker.settings.n_seg.eq(cmd.n_seg),
                unpacker.settings.groups.eq(n_groups),
                unpacker.settings.full_shift.eq(bits << log2_lanes),
                unpacker.settings.last_shift.eq(((tail * bits + 7) >> 3) << 3),
                unpacker.settings.beats.eq((cmd.n_seg * run_bytes + cfg.x_bytes - 1)
                                           >> log2_bytes),
                builder.settings.n_seg.eq(Mux(int8, 1, cmd.n_seg)),
                builder.settings.s.eq(Mux(int8, cmd.n_seg, s)),
                builder.settings.blocks.eq(Mux(int8, int8_blocks, blocks[bits])),
                builder.settings.x_rows.eq((cmd.n_seg * s + cfg.x_bytes - 1) >> log2_bytes),
            ]
            if cfg.int8:
                m.d.sync += [builder.settings.int8.eq(int8), direct.eq(int8)]

        # Parameters: one output per beat into rows of `lanes`.
        m.submodules.params = params_mem = memory.Memory(
            shape=data.ArrayLayout(PARAMS, lanes), depth=cfg.max_groups, init=[])
        params_wr = params_mem.write_port(granularity=1)
        params_rd = params_mem.read_port()
        loaded = Signal(range(cfg.max_n_out + 1))
        # Outputs whose parameters are still to come, and whether any is (registered
        # beside the count, so that no comparison of the count drives ``ready``).
        params_left = Signal.like(cmd.n_out)
        params_more = Signal()
        m.d.comb += [
            self.params.ready.eq(self.busy & ~start & params_more),
            params_wr.addr.eq(loaded >> log2_lanes),
            params_wr.data.eq(Cat(self.params.payload for _ in range(lanes))),
        ]
        take_params = self.params.valid & self.params.ready
        for lane in range(lanes):
            m.d.comb += params_wr.en[lane].eq(take_params & (loaded[:log2_lanes] == lane))
        with m.If(accept):
            m.d.sync += [params_left.eq(cmd.n_out), params_more.eq(cmd.n_out != 0)]
        with m.Elif(take_params):
            m.d.sync += [loaded.eq(loaded + 1), params_left.eq(params_left - 1),
                         params_more.eq(params_left != 1)]

        # Lookups: one group per cycle once its table is full.
        m.submodules.acc = acc_mem = memory.Memory(
            shape=data.ArrayLayout(signed(ACC_BITS), lanes), depth=cfg.max_groups, init=[])
        acc_wr = acc_mem.write_port()
        acc_rd = acc_mem.read_port(transparent_for=(acc_wr,))
        group = unpacker.groups.payload
        table_full = builder.full.bit_select(group.bank, 1)
        fire = unpacker.groups.valid & table_full
        m.d.comb += unpacker.groups.ready.eq(table_full)
        entries = []
        for lane in range(lanes):
            index = group.index[lane]
            port = table.read_port(domain="comb")
            m.d.comb += port.addr.eq(Cat(index[log2_macs:], group.bank))
            entries.append(port.data[index[:log2_macs]] if cfg.macs > 1 else port.data[0])
        looked_up = Signal(data.ArrayLayout(signed(cfg.lut_bits), lanes))
        write = Signal(data.StructLayout({"valid": 1, "row": range(cfg.max_groups),
                                          "first": 1}))
        lookups_done = Signal()
        m.d.sync += write.valid.eq(fire)
        with m.If(fire):
            for lane in range(lanes):
                m.d.sync += looked_up[lane].eq(entries[lane])
            m.d.sync += [write.row.eq(group.row), write.first.eq(group.first)]
            with m.If(group.final):
                m.d.sync += lookups_done.eq(1)
        for b in range(2):
            m.d.comb += builder.release[b].eq(fire & group.last & (group.bank == b))
        m.d.comb += [
            acc_wr.addr.eq(write.row),
            acc_wr.en.eq(write.valid),
        ]
        for lane in range(lanes):
            m.d.comb += acc_wr.data[lane].eq(
                Mux(write.first, 0, acc_rd.data[lane]) + looked_up[lane])

        # Int8 mode: a block's sums wait in ``held`` until their rows have drained.
        rows_per_block = max(1, cfg.macs // lanes)
        log2_rpb = rows_per_block.bit_length() - 1
        held = Signal(data.ArrayLayout(signed(ACC_BITS), cfg.macs))
        holding = Signal()
        held_row = Signal(data.ArrayLayout(signed(ACC_BITS), lanes))
        m.d.comb += builder.result_busy.eq(holding)
        with m.If(builder.result.valid):
            m.d.sync += [held.eq(builder.result.payload), holding.eq(1)]

        # Drain: once the last group is in (in int8 mode, a block's sums) and every
        # parameter has arrived.
        row = Signal(range(cfg.max_groups + 1))
        last_row = row == groups - 1
        draw = Mux(direct, holding, lookups_done) & ~params_more & (row != groups) & \
            requant.i.ready
        drained = Signal(data.StructLayout({"valid": 1, "last": 1}))
        with m.If(requant.i.ready):
            m.d.sync += [drained.valid.eq(draw), drained.last.eq(last_row)]
        with m.If(draw):
            m.d.sync += row.eq(row + 1)
            m.d.sync += held_row.eq(held.as_value().word_select(row[:log2_rpb],
                                                                ACC_BITS * lanes)
                                    if log2_rpb else held.as_value()[:ACC_BITS * lanes])
            with m.If(last_row | (row[:log2_rpb] == rows_per_block - 1)
                      if log2_rpb else 1):
                m.d.sync += holding.eq(0)
        m.d.comb += [
            acc_rd.addr.eq(Mux(lookups_done, row, group.row)),
            acc_rd.en.eq(~lookups_done | requant.i.ready),
            params_rd.addr.eq(row),
            params_rd.en.eq(requant.i.ready),
            requant.i.valid.eq(drained.valid),
            requant.i.payload.acc.eq(Mux(direct, held_row, acc_rd.data)),
            requant.i.payload.params.eq(params_rd.data),
            requant.i.payload.last.eq(drained.last),
            self.out.valid.eq(requant.o.valid),
            requant.o.ready.eq(self.out.ready),
        ]
        # Lanes past n_out in the last beat carry zeros, not stale accumulators, so
        # that a buffer written beat by beat holds nothing but the layer's results.
        result = requant.o.payload.data
        words, octets = [], []
        for lane in range(lanes):
            kept = ~requant.o.payload.last | (lane < tail_lanes)
            words.append(Mux(kept, result[lane * ACC_BITS:(lane + 1) * ACC_BITS], 0))
            octets.append(Mux(kept, result[lane * 8:(lane + 1) * 8], 0))
        m.d.comb += self.out.payload.eq(Mux(logits, Cat(*words), Cat(*octets)))
        with m.If(self.out.valid & self.out.ready & requant.o.payload.last):
            m.d.sync += self.busy.eq(0)

        # Forget the previous layer as the command is taken, so that nothing of it
        # (a finished drain, a full parameter count) is seen under the new settings.
        with m.If(accept):
            m.d.sync += [loaded.eq(0), lookups_done.eq(0), row.eq(0), holding.eq(0)]
        return m
