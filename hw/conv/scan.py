"""VELCRO skip control: the scanner that walks output elements and issues MAC work.

Output elements are visited in 3x3 *blocks* of one output channel, in order
``(o, block row, block column)``, with one ``mask`` beat per block. A block is the
unit of skipping: the 9 elements of a block live in the 9 different banks of the
output buffer at the same word, so the whole block, means of skipped elements and
results of computed ones, is written in one cycle
(:class:`~velcro.hw.conv.array.ConvArray`). The scanner therefore spends

* ``groups`` cycles on every ``slots`` computed elements of a block (one per channel
  group of ``lanes`` input channels; all lanes work on the same elements in lockstep,
  the lowest pending ones of the block, one in each slot), and
* no cycle of its own on a *void* block, one without any computed element: its
  descriptor (the means) goes to the writer while the current block computes, one
  mask beat per cycle, and the writer writes it in a cycle no computed block needs,

so a block with ``n`` computed elements costs ``ceil(n / slots) * groups`` cycles and
cycles fall with the skipped fraction ``C``. Loading the next block overlaps the last cycle of the
current one. A block of ``D`` cycles leaves ``D - 1`` cycles to pass void blocks in;
a void block costs a cycle when none is left, or when no block computes before it.

Each cycle with a block yields one *issue*: for each slot, the bank words of its
element's 3x3 window (for synchronous reads this cycle), how to route the banks onto
the taps and which taps are zero padding; which lanes hold real channels, and flags
that follow the work down the pipeline. Each block yields one *descriptor* for the writer.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import ConvArrayConfig
from .format import MASK_LAYOUT, TAPS

__all__ = ["SkipScanner", "descriptor_layout", "issue_layout"]


SLOT_LAYOUT = data.StructLayout({
    "on": 1,             # the slot computes an element this cycle
    "k": range(TAPS),    # element within the block, 3 * i + j
    "route_row": range(3),   # (y mod 3) of the window centre
    "route_col": range(3),   # (x mod 3) of the window centre
    "pad": TAPS,         # taps that fall outside the input (zero padding)
})


def issue_layout(config: ConvArrayConfig) -> data.StructLayout:
    """What the scanner tells the datapath in one cycle."""
    return data.StructLayout({
        "valid": 1,          # a block is being worked on this cycle
        "mac": 1,            # ... and an element of it is computed (slot 0 is on)
        "first": 1,          # first channel group of the elements
        "last": 1,           # last channel group: the accumulators are final
        "block_end": 1,      # last cycle of the block: write it
        "half": 1,           # which of the two loaded output channels
        "kernel": range(2 * config.max_groups),  # kernel slot in every lane
        "lanes_on": config.lanes,   # lanes holding a channel below c_in
        "slot": data.ArrayLayout(SLOT_LAYOUT, config.slots),
    })


def descriptor_layout(config: ConvArrayConfig) -> data.StructLayout:
    """One output block, as the writer needs it."""
    return data.StructLayout({
        "void": 1,                                   # no element computed: means only
        "lane": range(config.lanes),                 # o mod lanes
        "addr": range(config.bank_depth),            # the block's word in all 9 banks
        "inside": TAPS,                              # elements inside the output map
        "skip": TAPS,                                # ... that are replaced by means
        "mean": data.ArrayLayout(unsigned(8), TAPS),
    })


def _window_tables(stride: int):
    """For centre row/column offset ``i`` (0..2) within a block and bank row ``r``:
    the word-row offset from the block's first centre word row, and ``centre mod 3``.

    The centre of output row ``3 * br + i`` is input row ``yc = stride * (3 * br + i)``;
    the window reads rows ``yc - 1 .. yc + 1``, and bank row ``r`` holds the one with
    ``row mod 3 == r``, in word row ``row div 3``.
    """
    offsets, phases = [], []
    for i in range(3):
        yc = stride * i                      # relative to stride * 3 * br, a multiple of 3
        rows = {(yc + dy) % 3: (yc + dy) // 3 for dy in (-1, 0, 1)}
        offsets.append([rows[r] for r in range(3)])
        phases.append(yc % 3)
    return offsets, phases


def _row_col(k):
    """Row and column within its block of element ``k`` (``3 * i + j``)."""
    return (Array(Const(n // 3, 2) for n in range(TAPS))[k],
            Array(Const(n % 3, 2) for n in range(TAPS))[k])


def _pending(m: Module, todo, stride2, slots: int, name: str) -> dict:
    """What the issue logic needs of a block's pending elements ``todo``: whether none
    is left (``empty``) or at most ``slots`` (``final``), and for each slot ``s`` the
    element it takes (``k{s}``: the lowest pending for slot 0, the next one for slot 1),
    whether there is one (``on{s}``), and for its window centre the bank routing
    (``route_row{s}``/``route_col{s}``: centre mod 3) and the word offsets of each bank
    row and column (``row_sel{s}``/``col_sel{s}``, -1/0/+1 as 0/1/2). Computed on the
    value ``todo`` takes next, so that the issue logic reads them from registers; so is
    ``rest``, what is left once the slots' elements are done.

    Each figure is a table lookup by the slot's element, isolated as one hot
    (``rest & -rest`` of the elements the lower slots leave), so that every output bit
    is an OR of the table rows that set it rather than the end of a priority chain.
    With none pending, the figures are those of element 0."""
    found = {"empty": todo == 0}
    tables = [_window_tables(stride) for stride in (1, 2)]
    rest = todo
    for slot in range(slots):
        lowest = Signal(TAPS, name=f"{name}_lowest{slot}")
        m.d.comb += lowest.eq((rest & (~rest + 1)) | (rest == 0))

        def lookup(values, width: int, label: str, lowest=lowest):
            out = Signal(width, name=f"{name}_{label}")
            m.d.comb += out.eq(Cat(Cat(lowest[n] for n in range(TAPS) if values[n] >> b & 1)
                                   .any() for b in range(width)))
            return out

        found[f"on{slot}"] = rest != 0
        found[f"k{slot}"] = lookup(range(TAPS), Shape.cast(range(TAPS)).width, f"k{slot}")
        for axis, coord_of in (("row", lambda n: n // 3), ("col", lambda n: n % 3)):
            route = [lookup([t[1][coord_of(n)] for n in range(TAPS)], 2,
                            f"route_{axis}{slot}_{s}") for s, t in enumerate(tables)]
            found[f"route_{axis}{slot}"] = Mux(stride2, route[1], route[0])
            found[f"{axis}_sel{slot}"] = []
            for r in range(3):
                sel = [lookup([t[0][coord_of(n)][r] + 1 for n in range(TAPS)], 2,
                              f"{axis}_word{r}_{slot}_{s}") for s, t in enumerate(tables)]
                found[f"{axis}_sel{slot}"].append(Mux(stride2, sel[1], sel[0]))
        left = Signal(TAPS, name=f"{name}_rest{slot + 1}")
        m.d.comb += left.eq(rest & ~lowest)
        rest = left
    found["rest"], found["final"] = rest, rest == 0
    return found


def _take(state: dict, values: dict) -> list:
    """Assignments of every ``state`` register from ``values`` (as :func:`_pending`)."""
    out = []
    for name, reg in state.items():
        if isinstance(reg, list):
            out += [r.eq(v) for r, v in zip(reg, values[name], strict=True)]
        else:
            out.append(reg.eq(values[name]))
    return out


class SkipScanner(wiring.Component):
    """Walks the output blocks of a layer, consumes skip masks, issues MAC work.

    Attributes
    ----------
    start : In
        Begin a layer (the layer inputs below are stable from the next cycle).
    groups, c_in, c_out, height, width, out_height, out_width, stride2, skip, buf : In
        Layer shape: channel groups of the input, channels, input and output map,
        stride 2, whether masks are streamed, the input buffer.
    chan_ready : In
        Per half: the output channel in that half has its kernels and requantization.
    release : Out
        Per half, one cycle: its channel has issued all its work; reload the half.
    mask : In stream
        One :data:`~velcro.hw.conv.format.MASK_LAYOUT` beat per block (when ``skip``).
    desc : Out stream
        One :func:`descriptor_layout` beat per block, sent when the block is loaded
        or, void, passed on.
    idle : Out
        Every block of the layer has been taken and none is being worked on.
    issue : Out
        :func:`issue_layout` record of this cycle.
    bank_addr : Out
        Word of each bank (``3 * r + c``) to read for this cycle's window.
    """

    def __init__(self, config: ConvArrayConfig):
        self.config = config
        c = config
        super().__init__({
            "start": In(1),
            "groups": In(range(c.max_groups + 1)),
            "c_in": In(range(c.max_channels + 1)),
            "c_out": In(range(c.max_channels + 1)),
            "height": In(range(c.max_height + 1)),
            "width": In(range(c.max_width + 1)),
            "out_height": In(range(c.max_height + 1)),
            "out_width": In(range(c.max_width + 1)),
            "stride2": In(1),
            "skip": In(1),
            "buf": In(1),
            "chan_ready": In(2),
            "release": Out(2),
            "mask": In(stream.Signature(MASK_LAYOUT)),
            "desc": Out(stream.Signature(descriptor_layout(c))),
            "issue": Out(issue_layout(c)),
            "idle": Out(1),
            "bank_addr": Out(data.ArrayLayout(data.ArrayLayout(range(c.bank_depth), TAPS),
                                              c.slots)),
        })

    def elaborate(self, platform):
        c = self.config
        m = Module()
        cb = c.col_blocks
        word_bits = c.plane_bits

        # --- next block to load: position counters -------------------------------
        # Input-side bases are kept premultiplied by the stride and by col_blocks so
        # that no multiplier is needed.
        nxt_done = Signal(init=1)                    # no block left (idle)
        nxt_o = Signal(range(c.max_channels))
        nxt_half = Signal()
        nxt_lane = Signal(range(c.lanes))
        nxt_slot = Signal(range(c.max_groups))
        nxt_yo = Signal(range(c.max_height + 3))     # 3 * br
        nxt_xo = Signal(range(c.max_width + 3))      # 3 * bc
        nxt_yc = Signal(range(2 * c.max_height + 6))  # stride * 3 * br
        nxt_xc = Signal(range(2 * c.max_width + 6))   # stride * 3 * bc
        nxt_in_row = Signal(range(2 * c.row_blocks * cb + 2 * cb))   # stride * br * cb
        nxt_in_col = Signal(range(2 * cb + 2))                      # stride * bc
        nxt_out_row = Signal(range(c.row_blocks * cb + cb))         # br * cb
        nxt_bc = Signal(range(cb + 1))

        col_last = nxt_xo + 3 >= self.out_width
        row_last = nxt_yo + 3 >= self.out_height
        chan_last = nxt_o == self.c_out - 1
        # Which rows and columns of the next block lie inside the output map, registered
        # beside its position and set wherever the position moves.
        row_in, col_in = Signal(3), Signal(3)

        def rows_in(yo):
            return Cat(yo + i < self.out_height for i in range(3))

        def cols_in(xo):
            return Cat(xo + j < self.out_width for j in range(3))

        inside = Signal(TAPS)
        for k in range(TAPS):
            i, j = divmod(k, 3)
            m.d.comb += inside[k].eq(row_in[i] & col_in[j])

        # --- current block ------------------------------------------------------
        have = Signal()
        group = Signal(range(c.max_groups))
        cur_half = Signal()
        cur_yc = Signal.like(nxt_yc)
        cur_xc = Signal.like(nxt_xc)
        # The block's window words one row or column back, at, and one ahead.
        cur_in_row = [Signal(range(-cb, 2 * c.row_blocks * cb + 3 * cb), name=f"in_row{n}")
                      for n in range(3)]
        cur_in_col = [Signal(range(-1, 2 * cb + 3), name=f"in_col{n}") for n in range(3)]
        cur_chan_end = Signal()                      # last work of its output channel

        # Of the block's pending elements, registered (:func:`_pending`): whether none or at
        # most ``slots`` are left, what is left after this cycle's, each slot's element and
        # how its window reads the banks; and whether ``group`` is the last, which lanes it
        # fills, its plane in the input buffer. Each is set with ``group`` from that
        # branch's own next pending set, so every path from them starts at a register
        # instead of behind a priority encoder.
        state = {"empty": Signal(init=1), "final": Signal(init=1), "rest": Signal(TAPS)}
        for slot in range(c.slots):
            state |= {f"on{slot}": Signal(name=f"on{slot}"),
                      f"k{slot}": Signal(range(TAPS), name=f"k{slot}"),
                      f"route_row{slot}": Signal(range(3), name=f"route_row{slot}"),
                      f"route_col{slot}": Signal(range(3), name=f"route_col{slot}"),
                      f"row_sel{slot}": [Signal(range(3), name=f"row_word{r}_{slot}")
                                         for r in range(3)],
                      f"col_sel{slot}": [Signal(range(3), name=f"col_word{r}_{slot}")
                                         for r in range(3)]}
        empty, final = state["empty"], state["final"]
        last_group = Signal()
        plane = Signal(range(c.planes))
        finishing = have & (empty | (final & last_group))

        # --- issue record ---------------------------------------------------------
        iss = self.issue
        m.d.comb += [
            iss.valid.eq(have),
            iss.mac.eq(have & ~empty),
            iss.first.eq(group == 0),
            iss.last.eq(last_group),
            iss.block_end.eq(finishing),
            iss.half.eq(cur_half),
            iss.kernel.eq(Mux(cur_half, c.max_groups, 0) + group),
        ]
        # Every group but the last fills all lanes; the last holds the channels left,
        # (c_in - 1) mod lanes + 1 of them. A function of the layer and ``last_group``
        # alone, so it takes no part in the decision to load a block.
        tail = Signal(range(c.lanes))
        if c.lanes & (c.lanes - 1) == 0:
            m.d.comb += tail.eq((self.c_in - 1)[:(c.lanes - 1).bit_length()])
        else:
            m.d.comb += tail.eq((self.c_in - 1) % c.lanes)
        lanes_on = Cat(~last_group | (tail >= lane) for lane in range(c.lanes))
        m.d.comb += iss.lanes_on.eq(lanes_on)
        first_plane = Mux(self.buf, c.max_groups, 0)
        row_words = Array(cur_in_row)
        col_words = Array(cur_in_col)
        for slot in range(c.slots):
            out = iss.slot[slot]
            m.d.comb += [out.on.eq(have & state[f"on{slot}"]), out.k.eq(state[f"k{slot}"]),
                         out.route_row.eq(state[f"route_row{slot}"]),
                         out.route_col.eq(state[f"route_col{slot}"])]
            k_i, k_j = _row_col(state[f"k{slot}"])
            row_sel, col_sel = state[f"row_sel{slot}"], state[f"col_sel{slot}"]
            # Strides are 1 or 2: multiples of the stride are muxed shifts, not multipliers.
            yc = cur_yc + Mux(self.stride2, k_i << 1, k_i)
            xc = cur_xc + Mux(self.stride2, k_j << 1, k_j)
            pad_rows = [yc == 0, Const(0), yc + 1 >= self.height]
            pad_cols = [xc == 0, Const(0), xc + 1 >= self.width]
            m.d.comb += out.pad.eq(Cat(pad_rows[t // 3] | pad_cols[t % 3]
                                       for t in range(TAPS)))
            for bank in range(TAPS):
                r, cc = divmod(bank, 3)
                word = row_words[row_sel[r]] + col_words[col_sel[cc]]
                m.d.comb += self.bank_addr[slot][bank].eq(Cat(word[:word_bits], plane))

        # --- taking the next block: load it, or pass it on if void -------------------------
        want = ~have | finishing
        # The mask stream passes a two-entry skid buffer: the scanner reads a registered
        # beat, and the stream's ready is a register (``~spare_valid``), so that the
        # decision to take a block ends here instead of in the mask's adapter and DMA.
        # It fills ahead while blocks compute, and passes a beat a cycle at a time.
        beat_valid, spare_valid = Signal(), Signal()
        beat, spare = Signal(MASK_LAYOUT), Signal(MASK_LAYOUT)
        beat_taken = Signal()
        arriving = self.mask.valid & ~spare_valid
        m.d.comb += self.mask.ready.eq(~spare_valid)
        with m.If(beat_taken):
            with m.If(spare_valid):
                m.d.sync += [beat.eq(spare), spare_valid.eq(0)]
            with m.Elif(arriving):
                m.d.sync += beat.eq(self.mask.payload)
            with m.Else():
                m.d.sync += beat_valid.eq(0)
        with m.Elif(arriving):
            with m.If(~beat_valid):
                m.d.sync += [beat.eq(self.mask.payload), beat_valid.eq(1)]
            with m.Else():
                m.d.sync += [spare.eq(self.mask.payload), spare_valid.eq(1)]
        skip_bits = Mux(self.skip, beat.skip, 0) & inside
        # The next block's pending elements, registered, so that the tables of
        # :func:`_pending` start at a register: for each way the position and the beat
        # can move, from the edges and the beat that follow, chosen by ``take`` last.
        # (The layer, ``skip`` included, is in place in the cycle of ``start``, when no
        # block is taken or loaded.)
        loaded_todo, cleared_todo = Signal(TAPS), Signal(TAPS)
        m.d.comb += cleared_todo.eq(state["rest"])
        beat_kept, beat_moved = Signal(MASK_LAYOUT), Signal(MASK_LAYOUT)
        m.d.comb += [beat_kept.eq(Mux(arriving & ~beat_valid, self.mask.payload, beat)),
                     beat_moved.eq(Mux(spare_valid, spare, Mux(arriving, self.mask.payload,
                                                               beat)))]

        def todo_of(rows, cols, mask):
            return Cat(rows[k // 3] & cols[k % 3] & ~(self.skip & mask.skip[k])
                       for k in range(TAPS))
        # Void by one bit of the beat, so that the decision to take a block (and the
        # mask stream's ready) waits neither for the position's edges nor for a
        # comparison of the skip bits.
        void = Signal()
        m.d.comb += void.eq(self.skip & beat.void)
        # A half reads as ready while it still holds the kernels of the current block's
        # channel: a block of a later channel in that half (two channels on, after void
        # blocks were passed on) waits until the half is released and refilled.
        # Registers: the next block is one channel past the current block's, or two (in
        # the current block's half: ``foreign``, which holds taking until it finishes).
        one_ahead, foreign = Signal(), Signal()
        can_take = Signal()
        load, divert, take = Signal(), Signal(), Signal()
        m.d.comb += [
            can_take.eq(~nxt_done & self.chan_ready.bit_select(nxt_half, 1) & ~foreign &
                        (~self.skip | beat_valid) & self.desc.ready),
            load.eq(can_take & ~void & want),
            divert.eq(can_take & void),
            take.eq(load | divert),
            self.idle.eq(nxt_done & ~have),
        ]
        # A void block that ends its channel releases the channel's half when the
        # channel's work is done: now, or when the current block (of the same channel,
        # still issuing) finishes.
        same_channel_busy = have & ~finishing & (cur_half == nxt_half)
        chan_end_now = col_last & row_last
        loaded = _pending(m, loaded_todo, self.stride2, c.slots, "loaded")
        cleared = _pending(m, cleared_todo, self.stride2, c.slots, "cleared")
        desc = self.desc.payload
        m.d.comb += [
            beat_taken.eq(take & self.skip),
            self.desc.valid.eq(take),
            desc.void.eq(void),
            desc.lane.eq(nxt_lane),
            desc.addr.eq(Cat((nxt_out_row + nxt_bc)[:word_bits],
                             Mux(self.buf, 0, c.max_groups) + nxt_slot)),
            desc.inside.eq(inside),
            desc.skip.eq(skip_bits),
            desc.mean.eq(beat.mean),
        ]

        with m.If(self.start):
            m.d.sync += [nxt_done.eq(0), nxt_o.eq(0), nxt_half.eq(0), nxt_lane.eq(0),
                         nxt_slot.eq(0), nxt_yo.eq(0), nxt_xo.eq(0), nxt_yc.eq(0),
                         nxt_xc.eq(0), nxt_in_row.eq(0), nxt_in_col.eq(0),
                         nxt_out_row.eq(0), nxt_bc.eq(0), have.eq(0),
                         row_in.eq(rows_in(0)), col_in.eq(cols_in(0))]
        with m.Elif(take):
            with m.If(~col_last):
                m.d.sync += [nxt_xo.eq(nxt_xo + 3), nxt_xc.eq(nxt_xc + Mux(self.stride2, 6, 3)),
                             nxt_in_col.eq(nxt_in_col + Mux(self.stride2, 2, 1)),
                             nxt_bc.eq(nxt_bc + 1), col_in.eq(cols_in(nxt_xo + 3))]
            with m.Else():
                m.d.sync += [nxt_xo.eq(0), nxt_xc.eq(0), nxt_in_col.eq(0), nxt_bc.eq(0),
                             col_in.eq(cols_in(0))]
                with m.If(~row_last):
                    m.d.sync += [nxt_yo.eq(nxt_yo + 3), row_in.eq(rows_in(nxt_yo + 3)),
                                 nxt_yc.eq(nxt_yc + Mux(self.stride2, 6, 3)),
                                 nxt_in_row.eq(nxt_in_row + Mux(self.stride2, 2 * cb, cb)),
                                 nxt_out_row.eq(nxt_out_row + cb)]
                with m.Else():
                    m.d.sync += [nxt_yo.eq(0), row_in.eq(rows_in(0)), nxt_yc.eq(0),
                                 nxt_in_row.eq(0),
                                 nxt_out_row.eq(0), nxt_o.eq(nxt_o + 1),
                                 nxt_half.eq(~nxt_half), nxt_done.eq(chan_last)]
                    with m.If(nxt_lane == c.lanes - 1):
                        m.d.sync += [nxt_lane.eq(0), nxt_slot.eq(nxt_slot + 1)]
                    with m.Else():
                        m.d.sync += nxt_lane.eq(nxt_lane + 1)
        # The edges the position above moves to, and the pending elements there.
        cols_taken = Mux(col_last, cols_in(0), cols_in(nxt_xo + 3))
        rows_taken = Mux(col_last, Mux(row_last, rows_in(0), rows_in(nxt_yo + 3)), row_in)
        with m.If(self.start):
            m.d.sync += loaded_todo.eq(todo_of(rows_in(0), cols_in(0), beat_kept))
        with m.Elif(take):
            m.d.sync += loaded_todo.eq(todo_of(rows_taken, cols_taken, beat_moved))
        with m.Else():
            m.d.sync += loaded_todo.eq(todo_of(row_in, col_in, beat_kept))
        with m.If(self.start):
            m.d.sync += [one_ahead.eq(0), foreign.eq(0)]
        with m.Elif(load):
            m.d.sync += [one_ahead.eq(chan_end_now), foreign.eq(0)]
        with m.Elif(divert & chan_end_now):
            m.d.sync += [one_ahead.eq(~one_ahead), foreign.eq(one_ahead & have & ~finishing)]
        with m.Elif(finishing):
            m.d.sync += foreign.eq(0)
        with m.If(self.start):
            pass
        with m.Elif(load):
            m.d.sync += [group.eq(0),
                         last_group.eq(self.groups == 1),
                         plane.eq(first_plane), *_take(state, loaded)]
            m.d.sync += [have.eq(1), cur_half.eq(nxt_half), cur_yc.eq(nxt_yc),
                         cur_xc.eq(nxt_xc),
                         *(cur_in_row[n].eq(nxt_in_row + (n - 1) * cb) for n in range(3)),
                         *(cur_in_col[n].eq(nxt_in_col + (n - 1)) for n in range(3)),
                         cur_chan_end.eq(chan_end_now)]
        with m.Elif(finishing):
            m.d.sync += have.eq(0)
        with m.Elif(have & ~empty):
            with m.If(divert & chan_end_now & same_channel_busy):
                m.d.sync += cur_chan_end.eq(1)
            with m.If(last_group):
                m.d.sync += [group.eq(0),
                             last_group.eq(self.groups == 1),
                             plane.eq(first_plane), *_take(state, cleared)]
            with m.Else():
                m.d.sync += [group.eq(group + 1),
                             last_group.eq(group + 2 == self.groups),
                             plane.eq(first_plane + group + 1)]

        m.d.comb += self.release.eq(
            Mux(finishing & cur_chan_end, Mux(cur_half, 0b10, 0b01), 0) |
            Mux(divert & chan_end_now & ~same_channel_busy, Mux(nxt_half, 0b10, 0b01), 0))
        return m
