"""Builds the per-segment lookup tables of the dense engine: ``LUT_j[c] = <x_j, codebook_j[c]>``.

The activations of a layer arrive on their own stream and are kept in a memory of
``width``-bit rows. The table of segment ``j`` takes ``k * s`` multiply-adds. They
are spread over ``macs`` units, one codeword each: the units share the activation
``x[j*s + t]`` and each multiplies it by element ``t`` of its own codeword, so a unit
finishes its entry after ``s`` beats and ``macs`` entries are written at once. One
codebook beat (``macs`` bytes, element ``t`` of ``macs`` consecutive codewords) per
cycle keeps every unit busy for any ``s``, and segment ``j`` takes
``max(1, k / macs) * s`` cycles.

The tables live in a memory of ``macs``-entry rows, two banks of ``max_k / macs``
rows, written one row (one block) at a time and read asynchronously by every lookup
lane. That many read ports leave no block RAM to map to: it becomes registers and
multiplexers, which is what ``lanes`` reads per cycle cost anyway. While the lookups read bank
``j % 2``, the builder fills the other with segment ``j + 1``. ``full[b]`` says that
bank ``b`` holds a finished table; the lookups clear it through ``release`` after
their last read. The builder runs ahead without waiting for a free bank and stalls
only at a write into a full one, so its pipeline latency overlaps the lookups.

In int8 mode the units compute the layer's outputs themselves: the "codebook" stream
carries the int8 weights, ``macs`` per beat (outputs ``b * macs .. b * macs + macs - 1``
of input ``i``, block ``b`` by block, input by input), the layer is one segment of
``s = n_in`` elements and ``ceil(n_out / macs)`` blocks, and the sums are never
written into the table: after a block's last input they leave on ``result`` as the
outputs' accumulators, one beat per block, and the units stall while ``result_busy``
says that the previous block's results are still held.

Pipeline: stage A takes a codebook beat and reads the activation row; stage B
multiplies; stage C accumulates and, after the ``s``-th element, writes the entries.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..requant import ACC_BITS
from .config import DenseConfig


def table_row(config: DenseConfig) -> data.ArrayLayout:
    """A row of the table memory: the ``macs`` entries one block writes at once."""
    return data.ArrayLayout(signed(config.lut_bits), config.macs)


def table_rows(config: DenseConfig) -> int:
    """Rows of the table memory: two banks of ``max_k / macs`` rows."""
    return 2 * (config.max_k // config.macs)


def max_blocks(config: DenseConfig) -> int:
    """Most blocks of ``macs`` codewords (or, in int8 mode, outputs) of a segment."""
    blocks = config.max_k // config.macs
    if config.int8:
        blocks = max(blocks, -(-config.max_n_out // config.macs))
    return blocks


def builder_settings(config: DenseConfig) -> data.StructLayout:
    """What the builder needs to know about a layer (constant while it runs)."""
    layout = {
        "n_seg": range(config.max_n_in + 1),
        "s": range((max(config.max_s, config.max_n_in) if config.int8 else config.max_s) + 1),
        "blocks": range(max_blocks(config) + 1),
        "x_rows": range(config.max_n_in // config.x_bytes + 1),
    }
    if config.int8:
        layout["int8"] = 1
    return data.StructLayout(layout)


class DenseLutBuilder(wiring.Component):
    """Activation and codebook streams in, double-buffered lookup tables out.

    Parameters
    ----------
    config : DenseConfig

    Members
    -------
    start : In(1)
        Pulse: ``settings`` hold a new layer.
    settings : In(builder_settings(config))
        Segments, segment length, codebook blocks per segment (``max(1, k / macs)``),
        activation beats, and the int8 flag when the engine has that mode (one
        segment of ``n_in`` elements and ``ceil(n_out / macs)`` blocks).
    x : In(stream.Signature(width))
        Activations, ``width // 8`` int8 values per beat, value ``i`` in bits
        ``8i..8i+7``; ``settings.x_rows`` beats per layer.
    codebook : In(stream.Signature(8 * macs))
        Per segment, per block of ``macs`` codewords, per element ``t < s``: byte ``u``
        is element ``t`` of codeword ``block * macs + u``; in int8 mode, per block, per
        input ``i``: byte ``u`` is the weight of input ``i`` to output ``block * macs + u``.
    table : In(memory.WritePort.Signature(...))
        Drives the write port of the table memory (:func:`table_row`, :func:`table_rows`):
        row ``b * max_k / macs + c // macs`` holds entries ``c`` of bank ``b``.
    full : Out(2)
        Bank ``b`` holds a finished table.
    release : In(2)
        Pulse bit ``b``: the lookups are done with bank ``b``.
    result : Out(stream.Signature(...))
        Int8 mode only: ``acc[u]``, the sum of output ``block * macs + u`` (no bias),
        valid for one cycle after a block's last input; there is no ``ready``.
    result_busy : In(1)
        The previous ``result`` is still held: a block's end waits.
    """

    def __init__(self, config: DenseConfig):
        self.config = config
        super().__init__({
            "start": In(1),
            "settings": In(builder_settings(config)),
            "x": In(stream.Signature(config.width)),
            "codebook": In(stream.Signature(8 * config.macs)),
            "table": In(memory.WritePort.Signature(addr_width=ceil_log2(table_rows(config)),
                                                   shape=table_row(config))),
            "full": Out(2),
            "release": In(2),
            "result": Out(stream.Signature(data.ArrayLayout(signed(ACC_BITS), config.macs),
                                           always_ready=True)),
            "result_busy": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, st = self.config, self.settings
        macs, max_k = cfg.macs, cfg.max_k
        log2_bytes = cfg.x_bytes.bit_length() - 1
        int8 = st.int8 if cfg.int8 else Const(0, 1)

        m.submodules.x_mem = x_mem = memory.Memory(
            shape=cfg.width, depth=cfg.max_n_in // cfg.x_bytes, init=[])
        x_wr = x_mem.write_port()
        x_rd = x_mem.read_port()

        # Activation loader: one beat per row, as fast as the stream offers them. The
        # settings change a cycle before `start` resets the count, so hold off then.
        rows = Signal.like(st.x_rows)
        m.d.comb += [
            self.x.ready.eq(~self.start & (rows != st.x_rows)),
            x_wr.addr.eq(rows),
            x_wr.data.eq(self.x.payload),
            x_wr.en.eq(self.x.valid & self.x.ready),
        ]
        with m.If(x_wr.en):
            m.d.sync += rows.eq(rows + 1)

        # Stage A: sequence segments, blocks and elements. Beside each count a register
        # says whether it is at its end (and where the segment's activations end), so
        # that no subtraction or comparison of a count decides the issue.
        segs_left = Signal.like(st.n_seg)
        segs_more = Signal()                                # segs_left != 0
        base = Signal(range(cfg.max_n_in + cfg.max_s + 1))    # x index of element 0
        # Where the segment's activations end, and the next segment's (int8 mode: one
        # segment of up to max_n_in).
        ends = range(2 * (cfg.max_n_in + cfg.max_s) + 1)
        base_end = Signal(ends)                             # base + s
        next_end = Signal(ends)                             # base + 2 * s
        t = Signal.like(st.s)
        last_t = Signal()                                   # t == s - 1
        block = Signal.like(st.blocks)
        last_block = Signal()                               # block == blocks - 1
        bank = Signal()
        advance = Signal()                                  # no stall at stage C
        element = base + t
        # Whether the segment's activations are stored, ``base_end <= rows * x_bytes``,
        # registered from the values both take in the next cycle.
        stored = Signal()
        loaded = segs_more & stored
        issue = advance & loaded & self.codebook.valid
        segment_done = issue & last_t & last_block
        stored_bytes = (rows + x_wr.en) << log2_bytes
        m.d.sync += stored.eq(Mux(segment_done, next_end <= stored_bytes,
                                  base_end <= stored_bytes))
        m.d.comb += [
            self.codebook.ready.eq(advance & loaded),
            x_rd.addr.eq(element >> log2_bytes),
            x_rd.en.eq(advance),
        ]
        with m.If(issue):
            m.d.sync += [t.eq(Mux(last_t, 0, t + 1)),
                         last_t.eq(Mux(last_t, st.s == 1, t + 2 == st.s))]
            with m.If(last_t):
                m.d.sync += [block.eq(Mux(last_block, 0, block + 1)),
                             last_block.eq(Mux(last_block, st.blocks == 1,
                                               block + 2 == st.blocks))]
                with m.If(last_block):
                    m.d.sync += [base.eq(base_end), base_end.eq(next_end),
                                 next_end.eq(next_end + st.s),
                                 segs_left.eq(segs_left - 1), segs_more.eq(segs_left != 1),
                                 bank.eq(~bank)]

        # Stage B: the activation row arrives; multiply.
        stage_b = Signal(data.StructLayout({
            "valid": 1, "byte": log2_bytes, "first": 1, "last": 1, "end": 1,
            "block": range(max_blocks(cfg)), "bank": 1,
            "codeword": data.ArrayLayout(signed(8), macs),
        }))
        with m.If(advance):
            m.d.sync += [
                stage_b.valid.eq(issue),
                stage_b.byte.eq(element),
                stage_b.first.eq(t == 0),
                stage_b.last.eq(last_t),
                stage_b.end.eq(last_t & last_block),
                stage_b.block.eq(block),
                stage_b.bank.eq(bank),
                stage_b.codeword.eq(self.codebook.payload),
            ]
        x_value = x_rd.data.word_select(stage_b.byte, 8).as_signed()

        # Stage C: accumulate over the segment's elements; write after the last.
        stage_c = Signal(data.StructLayout({
            "valid": 1, "first": 1, "last": 1, "end": 1,
            "block": range(max_blocks(cfg)), "bank": 1,
            "product": data.ArrayLayout(signed(16), macs),
        }))
        with m.If(advance):
            m.d.sync += [
                stage_c.valid.eq(stage_b.valid),
                stage_c.first.eq(stage_b.first),
                stage_c.last.eq(stage_b.last),
                stage_c.end.eq(stage_b.end),
                stage_c.block.eq(stage_b.block),
                stage_c.bank.eq(stage_b.bank),
            ]
            for u in range(macs):
                m.d.sync += stage_c.product[u].eq(x_value * stage_b.codeword[u])

        writing = stage_c.valid & stage_c.last
        blocked = Mux(int8, self.result_busy, self.full.bit_select(stage_c.bank, 1))
        m.d.comb += advance.eq(~(writing & blocked))
        # In int8 mode a sum runs over the whole input, so it is as wide as the engine's
        # accumulators; the table keeps the low ``lut_bits``.
        acc_bits = ACC_BITS if cfg.int8 else cfg.lut_bits
        sums = []
        for u in range(macs):
            acc = Signal(signed(acc_bits), name=f"acc{u}")
            total = Signal(signed(acc_bits), name=f"sum{u}")
            m.d.comb += total.eq(Mux(stage_c.first, 0, acc) + stage_c.product[u])
            with m.If(stage_c.valid & advance):
                m.d.sync += acc.eq(total)
            sums.append(total)

        block_bits = (max_k // macs).bit_length() - 1
        m.d.comb += [
            self.table.addr.eq(Cat(stage_c.block[:block_bits], stage_c.bank)),
            self.table.data.eq(Cat(total[:cfg.lut_bits] for total in sums)),
            self.table.en.eq(writing & advance & ~int8),
            self.result.payload.eq(Cat(*sums)),
            self.result.valid.eq(writing & advance & int8),
        ]

        for b in range(2):
            with m.If(self.release[b]):
                m.d.sync += self.full[b].eq(0)
            with m.If(writing & advance & ~int8 & stage_c.end & (stage_c.bank == b)):
                m.d.sync += self.full[b].eq(1)

        with m.If(self.start):
            m.d.sync += [rows.eq(0), stored.eq(0), segs_left.eq(st.n_seg),
                         segs_more.eq(st.n_seg != 0),
                         base.eq(0), base_end.eq(st.s), next_end.eq(st.s << 1), t.eq(0),
                         last_t.eq(st.s == 1),
                         block.eq(0), last_block.eq(st.blocks == 1), bank.eq(0),
                         stage_b.valid.eq(0), stage_c.valid.eq(0)]
        return m
