"""The conv array: ``lanes`` conv3x3 instances with VELCRO skip control.

Organisation: lanes are *input* channels. Lane ``l`` holds the
planes of channels ``l, l + lanes, ...``; every plane is spread over 9 banks by
``(y mod 3, x mod 3)``, so any 3x3 window is read in one cycle. The 9 banks are
shared by the lanes, each bank word holding one int8 per lane: all lanes always read
the same word (the same position of their own channel), and a bank-wide word keeps
the number of memories, and of initialised words in the generated Verilog, at 9
instead of ``9 * lanes``. Writes carry a byte enable per lane. The banks ask for
UltraRAM, which leaves the block RAM that limited how many kernels fit a card to the
rest of the design (:mod:`~velcro.hw.conv.banks`).

Per cycle every lane multiplies the 3x3 windows of ``slots`` output elements of one
block by one 3x3 kernel (``9 * lanes * slots`` MACs; with two slots, two products per
DSP slice, :class:`~velcro.hw.conv.lane.ConvLane`), an adder tree per slot sums the
lanes, and an output element accumulates over ``ceil(c_in / lanes)`` cycles before
its slot's requantizer; output channels are processed one after another. Each slot
reads its window from its own copy of the 9 banks.
:class:`~velcro.hw.conv.scan.SkipScanner` decides what is computed: skipped elements
cost no MAC cycle, written together with the computed ones of their block, and a block
of skipped elements only is written in a cycle the computed blocks leave free.

Each bank holds two buffers (ping-pong): a ``CONV`` reads buffer ``buf`` and writes
its output, channel by channel, into the other one, where the next ``CONV`` finds
it; ``LOAD`` and ``DRAIN`` move a tensor between a buffer and the ``ifmap``/``ofmap``
streams, and ``POOL`` max-pools buffer ``buf`` by 2x2 windows into the other one, a
pooled position (all lanes) per cycle (:mod:`~velcro.hw.conv.pool`). Kernels,
requantization factors and skip masks arrive on their own streams while the layer runs
(the kernels of the next output channel load while the current one is computed). One
``start`` pulse with the ``layer`` inputs begins an operation; ``busy`` stays high
until the cycle in which ``done`` pulses.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ..requant import Requantizer
from .banks import FeatureBanks, window_taps
from .config import SHIPPED, ConvArrayConfig, Op
from .format import MASK_LAYOUT, REQUANT_LAYOUT, TAPS, activations_layout, weights_layout
from .lane import ConvLane, adder_tree, tree_latency
from .pool import WindowPool
from .scan import SkipScanner, descriptor_layout, issue_layout
from .walk import PlaneWalker

__all__ = ["ConvArray", "LayerSignature", "StatsSignature", "pipeline_latency",
           "pool_latency", "tree_latency"]

STAT_BITS = 32
ACC_BITS = 34     # bias plus partial sums of any order, before the final fits int32


class LayerSignature(wiring.Signature):
    """Parameters of one operation, as the sender (a sequencer or a testbench) sees them.

    ``c_in``, ``height`` and ``width`` always describe the tensor in buffer ``buf``
    (the input of a ``CONV`` or ``POOL``, the tensor moved by ``LOAD``/``DRAIN``); ``c_out``,
    ``stride``, ``relu`` and ``skip`` matter to ``CONV`` only.
    """

    def __init__(self, config: ConvArrayConfig):
        c = config
        super().__init__({
            "op": Out(2),                                # :class:`Op`
            "buf": Out(1),
            "c_in": Out(range(c.max_channels + 1)),
            "c_out": Out(range(c.max_channels + 1)),
            "height": Out(range(c.max_height + 1)),
            "width": Out(range(c.max_width + 1)),
            "stride": Out(range(3)),                     # 1 or 2
            "relu": Out(1),
            "skip": Out(1),                              # consume the mask stream
        })


class StatsSignature(wiring.Signature):
    """Counters of the last operation (cleared by ``start``)."""

    def __init__(self):
        super().__init__({
            "cycles": Out(STAT_BITS),       # busy cycles
            "mac_cycles": Out(STAT_BITS),   # cycles in which the lanes computed
            "skipped": Out(STAT_BITS),      # output elements replaced by their means
        })


def pipeline_latency(config: ConvArrayConfig) -> int:
    """Cycles from issuing an element's last group to writing its block: window read,
    lane, adder tree, accumulator, requantizer."""
    return (1 + ConvLane.LATENCY + tree_latency(config.lanes) + 1 + Requantizer.LATENCY)


def pool_latency() -> int:
    """Cycles from a pooled position's walk to its write
    (:class:`~velcro.hw.conv.pool.WindowPool`)."""
    return WindowPool.LATENCY


def _delayed(m: Module, value, cycles: int, name: str):
    """``value`` delayed by ``cycles`` registers."""
    for n in range(cycles):
        reg = Signal.like(value, name=f"{name}_d{n + 1}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


class ConvArray(wiring.Component):
    """Conv3x3 + requantization + ReLU over ``lanes`` input-channel lanes, with skipping.

    Parameters
    ----------
    config : ConvArrayConfig
        Lanes and the largest map and channel count (validated on construction).

    Attributes
    ----------
    start : In
        Begin the operation described by ``layer`` (ignored while ``busy``).
    busy : Out
        An operation is running.
    done : Out
        One cycle: the operation finishes (the last ``busy`` cycle).
    error : Out
        The last ``start`` carried parameters out of range; nothing was done.
    layer : In(LayerSignature)
        Operation and layer shape, sampled at ``start``.
    ifmap : In stream
        ``LOAD`` data (:func:`~velcro.hw.conv.format.activations_layout`).
    ofmap : Out stream
        ``DRAIN`` data (same layout).
    weights : In stream
        ``CONV`` kernels (:func:`~velcro.hw.conv.format.weights_layout`).
    requant : In stream
        ``CONV`` bias and requantization (:data:`~velcro.hw.conv.format.REQUANT_LAYOUT`).
    mask : In stream
        ``CONV`` skip masks and means (:data:`~velcro.hw.conv.format.MASK_LAYOUT`),
        read only when ``layer.skip`` is set.
    stats : Out(StatsSignature)
        Counters of the last operation.
    """

    def __init__(self, config: ConvArrayConfig = SHIPPED):
        if not isinstance(config, ConvArrayConfig):
            raise TypeError(f"config must be a ConvArrayConfig, not {config!r}")
        self.config = config
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "layer": In(LayerSignature(config)),
            "ifmap": In(stream.Signature(activations_layout(config.lanes))),
            "ofmap": Out(stream.Signature(activations_layout(config.lanes))),
            "weights": In(stream.Signature(weights_layout(config.lanes))),
            "requant": In(stream.Signature(REQUANT_LAYOUT)),
            "mask": In(stream.Signature(MASK_LAYOUT)),
            "stats": Out(StatsSignature()),
        })

    def elaborate(self, platform):
        c = self.config
        lanes, max_groups = c.lanes, c.max_groups
        m = Module()

        # --- operation parameters, latched at start --------------------------------
        p = self.layer
        buf = Signal()
        c_in = Signal.like(p.c_in)
        c_out = Signal.like(p.c_out)
        height = Signal.like(p.height)
        width = Signal.like(p.width)
        stride2 = Signal()
        relu = Signal()
        skip = Signal()
        groups = Signal(range(max_groups + 1))
        out_height = Signal.like(p.height)
        out_width = Signal.like(p.width)
        # What the plane walker walks: the tensor in ``buf``, or for ``POOL`` the pooled
        # map it writes into the other buffer.
        walk_height = Signal.like(p.height)
        walk_width = Signal.like(p.width)
        walk_buf = Signal()

        def within(value, limit):
            return (value >= 1) & (value <= limit)

        is_conv = p.op == Op.CONV
        is_pool = p.op == Op.POOL
        valid = (within(p.c_in, c.max_channels) & within(p.height, c.max_height) &
                 within(p.width, c.max_width) &
                 (~is_conv | (within(p.c_out, c.max_channels) &
                              ((p.stride == 1) | (p.stride == 2)))) &
                 (~is_pool | ((p.height >= 2) & (p.width >= 2))))
        accept = Signal()
        m.d.comb += accept.eq(self.start & ~self.busy)
        start_conv = accept & valid & is_conv
        with m.If(accept):
            m.d.sync += [
                buf.eq(p.buf), c_in.eq(p.c_in), c_out.eq(p.c_out),
                height.eq(p.height), width.eq(p.width), stride2.eq(p.stride == 2),
                relu.eq(p.relu), skip.eq(p.skip), self.error.eq(~valid),
                groups.eq(sum(p.c_in > g * lanes for g in range(max_groups))),
                out_height.eq(Mux(p.stride == 2, (p.height + 1) >> 1, p.height)),
                out_width.eq(Mux(p.stride == 2, (p.width + 1) >> 1, p.width)),
                walk_height.eq(Mux(is_pool, p.height >> 1, p.height)),
                walk_width.eq(Mux(is_pool, p.width >> 1, p.width)),
                walk_buf.eq(p.buf ^ is_pool),
            ]

        # The scanner starts a cycle after the layer is accepted, from a register and
        # with the layer's settings in place; no block can load before the next cycle,
        # when the first kernel arrives.
        scan_start = Signal()
        m.d.sync += scan_start.eq(start_conv)

        # --- units -------------------------------------------------------------
        m.submodules.walker = walker = PlaneWalker(c)
        m.submodules.pool = pool = WindowPool(c)
        m.submodules.scanner = scan = SkipScanner(c)
        slots = range(c.slots)
        rqs = []
        for slot in slots:
            m.submodules[f"requantizer{slot}"] = unit = Requantizer()
            rqs.append(unit)
        lane_units = []
        for lane in range(lanes):
            unit = ConvLane(2 * max_groups, c.slots)
            m.submodules[f"lane{lane}"] = unit
            lane_units.append(unit)
        word = activations_layout(lanes)
        m.submodules.banks = banks = FeatureBanks(c)

        m.d.comb += [
            walker.start.eq(accept), walker.channels.eq(c_in), walker.groups.eq(groups),
            walker.height.eq(walk_height), walker.width.eq(walk_width),
            walker.buf.eq(walk_buf),
            pool.start.eq(accept), pool.groups.eq(groups), pool.height.eq(walk_height),
            pool.width.eq(walk_width), pool.buf.eq(buf),
            scan.start.eq(scan_start), scan.groups.eq(groups), scan.c_in.eq(c_in),
            scan.c_out.eq(c_out), scan.height.eq(height), scan.width.eq(width),
            scan.out_height.eq(out_height), scan.out_width.eq(out_width),
            scan.stride2.eq(stride2), scan.skip.eq(skip), scan.buf.eq(buf),
        ]
        wiring.connect(m, wiring.flipped(self.mask), scan.mask)

        # --- control --------------------------------------------------------------
        load_done, conv_done, drain_done, pool_done = Signal(), Signal(), Signal(), Signal()
        running = {name: Signal(name=f"in_{name.lower()}")
                   for name in ("LOAD", "CONV", "DRAIN", "POOL")}
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(accept):
                    with m.If(~valid):
                        m.next = "FAIL"
                    with m.Elif(p.op == Op.LOAD):
                        m.next = "LOAD"
                    with m.Elif(p.op == Op.CONV):
                        m.next = "CONV"
                    with m.Elif(p.op == Op.DRAIN):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "POOL"
            for name, finished in (("LOAD", load_done), ("CONV", conv_done),
                                   ("DRAIN", drain_done), ("POOL", pool_done)):
                with m.State(name):
                    m.d.comb += [self.busy.eq(1), running[name].eq(1),
                                 self.done.eq(finished)]
                    with m.If(finished):
                        m.next = "IDLE"
            with m.State("FAIL"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1)]
                m.next = "IDLE"
        # One flip-flop per state (Vivado and Yosys re-encode it so), so that each
        # state's decode is a single bit.
        fsm.state.attrs["fsm_encoding"] = "one_hot"

        stats = self.stats
        with m.If(accept):
            m.d.sync += [stats.cycles.eq(0), stats.mac_cycles.eq(0), stats.skipped.eq(0)]
        with m.Elif(self.busy):
            m.d.sync += stats.cycles.eq(stats.cycles + 1)
        with m.If(running["CONV"] & scan.issue.mac):
            m.d.sync += stats.mac_cycles.eq(stats.mac_cycles + 1)
        with m.If(scan.desc.valid & scan.desc.ready):
            m.d.sync += stats.skipped.eq(
                stats.skipped + sum(scan.desc.payload.skip[k] for k in range(TAPS)))

        # --- kernel and requantization loaders (two output channels ahead) ----------
        # Output channel n goes to half n % 2; a half is refilled once the scanner
        # releases it, so loading overlaps the computation of the other half.
        w_chan = Signal(range(c.max_channels + 1))
        w_group = Signal(range(max_groups))
        w_half = Signal()
        w_full = Signal(2)
        q_chan = Signal(range(c.max_channels + 1))
        q_half = Signal()
        q_full = Signal(2)
        chan_bias = Array(Signal(signed(32), name=f"bias{h}") for h in range(2))
        chan_mult = Array(Signal(unsigned(16), name=f"mult{h}") for h in range(2))
        chan_shift = Array(Signal(unsigned(5), name=f"shift{h}") for h in range(2))

        w_take = Signal()
        q_take = Signal()
        m.d.comb += [
            self.weights.ready.eq(running["CONV"] & (w_chan != c_out) &
                                  ~w_full.bit_select(w_half, 1)),
            w_take.eq(self.weights.valid & self.weights.ready),
            self.requant.ready.eq(running["CONV"] & (q_chan != c_out) &
                                  ~q_full.bit_select(q_half, 1)),
            q_take.eq(self.requant.valid & self.requant.ready),
            scan.chan_ready.eq(w_full & q_full),
        ]
        w_last = w_group == groups - 1
        w_set = Mux(w_take & w_last, Mux(w_half, 0b10, 0b01), 0)
        q_set = Mux(q_take, Mux(q_half, 0b10, 0b01), 0)
        with m.If(start_conv):
            m.d.sync += [w_chan.eq(0), w_group.eq(0), w_half.eq(0), w_full.eq(0),
                         q_chan.eq(0), q_half.eq(0), q_full.eq(0)]
        with m.Else():
            m.d.sync += [w_full.eq((w_full | w_set) & ~scan.release),
                         q_full.eq((q_full | q_set) & ~scan.release)]
            with m.If(w_take):
                with m.If(w_last):
                    m.d.sync += [w_group.eq(0), w_chan.eq(w_chan + 1), w_half.eq(~w_half)]
                with m.Else():
                    m.d.sync += w_group.eq(w_group + 1)
            with m.If(q_take):
                m.d.sync += [q_chan.eq(q_chan + 1), q_half.eq(~q_half),
                             chan_bias[q_half].eq(self.requant.payload.bias),
                             chan_mult[q_half].eq(self.requant.payload.mult),
                             chan_shift[q_half].eq(self.requant.payload.shift)]
        for lane, unit in enumerate(lane_units):
            m.d.comb += [unit.w_en.eq(w_take), unit.w_data.eq(self.weights.payload[lane]),
                         unit.w_addr.eq(Mux(w_half, max_groups, 0) + w_group),
                         unit.rd_addr.eq(scan.issue.kernel)]

        # --- window read and routing (issue cycle t -> t + 1) -------------------------
        for bank in range(TAPS):
            m.d.comb += banks.read_addr[0][bank].eq(
                Mux(running["DRAIN"], walker.addr,
                    Mux(running["POOL"], pool.addr[bank], scan.bank_addr[0][bank])))
        for slot in slots[1:]:
            m.d.comb += banks.read_addr[slot].eq(scan.bank_addr[slot])
        issue1 = Signal(issue_layout(c))
        m.d.sync += issue1.eq(scan.issue)
        bank_data = [banks.read_data[0][bank].as_value() for bank in range(TAPS)]
        for slot in slots:
            route = issue1.slot[slot]
            taps = window_taps(banks.read_data[slot], route.route_row, route.route_col)
            for tap in range(TAPS):
                window_word = data.View(word, taps[tap])
                for lane, unit in enumerate(lane_units):
                    m.d.comb += unit.act[slot][tap].eq(
                        Mux(route.pad[tap] | ~issue1.lanes_on[lane], 0, window_word[lane]))

        # --- lanes -> adder trees -> accumulators -> requantizers, one per slot --------
        acc_stage = 1 + ConvLane.LATENCY + tree_latency(lanes)
        tok_acc = _delayed(m, scan.issue, acc_stage, "tok")
        bias = _delayed(m, chan_bias[scan.issue.half], acc_stage, "bias")
        mult = _delayed(m, chan_mult[scan.issue.half], acc_stage + 1, "mult")
        shift = _delayed(m, chan_shift[scan.issue.half], acc_stage + 1, "shift")
        for slot, rq in zip(slots, rqs, strict=True):
            total = adder_tree(m, [unit.sum[slot] for unit in lane_units], f"tree{slot}_")
            acc = Signal(signed(ACC_BITS), name=f"acc{slot}")
            acc_next = Signal(signed(ACC_BITS), name=f"acc{slot}_next")
            m.d.comb += acc_next.eq(Mux(tok_acc.first, bias, acc) + total)
            with m.If(tok_acc.slot[slot].on):
                m.d.sync += acc.eq(acc_next)
            final = Signal(signed(32), name=f"final{slot}")
            # The golden contract: the final sum fits int32.
            m.d.sync += final.eq(acc_next[:32])
            m.d.comb += [rq.acc.eq(final), rq.relu.eq(relu), rq.mult.eq(mult),
                         rq.shift.eq(shift)]
        tok = _delayed(m, tok_acc, 1 + Requantizer.LATENCY, "tokw")

        # --- block writer ---------------------------------------------------------------
        desc_layout = descriptor_layout(c)
        m.submodules.blocks = blocks = fifo.SyncFIFO(width=desc_layout.size,
                                                     depth=pipeline_latency(c) + 4)
        # Void blocks (nothing computed) wait in their own FIFO and are written in any
        # cycle no computed block is: they pass the computed ones, which is harmless, as
        # every block has its own words. A buffered FIFO, so that the write decision
        # starts at its registered output flag.
        m.submodules.voids = voids = fifo.SyncFIFOBuffered(width=desc_layout.size,
                                                           depth=pipeline_latency(c) + 4)
        # Room for a descriptor, registered: each FIFO had a free place beyond the one a
        # push in that cycle could take. Neither ever fills (blocks are taken one per
        # cycle at most and written one per cycle, each computed one P cycles after it
        # ends, so at most P + 1 void blocks wait), so this costs no cycle; it keeps the
        # FIFOs' level comparisons off the scanner's load decision.
        room = Signal(init=1)
        m.d.sync += room.eq((blocks.level < blocks.depth - 1) & (voids.level < voids.depth - 1))
        taken_void = scan.desc.payload.void
        m.d.comb += [blocks.w_data.eq(scan.desc.payload), voids.w_data.eq(scan.desc.payload),
                     blocks.w_en.eq(scan.desc.valid & ~taken_void),
                     voids.w_en.eq(scan.desc.valid & taken_void),
                     scan.desc.ready.eq(room)]
        head = data.View(desc_layout, blocks.r_data)
        void_head = data.View(desc_layout, voids.r_data)
        values = Array(Signal(signed(8), name=f"value{k}") for k in range(TAPS))
        results = [tok.slot[slot].on & tok.last for slot in slots]
        write_block = running["CONV"] & tok.valid & tok.block_end
        for slot, rq in zip(slots, rqs, strict=True):
            with m.If(results[slot]):
                m.d.sync += values[tok.slot[slot].k].eq(rq.y)
        write_void = Signal()
        m.d.comb += [write_void.eq(running["CONV"] & ~write_block & voids.r_rdy),
                     blocks.r_en.eq(write_block), voids.r_en.eq(write_void)]
        # The layer is done once the scanner has taken every block and both FIFOs are
        # empty: the cycle after the last write (the first CONV cycle, when the scanner
        # only starts, excepted).
        m.d.comb += conv_done.eq(running["CONV"] & ~scan_start & scan.idle & ~blocks.r_rdy &
                                 (voids.level == 0))

        # --- POOL: one pooled position per cycle, all lanes --------------------------------
        # The window of the position the plane walker holds is written pool_latency()
        # cycles later, at that position of the other buffer.
        pool_now = Signal()
        issued_all = Signal()
        m.d.comb += [pool_now.eq(running["POOL"] & ~issued_all), pool.advance.eq(pool_now)]
        m.d.comb += [pool.words[bank].eq(bank_data[bank]) for bank in range(TAPS)]
        delay = pool_latency()
        pool_write = _delayed(m, pool_now, delay, "pool_write")
        pool_last = _delayed(m, pool_now & walker.last, delay, "pool_last")
        pool_addr = _delayed(m, walker.addr, delay, "pool_addr")
        pool_row = _delayed(m, walker.bank_row, delay, "pool_bank_row")
        pool_col = _delayed(m, walker.bank_col, delay, "pool_bank_col")
        m.d.comb += pool_done.eq(pool_last)

        # --- bank writes: LOAD from ifmap, POOL from the window maxima, CONV from the
        # block writer -------------------------------------------------------------------
        ifmap_take = Signal()
        m.d.comb += [self.ifmap.ready.eq(running["LOAD"]),
                     ifmap_take.eq(self.ifmap.valid & self.ifmap.ready),
                     load_done.eq(ifmap_take & walker.last)]
        lane_enable, void_lanes = Signal(lanes), Signal(lanes)
        m.d.comb += [lane_enable.eq(Const(1, lanes) << head.lane),
                     void_lanes.eq(Const(1, lanes) << void_head.lane)]
        for bank in range(TAPS):
            r, col = divmod(bank, 3)
            computed = values[bank]
            for slot in reversed(slots):      # the block's last results, as they leave
                computed = Mux(results[slot] & (tok.slot[slot].k == bank), rqs[slot].y,
                               computed)
            element = Mux(~write_block | head.skip[bank],
                          Mux(write_block, head.mean[bank], void_head.mean[bank]), computed)
            write = banks.write[bank]      # lands a cycle later (:mod:`.banks`)
            with m.If(running["LOAD"]):
                here = (walker.bank_row == r) & (walker.bank_col == col)
                m.d.comb += [write.addr.eq(walker.addr), write.data.eq(self.ifmap.payload),
                             write.en.eq(Mux(ifmap_take & here, (1 << lanes) - 1, 0))]
            with m.Elif(running["POOL"]):
                here = (pool_row == r) & (pool_col == col)
                m.d.comb += [write.addr.eq(pool_addr), write.data.eq(pool.pooled),
                             write.en.eq(Mux(pool_write & here, (1 << lanes) - 1, 0))]
            with m.Else():
                m.d.comb += [write.addr.eq(Mux(write_block, head.addr, void_head.addr)),
                             write.data.eq(Cat(element[:8] for _ in range(lanes))),
                             write.en.eq(Mux(write_block & head.inside[bank], lane_enable, 0) |
                                         Mux(write_void & void_head.inside[bank], void_lanes,
                                             0))]

        # --- DRAIN: reads one beat per cycle into a small FIFO before ofmap -------------
        # Lanes beyond the last channel read words nobody wrote; they leave as zero.
        m.submodules.drain_fifo = out_fifo = fifo.SyncFIFO(width=word.size, depth=4)
        in_flight = Signal()
        from_row = Signal(range(3))
        from_col = Signal(range(3))
        from_lanes = Signal(lanes)
        read_now = Signal()
        m.d.comb += read_now.eq(running["DRAIN"] & ~issued_all &
                                (out_fifo.level + in_flight < out_fifo.depth))
        m.d.comb += walker.advance.eq(ifmap_take | read_now | pool_now)
        m.d.sync += [in_flight.eq(read_now), from_row.eq(walker.bank_row),
                     from_col.eq(walker.bank_col), from_lanes.eq(walker.lanes_on)]
        drained = data.View(word, Array(Array(bank_data[3 * r:3 * r + 3]) for r in range(3))
                                 [from_row][from_col])
        with m.If(accept):
            m.d.sync += issued_all.eq(0)
        with m.Elif((read_now | pool_now) & walker.last):
            m.d.sync += issued_all.eq(1)
        m.d.comb += [
            out_fifo.w_en.eq(in_flight),
            out_fifo.w_data.eq(Cat(Mux(from_lanes[lane], drained[lane], 0)
                                   for lane in range(lanes))),
            self.ofmap.valid.eq(out_fifo.r_rdy),
            self.ofmap.payload.eq(out_fifo.r_data),
            out_fifo.r_en.eq(self.ofmap.ready),
            drain_done.eq(issued_all & ~in_flight & (out_fifo.level == 1) &
                          self.ofmap.valid & self.ofmap.ready),
        ]
        return m
