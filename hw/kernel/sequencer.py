"""The descriptor sequencer of ``velcro_kernel``: runs the program of a kernel call.

Takes ``ap_start`` and the arguments from the control registers, the descriptors
(:mod:`velcro.hw.kernel.descriptor`) from the program DMA's ``desc`` channel, and what
it watches of the datapath: the busy, done and error flags of the DMAs, record
adapters, buffer readers and engines, which input streams offer their first beat, the
dense engine's output beats. Gives every DMA
command, the start and record count of every adapter and buffer reader, the settings
and start of the conv array, flattener and dense engine, the selects of the
kernel's stream multiplexers, the datapath reset, ``ap_idle``/``ap_done``, the status
registers, the per-descriptor counter records and the status block. Each of its
ports bundles the members of one unit under that unit's own names; :func:`attach`
connects it.

Per descriptor: ``FETCH`` (request the 64 bytes, unless they were requested
already) -> ``WAIT_DESC`` -> ``DECODE`` (opcode and ranges) -> ``ADDR`` (addresses)
-> ``ISSUE`` (once every DMA the op uses can take a command; the commands and the
starts of the op's adapters go out together, from registers, in the next cycle) ->
``PREFETCH`` (until the first data of every input stream is on chip, and two output
channels' kernels for a conv layer) -> ``RUN`` (start the engine, wait for its end)
-> op-specific tails -> ``CHECK`` (every stream consumed exactly, the engine accepted
its parameters) -> ``ACCOUNT`` (add the descriptor's counters to its record). ``END``
moves to the next image or, after the last, writes the counter records
(``COUNTERS``). The next descriptor is requested while the current one runs (with
the op's commands from ``ISSUE``, and from ``END_IMAGE`` for the next image's
first), so that only a run's first descriptor waits for the memory's latency; a
``LOAD_MAP`` with ``ahead`` also requests the next image's input once its own is
requested, while the image runs, so that the next image's load finds its data on chip. The
datapath is reset at the start of every run, and again when a run ends with an
error: ``ABORT`` flushes the DMAs (requests already made are completed, their data
dropped). Every run ends in ``STATUS``, which writes the status block
(:data:`~velcro.hw.kernel.config.STATUS_BLOCK`) to the start of the counter buffer,
and ends with ``ap_done`` once that write is acknowledged; a host without register
access reads the outcome of the run there.

Faults (the ``status`` register): an AXI error response on a read or the write, a
bad descriptor (beyond ``max_program``, an unknown opcode, arguments beyond the
configuration, a misaligned address, streams not consumed exactly, an engine that
refused its parameters, a misaligned counter buffer) and the watchdog (a descriptor
running for ``watchdog`` cycles). The first fault records the descriptor index and
opcode in ``error_at`` (an error response to a write arrives, and is recorded, while a
later descriptor runs). Each descriptor check is registered and faults in the state
after the one that makes it (a bad descriptor and a misaligned address in ``ISSUE``,
streams not consumed in ``ACCOUNT``, a descriptor beyond ``max_program`` in
``FETCH``), so that no state's next-state logic waits on the comparators.

Counters: ``busy`` counts the cycles in ``RUN`` (the engines' cost-model cycles plus
the cycle that starts them), ``stall_cycles`` the cycles in ``WAIT_DESC``,
``PREFETCH`` and waits for the write DMA; every other cycle of a descriptor is a
fixed cost of the sequencer (:mod:`velcro.hw.kernel.cost`). The status block
takes the totals in ``STATUS`` and counts that cycle and ``DONE`` in them; the wait
for its own write (a stall of the registers' totals) is the one thing it leaves out.

Why one module: the states of the descriptor loop, the decode of the descriptor they
act on, the checks that end a run and the counters it keeps all read the one
descriptor register and the per-descriptor state (program counter, addresses, cycle
counts); apart, that state would cross ports between modules that change together.
"""

from __future__ import annotations

import enum
from contextlib import contextmanager

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..axi.read import COMMAND
from ..conv.array import LayerSignature, StatsSignature
from ..conv.config import Op
from ..dense.engine import command_layout
from .config import COUNTERS, STATUS_BLOCK, STATUS_MAGIC, KernelConfig
from .csr import register_layout
from .descriptor import DESCRIPTOR, DESCRIPTOR_BYTES, Opcode
from .records import COUNT_BITS, record_words
from .regmap import REGMAP

__all__ = ["OFFERED", "PACKED", "UNPACKED", "Ofmap", "Sequencer", "VectorWrite", "WriteData",
           "attach"]

OP_BITS = 32

#: Record adapters, by stream: ``unpack_<name>`` and ``pack_<name>`` ports.
UNPACKED = ("desc", "weights", "codebook", "requant", "params", "mask", "indices",
            "dense_weights", "act", "vec")
PACKED = ("map", "out", "counters", "status")
#: Input streams whose first beat the sequencer waits for (``weights``: the weight
#: FIFO's output, ``x``: the activation buffer's).
OFFERED = ("act", "vec", "weights", "requant", "mask", "indices", "codebook", "params", "x")


class Ofmap(enum.IntEnum):
    """Where the conv array's output stream goes."""

    NONE = 0
    FLATTEN = 1
    STORE = 2        # the map packer


class VectorWrite(enum.IntEnum):
    """What writes the dense engine's activation buffer."""

    NONE = 0
    FLATTEN = 1
    LOAD = 2         # the vector unpacker
    DENSE = 3        # the dense engine's output


class WriteData(enum.IntEnum):
    """Which packer feeds the write DMA."""

    OUT = 0
    MAP = 1
    COUNTERS = 2
    STATUS = 3


def _transfer(count, base=None, records=None) -> wiring.Signature:
    """Start and watch a record adapter or a buffer reader."""
    members = {"start": Out(1), "count": Out(count), "busy": In(1)}
    if base is not None:
        members["base"] = Out(base)
    if records is not None:
        members["records"] = In(stream.Signature(records))
    return wiring.Signature(members)


def _dma(*commands: str, busy: bool = False) -> wiring.Signature:
    """Command streams, ``clear``, ``flush``, ``idle``, ``error`` (and ``busy``) of a DMA."""
    members = {name: Out(stream.Signature(COMMAND)) for name in commands}
    members.update({"clear": Out(1), "flush": Out(1), "idle": In(1), "error": In(1)})
    if busy:
        members["busy"] = In(1)
    return wiring.Signature(members)


def attach(m: Module, port, unit) -> None:
    """Connect the sequencer's ``port`` to ``unit``, member to member of the same name."""
    for name, member in port.signature.members.items():
        ours, theirs = getattr(port, name), getattr(unit, name)
        if member.is_signature:
            wiring.connect(m, ours, theirs)
        elif member.flow == Out:
            m.d.comb += theirs.eq(ours)
        else:
            m.d.comb += ours.eq(theirs)


class Sequencer(wiring.Component):
    """Runs the descriptor program, once per image.

    Parameters
    ----------
    config : KernelConfig

    Attributes
    ----------
    csr : Out(bundle)
        ``ap_start`` and ``args`` in; ``ap_idle``, ``ap_done``, ``ap_ready`` and
        ``status`` out (:class:`~velcro.hw.kernel.csr.ControlRegisters`).
    reset : Out(1)
        Resets the datapath: at the start of a run and in ``ABORT``.
    rd_program, rd_indices, rd_data, wr_data : Out(bundle)
        Commands, ``clear``, ``flush``, ``idle``, ``error`` (``busy``) of the DMAs.
    unpack_<name>, pack_<name> : Out(bundle)
        ``start``, ``count`` and ``busy`` of the record adapters (:data:`UNPACKED`,
        :data:`PACKED`); ``unpack_desc`` also delivers the descriptors.
    vector_reader, counter_reader : Out(bundle)
        ``start``, ``base``, ``count`` and ``busy`` of the buffer readers.
    conv, flatten, dense : Out(bundle)
        Settings, start, done, busy and error flags of the engines; the conv array's
        statistics.
    offered : In(struct of :data:`OFFERED`)
        The input streams that offer a beat.
    weights_level : In(range(config.weight_fifo_depth + 1))
        Kernel beats in the weight FIFO.
    out_taken : In(1)
        A dense output beat is taken.
    issue : Out(1)
        The descriptor's commands are issued: the buffer write counters restart.
    resident : Out(bundle)
        ``hold`` (the run's first image is done: the on-chip copies of the constant
        buffers answer their reads, :mod:`velcro.hw.axi.resident`) and the ``program``
        and ``indices`` base addresses of the run.
    route : Out(bundle)
        Stream selects: ``ofmap`` (:class:`Ofmap`), ``vector``
        (:class:`VectorWrite`) at ``vector_base``, ``to_memory``, ``write``
        (:class:`WriteData`).
    counter_records : Out(bundle)
        A synchronous read port of the counter records: ``addr`` in, ``data`` out.
    status_block : Out(stream of STATUS_BLOCK)
        The status block, one record per run, to its packer.
    """

    def __init__(self, config: KernelConfig):
        if not isinstance(config, KernelConfig):
            raise TypeError(f"config must be a KernelConfig, not {config!r}")
        self.config = config
        c, vw = config.conv, config.vector_words
        programs = config.max_program
        shape = {"height": Out(range(c.max_height + 1)), "width": Out(range(c.max_width + 1))}
        adapters = {f"unpack_{name}": _transfer(COUNT_BITS) for name in UNPACKED}
        adapters["unpack_desc"] = _transfer(COUNT_BITS, records=8 * DESCRIPTOR_BYTES)
        adapters.update({f"pack_{name}": _transfer(COUNT_BITS) for name in PACKED})
        super().__init__({
            "csr": Out(wiring.Signature({
                "ap_start": In(1), "ap_done": Out(1), "ap_ready": Out(1), "ap_idle": Out(1),
                "args": In(register_layout(REGMAP.arguments)),
                "status": Out(register_layout(REGMAP.status))})),
            "reset": Out(1),
            "rd_program": Out(_dma("desc_cmd", "bulk_cmd", "small_cmd", "mask_cmd")),
            "rd_indices": Out(_dma("indices_cmd")),
            "rd_data": Out(_dma("act_cmd")),
            "wr_data": Out(_dma("cmd", busy=True)),
            **{name: Out(signature) for name, signature in adapters.items()},
            "vector_reader": Out(_transfer(range(2 * vw + 1), range(2 * vw))),
            "counter_reader": Out(_transfer(range(programs + 1), range(programs))),
            "conv": Out(wiring.Signature({
                "start": Out(1), "done": In(1), "error": In(1),
                "layer": Out(LayerSignature(c)), "stats": In(StatsSignature())})),
            "flatten": Out(wiring.Signature({
                "start": Out(1), "channels": Out(range(c.max_channels + 1)), **shape,
                "hwc": Out(1), "busy": In(1), "overflow": In(1)})),
            "dense": Out(wiring.Signature({
                "cmd": Out(stream.Signature(command_layout(config.dense))), "busy": In(1)})),
            "offered": In(data.StructLayout(dict.fromkeys(OFFERED, 1))),
            "weights_level": In(range(config.weight_fifo_depth + 1)),
            "out_taken": In(1),
            "issue": Out(1),
            "resident": Out(wiring.Signature({"hold": Out(1), "program": Out(64),
                                              "indices": Out(64)})),
            "route": Out(wiring.Signature({
                "ofmap": Out(2), "vector": Out(2),
                "vector_base": Out(range(2 * vw)), "to_memory": Out(1), "write": Out(2)})),
            "counter_records": Out(wiring.Signature({
                "addr": In(range(programs)), "data": Out(COUNTERS)})),
            "status_block": Out(stream.Signature(STATUS_BLOCK)),
        })

    def elaborate(self, platform):
        cfg = self.config
        wb = cfg.word_bytes
        lanes = cfg.conv.lanes
        dense_cfg = cfg.dense
        vw = cfg.vector_words
        m = Module()

        csr, args, route, offered = self.csr, self.csr.args, self.route, self.offered
        rd_prog, rd_idx, rd_data = self.rd_program, self.rd_indices, self.rd_data
        readers = (rd_prog, rd_idx, rd_data)
        wr = self.wr_data
        unpack = {name: getattr(self, f"unpack_{name}") for name in UNPACKED}
        pack = {name: getattr(self, f"pack_{name}") for name in PACKED}
        x_reader, c_reader = self.vector_reader, self.counter_reader
        conv, flat, dense = self.conv, self.flatten, self.dense
        dp_reset = self.reset

        # Counter records: one per descriptor, accumulated over the images of a run.
        m.submodules.counters = cmem = Memory(shape=COUNTERS, depth=cfg.max_program, init=[])
        c_write = cmem.write_port()
        c_old = cmem.read_port()
        c_out = cmem.read_port()
        m.d.comb += [c_out.addr.eq(self.counter_records.addr),
                     self.counter_records.data.eq(c_out.data)]

        # --- state ----------------------------------------------------------------------
        desc = Signal(DESCRIPTOR)
        op = desc.opcode
        # One flag per opcode, registered beside the descriptor: the decode of every
        # state reads a flip-flop, not a comparison of the opcode field.
        op_flag = {code: Signal(name=f"op_{code.name.lower()}") for code in Opcode}
        mp, cv, dn, vc = desc.args.map, desc.args.conv, desc.args.dense, desc.args.vec
        pc = Signal(16)
        end_pc = Signal(16)
        image = Signal(32)
        base = {name: Signal(64, name=f"base_{name}")
                for name in ("program", "indices", "inputs", "outputs", "counters")}
        images = Signal(32)
        watchdog = Signal(32)
        watchdog_on = Signal()
        image_offset = Signal(64)
        io_addr = Signal(64)
        # The write DMA's next command address, set in the state before each write:
        # the op's output, the counter records, the status block.
        wr_addr = Signal(64)
        addr = {name: Signal(64, name=f"addr_{name}")
                for name in ("bulk", "small", "mask", "indices")}
        kick = Signal()                   # first cycle of RUN
        conv_kick = Signal()              # kick of an op of the conv array, beside it
        # The next image's input read, requested while this image runs (a LOAD_MAP with
        # ``ahead``): its command, whether it is still to go out, whether it went out for
        # the image now running (whose LOAD_MAP then issues no read), and whether an image
        # follows this one (set in DECODE, read by the LOAD_MAP's ISSUE and END_IMAGE).
        ahead_addr = Signal(64)
        ahead_want = Signal()
        ahead_fire = Signal()
        ahead_done = Signal()
        more_images = Signal()
        # The next descriptor is requested while this one runs: ISSUE sends the request
        # for pc + 1 with the op's own commands (every op but END has a successor, since
        # a program ends with END), END_IMAGE the one for the next image's first
        # descriptor; FETCH then only waits for its data.
        next_desc = Signal(64)            # its address, set in ADDR or END_IMAGE
        may_prefetch = Signal()           # pc + 1 < max_program, set in ADDR
        fire_desc = Signal()              # the request goes out (a register, like fire)
        prefetched = Signal()             # requested: FETCH sends nothing
        fetch_now = Signal()              # FETCH sends the request itself
        # Dense output beats still to come, and whether one is (registered beside it).
        beats_left = Signal(range(dense_cfg.max_groups + 1))
        one_left = Signal()
        # The last beat was taken (RUN ends the cycle after: the handshake of the beat
        # runs through the write path's FIFO, and the next state waits on no part of it).
        out_done = Signal()
        # The conv array's done pulse, registered: RUN ends the cycle after it, so that
        # the array's state and handshakes behind the pulse stay out of the next state.
        conv_done = Signal()
        m.d.sync += conv_done.eq(conv.done)

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
        block = self.status_block
        status_now = Signal.like(status)
        error_at_now = Signal(REGMAP["error_at"].width)
        counters_misaligned = base["counters"][:exact_log2(wb)] != 0

        def words(stream: str, records):
            per_word, per_record = record_words(cfg.payload_bits(stream), wb)
            if per_record == 1:
                return (records + per_word - 1) >> exact_log2(per_word)
            return records * per_record

        def is_op(*opcodes):
            return Cat(op_flag[code] for code in opcodes).any()

        dense_beats = (dn.n_out + dense_cfg.lanes - 1) >> exact_log2(dense_cfg.lanes)
        half = {"src": Mux(dn.src, vw, 0), "dst": Mux(Mux(is_op(Opcode.DENSE), dn.dst,
                                                          Mux(is_op(Opcode.FLATTEN), mp.dst,
                                                              vc.dst)), vw, 0)}

        # --- engine settings and starts -----------------------------------------------------
        layer = conv.layer
        # The conv array's settings are registers, set from the opcode flags and the
        # descriptor (stable from DECODE, a register each) in the cycle after: its
        # range checks at ``start`` then begin at flip-flops.
        with m.If(is_op(Opcode.CONV)):
            m.d.sync += [layer.op.eq(Op.CONV), layer.buf.eq(cv.buf),
                         layer.c_in.eq(cv.c_in), layer.c_out.eq(cv.c_out),
                         layer.height.eq(cv.height), layer.width.eq(cv.width),
                         layer.stride.eq(cv.stride), layer.relu.eq(cv.relu),
                         layer.skip.eq(cv.skip)]
        with m.Elif(is_op(Opcode.LOAD_MAP, Opcode.POOL, Opcode.FLATTEN, Opcode.STORE_MAP)):
            m.d.sync += [layer.op.eq(Mux(is_op(Opcode.LOAD_MAP), Op.LOAD,
                                         Mux(is_op(Opcode.POOL), Op.POOL, Op.DRAIN))),
                         layer.buf.eq(mp.buf), layer.c_in.eq(mp.channels), layer.c_out.eq(0),
                         layer.height.eq(mp.height), layer.width.eq(mp.width),
                         layer.stride.eq(0), layer.relu.eq(0), layer.skip.eq(0)]
        # The array's start is a flip-flop: its range checks and state decode follow it.
        conv_ops = is_op(Opcode.LOAD_MAP, Opcode.CONV, Opcode.POOL, Opcode.FLATTEN,
                         Opcode.STORE_MAP)
        m.d.comb += conv.start.eq(conv_kick)
        m.d.comb += [flat.channels.eq(mp.channels), flat.height.eq(mp.height),
                     flat.width.eq(mp.width), flat.hwc.eq(mp.hwc),
                     flat.start.eq(kick & is_op(Opcode.FLATTEN))]
        cmd = dense.cmd.payload
        m.d.comb += [cmd.n_seg.eq(dn.n_seg), cmd.s.eq(dn.s), cmd.index_bits.eq(dn.index_bits),
                     cmd.n_out.eq(dn.n_out), cmd.relu.eq(dn.relu), cmd.logits.eq(dn.logits),
                     dense.cmd.valid.eq(kick & is_op(Opcode.DENSE))]
        if dense_cfg.int8:
            m.d.comb += cmd.int8.eq(dn.int8)
        out_taken = self.out_taken
        with m.If(out_taken):
            m.d.sync += [beats_left.eq(beats_left - 1), one_left.eq(beats_left == 2),
                         out_done.eq(one_left)]

        # --- stream selects -----------------------------------------------------------------
        m.d.comb += [route.to_memory.eq(dn.to_memory),
                     route.vector_base.eq(half["dst"])]
        for code, routes in (
                (Opcode.FLATTEN, [route.ofmap.eq(Ofmap.FLATTEN),
                                  route.vector.eq(VectorWrite.FLATTEN)]),
                (Opcode.STORE_MAP, [route.ofmap.eq(Ofmap.STORE)]),
                (Opcode.LOAD_VEC, [route.vector.eq(VectorWrite.LOAD)]),
                (Opcode.DENSE, [route.vector.eq(VectorWrite.DENSE)])):
            with m.If(is_op(code)):
                m.d.comb += routes

        # --- faults -----------------------------------------------------------------------------
        axi_read = Cat(r.error for r in readers).any()
        over_time = watchdog_on & (op_cycles >= watchdog)
        status_reg = REGMAP["status"]
        fault = Signal(status_reg.width)
        for name, cause in (("AXI_READ", axi_read), ("AXI_WRITE", wr.error),
                            ("BAD_DESCRIPTOR", bad), ("WATCHDOG", over_time)):
            m.d.comb += fault[status_reg.field_named(name).bit].eq(cause)

        c = cfg.conv
        d = dense_cfg
        # A conv layer starts once the weight FIFO holds its first two output channels'
        # kernels (two beats per channel group), what the array loads before its first
        # block; the rest keeps arriving while it computes. Both registers: the need
        # from the descriptor, the comparison from the FIFO's level (which only rises
        # before the layer starts, so a cycle late is never early).
        weights_need = Signal(range(cfg.weight_fifo_depth + 1))
        weights_ahead = Signal()
        groups = (cv.c_in + c.lanes - 1) >> exact_log2(c.lanes)
        m.d.sync += [weights_need.eq(groups << 1),
                     weights_ahead.eq(self.weights_level >= weights_need)]
        streams_left = {
            Opcode.LOAD_MAP: unpack["act"].busy,
            Opcode.CONV: unpack["weights"].busy | offered.weights | unpack["requant"].busy |
            unpack["mask"].busy,
            Opcode.DENSE: unpack["indices"].busy | unpack["dense_weights"].busy |
            unpack["codebook"].busy |
            unpack["params"].busy | x_reader.busy | dense.busy,
            Opcode.LOAD_VEC: unpack["vec"].busy,
            Opcode.FLATTEN: flat.overflow,
        }
        # The DMA commands each op issues, and the addresses they use. Set in DECODE,
        # like ``misaligned`` in ADDR, so that ISSUE and PREFETCH read registers.
        no_codebook = Signal()
        needs = {
            "act": is_op(Opcode.LOAD_VEC) | (is_op(Opcode.LOAD_MAP) & ~ahead_done),
            "bulk": is_op(Opcode.CONV) | (is_op(Opcode.DENSE) & ~no_codebook),
            "small": is_op(Opcode.CONV, Opcode.DENSE),
            "mask": is_op(Opcode.CONV) & cv.skip,
            "indices": is_op(Opcode.DENSE),
            "write": is_op(Opcode.STORE_MAP) | (is_op(Opcode.DENSE) & dn.to_memory),
        }
        misaligned = Signal()
        # Whether the first data of every input stream of the op is on chip, registered:
        # no stream is consumed before RUN, so a cycle late is never early, and the
        # offered flags stay out of the state's next-state logic.
        streams_ready = Signal()
        weights_ready = weights_ahead | ~unpack["weights"].busy
        m.d.sync += streams_ready.eq(
            (is_op(Opcode.LOAD_MAP) & offered.act) | (is_op(Opcode.LOAD_VEC) & offered.vec) |
            (is_op(Opcode.CONV) & weights_ready & offered.requant &
             (~cv.skip | offered.mask)) |
            (is_op(Opcode.DENSE) & offered.x & offered.indices & offered.params &
             (no_codebook | offered.codebook)))

        # Descriptor checks, each in the state that makes it (registered inputs only).
        def beyond(value, limit, low=1):
            return (value < low) | (value > limit)

        map_shape = beyond(mp.channels, c.max_channels) | beyond(mp.height, c.max_height) | \
            beyond(mp.width, c.max_width)
        decode_checks = {
            Opcode.LOAD_MAP: map_shape,
            Opcode.STORE_MAP: map_shape,
            Opcode.FLATTEN: map_shape | (mp.hwc & (
                ((mp.channels[:exact_log2(lanes)] != 0) if lanes > 1 else Const(0, 1)) |
                Const(int(8 * lanes > d.width), 1))),
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
        # Every descriptor check ends the run one state after the one that makes it, from
        # a register set for that one cycle: its comparators and the fault logic behind
        # them would otherwise make one path.
        decode_bad = Signal()
        decode_bad_late = Signal()
        check_bad_late = Signal()
        pc_bad = Signal()           # FETCH of a descriptor beyond max_program
        counters_bad = Signal()     # COUNTERS with a misaligned counter buffer
        m.d.sync += [decode_bad_late.eq(0), misaligned.eq(0), check_bad_late.eq(0),
                     pc_bad.eq(0), counters_bad.eq(0)]
        # The argument checks of every opcode, registered in every cycle from the
        # descriptor (stable from DECODE on), and combined with the opcode's flag in ADDR.
        # An unknown opcode raises no flag.
        checked = Signal(len(decode_checks))
        m.d.sync += checked.eq(Cat(decode_checks.values()))
        m.d.comb += decode_bad.eq(~is_op(*Opcode) |
                                  Cat(is_op(code) & checked[i]
                                      for i, code in enumerate(decode_checks)).any())
        check_bad = Signal()
        left = Const(0, 1)
        for code, busy in streams_left.items():
            left = left | (is_op(code) & busy)
        m.d.comb += check_bad.eq(left | (is_op(Opcode.LOAD_MAP, Opcode.CONV, Opcode.POOL,
                                               Opcode.FLATTEN, Opcode.STORE_MAP) & conv.error))

        # --- commands and starts --------------------------------------------------------------
        # ISSUE decides when every command and start of the descriptor can go out; they go
        # out the cycle after, from registers (``fire``, ``begin``), so that the DMAs and
        # record adapters that take them see flip-flops and not the state decode and the
        # readiness of every DMA. A DMA that was ready stays ready until it takes a
        # command, and only the sequencer gives it one, so the commands are taken then.
        commands = {"act": rd_data.act_cmd, "bulk": rd_prog.bulk_cmd,
                    "small": rd_prog.small_cmd, "mask": rd_prog.mask_cmd,
                    "indices": rd_idx.indices_cmd, "write": wr.cmd}
        conv_op = is_op(Opcode.CONV)
        act_records = Mux(is_op(Opcode.LOAD_VEC), vc.io.records, mp.io.records)
        m.d.comb += [
            rd_data.act_cmd.payload.addr.eq(Mux(ahead_fire, ahead_addr, io_addr)),
            rd_data.act_cmd.payload.words.eq(Mux(is_op(Opcode.LOAD_VEC),
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
            # An int8 layer's weights are records of the codebook stream.
            rd_idx.indices_cmd.payload.words.eq(Mux(dn.int8, words("codebook", dn.indices.records),
                                                    words("indices", dn.indices.records))),
        ]
        # Unit, whether the op starts it, and its count.
        starts = {
            "act": (unpack["act"], is_op(Opcode.LOAD_MAP), act_records),
            "vec": (unpack["vec"], is_op(Opcode.LOAD_VEC), act_records),
            "weights": (unpack["weights"], conv_op, cv.weights.records),
            "requant": (unpack["requant"], conv_op, cv.requant.records),
            "mask": (unpack["mask"], conv_op & cv.skip, cv.mask.records),
            "indices": (unpack["indices"], is_op(Opcode.DENSE) & ~dn.int8, dn.indices.records),
            "dense_weights": (unpack["dense_weights"], is_op(Opcode.DENSE) & dn.int8,
                              dn.indices.records),
            "codebook": (unpack["codebook"], is_op(Opcode.DENSE), dn.codebook.records),
            "params": (unpack["params"], is_op(Opcode.DENSE), dn.params.records),
            "map": (pack["map"], is_op(Opcode.STORE_MAP), mp.io.records),
            "out": (pack["out"], is_op(Opcode.DENSE) & dn.to_memory, dense_beats),
            "x": (x_reader, is_op(Opcode.DENSE), dn.x_records),
        }
        fire = {k: Signal(name=f"fire_{k}") for k in needs}
        begin = {name: Signal(name=f"begin_{name}") for name in (*starts, "counters", "status")}
        issued = Signal()
        m.d.sync += [s.eq(0) for s in (*fire.values(), *begin.values(), issued, fire_desc)]
        m.d.comb += [
            rd_prog.desc_cmd.valid.eq(fetch_now | fire_desc),
            rd_prog.desc_cmd.payload.addr.eq(Mux(fire_desc, next_desc,
                                                 base["program"] + pc * DESCRIPTOR_BYTES)),
            rd_prog.desc_cmd.payload.words.eq(words("descriptor", 1)),
            unpack["desc"].start.eq(fetch_now | fire_desc), unpack["desc"].count.eq(1),
        ]
        m.d.comb += [commands[k].valid.eq(fire[k] | (ahead_fire if k == "act" else 0))
                     for k in needs]
        # The next image's input read goes out while an op runs (RUN, which no ISSUE and
        # so no other read command of the channel overlaps), once the channel has
        # requested all of this image's; decided a cycle ahead, like every command.
        m.d.sync += ahead_fire.eq(ahead_want & ~ahead_fire & ~fire["act"] & in_busy &
                                  rd_data.act_cmd.ready)
        with m.If(ahead_fire):
            m.d.sync += [ahead_want.eq(0), ahead_done.eq(1)]
        for name, (unit, _, count) in starts.items():
            m.d.comb += [unit.start.eq(begin[name]), unit.count.eq(count)]
        m.d.comb += [x_reader.base.eq(half["src"]), self.issue.eq(issued),
                     self.resident.program.eq(base["program"]),
                     self.resident.indices.eq(base["indices"])]
        # The write DMA serves the op's output, the counter records and the status block:
        # its command's size and its source are registers, set where the command is
        # decided (ISSUE, COUNTERS, STATUS).
        wr_words = Signal.like(wr.cmd.payload.words)
        write_src = Signal(WriteData)
        m.d.comb += [wr.cmd.payload.words.eq(wr_words), route.write.eq(write_src),
                     pack["counters"].start.eq(begin["counters"]),
                     pack["counters"].count.eq(end_pc),
                     c_reader.start.eq(begin["counters"]), c_reader.base.eq(0),
                     c_reader.count.eq(end_pc),
                     pack["status"].start.eq(begin["status"]), pack["status"].count.eq(1)]

        # --- the descriptor loop ----------------------------------------------------------------
        # ABORT's flag, a register beside the state: the DMA flushes and the datapath
        # reset read it instead of a decode of the state.
        aborting = Signal()
        restart = Signal()          # ap_start: the datapath is reset for the new run
        with m.FSM() as fsm:
            @contextmanager
            def active(name):
                """A state a fault ends: its actions wait for no fault."""
                with m.State(name):
                    with m.If(fault.any()):
                        m.next = "ABORT"
                        m.d.sync += aborting.eq(1)
                    with m.Else():
                        yield

            with m.State("IDLE"):
                m.d.comb += csr.ap_idle.eq(1)
                m.d.sync += kick.eq(0)
                m.d.sync += conv_kick.eq(0)
                with m.If(csr.ap_start):
                    m.d.comb += [restart.eq(1)] + [r.clear.eq(1) for r in readers] + \
                        [wr.clear.eq(1)]
                    m.d.sync += [base[name].eq(args[name]) for name in base]
                    m.d.sync += [images.eq(args.images), watchdog.eq(args.watchdog),
                                 watchdog_on.eq(args.watchdog != 0),
                                 image.eq(0), pc.eq(0), end_pc.eq(0), status.eq(0),
                                 prefetched.eq(0), self.resident.hold.eq(0),
                                 ahead_want.eq(0), ahead_done.eq(0),
                                 error_pc.eq(0), error_op.eq(0), images_done.eq(0),
                                 op_cycles.eq(0)]
                    m.d.sync += [t.eq(0) for t in total.values()]
                    m.d.sync += wr_addr.eq(args["counters"])
                    with m.If(args.images == 0):
                        m.next = "STATUS"
                    with m.Else():
                        m.next = "FETCH"

            with active("FETCH"):
                with m.If(prefetched):
                    m.d.sync += prefetched.eq(0)
                    m.next = "WAIT_DESC"
                with m.Else():
                    m.d.comb += fetch_now.eq(1)
                    with m.If(rd_prog.desc_cmd.ready):
                        m.next = "WAIT_DESC"

            with active("WAIT_DESC"):
                m.d.comb += [in_stall.eq(1), unpack["desc"].records.ready.eq(1)]
                with m.If(unpack["desc"].records.valid):
                    fetched = DESCRIPTOR(unpack["desc"].records.payload[:DESCRIPTOR.size])
                    m.d.sync += [desc.eq(fetched)] + \
                        [op_flag[code].eq(fetched.opcode == code) for code in Opcode]
                    m.next = "DECODE"

            with active("DECODE"):
                stride = Mux(is_op(Opcode.DENSE), dn.out.stride,
                             Mux(is_op(Opcode.LOAD_VEC), vc.io.stride, mp.io.stride))
                m.d.sync += [image_offset.eq(image * stride), more_images.eq(image + 1 < images),
                             no_codebook.eq(dn.codebook.records == 0)]
                with m.If(is_op(Opcode.END)):
                    m.next = "END_IMAGE"
                with m.Else():
                    m.next = "ADDR"

            with active("ADDR"):
                m.d.sync += decode_bad_late.eq(decode_bad)
                io = Mux(is_op(Opcode.DENSE), dn.out.offset,
                         Mux(is_op(Opcode.LOAD_VEC), vc.io.offset, mp.io.offset))
                io_base = Mux(is_op(Opcode.LOAD_MAP, Opcode.LOAD_VEC), base["inputs"],
                              base["outputs"])
                new = {
                    "io": io_base + io + image_offset,
                    "bulk": base["program"] + Mux(is_op(Opcode.CONV), cv.weights.offset,
                                                  dn.codebook.offset),
                    "small": base["program"] + Mux(is_op(Opcode.CONV), cv.requant.offset,
                                                   dn.params.offset),
                    "mask": base["program"] + cv.mask.offset,
                    "indices": base["indices"] + dn.indices.offset,
                }
                m.d.sync += [io_addr.eq(new["io"]), wr_addr.eq(new["io"])] + \
                    [addr[name].eq(new[name]) for name in addr]
                m.d.sync += [next_desc.eq(base["program"] + (pc + 1) * DESCRIPTOR_BYTES),
                             may_prefetch.eq(pc + 1 < cfg.max_program)]
                uses = {"act": "io", "write": "io"}
                m.d.sync += misaligned.eq(Cat(
                    needs[k] & (new[uses.get(k, k)][:exact_log2(wb)] != 0) for k in needs).any())
                m.next = "ISSUE"

            with active("ISSUE"):
                all_ready = Cat(~needs[k] | commands[k].ready for k in needs).all() & \
                    (~may_prefetch | rd_prog.desc_cmd.ready)
                with m.If(all_ready & ~misaligned):
                    m.d.sync += [fire[k].eq(needs[k]) for k in needs]
                    m.d.sync += [fire_desc.eq(may_prefetch), prefetched.eq(may_prefetch)]
                    with m.If(is_op(Opcode.LOAD_MAP)):
                        m.d.sync += [ahead_done.eq(0),
                                     ahead_want.eq(mp.ahead & more_images),
                                     ahead_addr.eq(io_addr + mp.io.stride)]
                    m.d.sync += [begin[name].eq(when) for name, (_, when, _) in starts.items()]
                    m.d.sync += [issued.eq(1), beats_left.eq(dense_beats),
                                 one_left.eq(dense_beats == 1), out_done.eq(0),
                                 wr_words.eq(Mux(is_op(Opcode.STORE_MAP),
                                                 words("act", mp.io.records),
                                                 words("out", dense_beats))),
                                 write_src.eq(Mux(is_op(Opcode.STORE_MAP), WriteData.MAP,
                                                  WriteData.OUT))]
                    with m.If(is_op(Opcode.LOAD_MAP, Opcode.CONV, Opcode.DENSE,
                                    Opcode.LOAD_VEC)):
                        m.next = "PREFETCH"
                    with m.Else():
                        m.d.sync += kick.eq(1)
                        m.d.sync += conv_kick.eq(conv_ops)
                        m.next = "RUN"

            with active("PREFETCH"):
                m.d.comb += in_stall.eq(1)
                with m.If(streams_ready):
                    m.d.sync += kick.eq(~is_op(Opcode.LOAD_VEC))
                    m.d.sync += conv_kick.eq(conv_ops)
                    m.next = "RUN"

            with active("RUN"):
                m.d.comb += in_busy.eq(1)
                m.d.sync += kick.eq(0)
                m.d.sync += conv_kick.eq(0)
                with m.If(is_op(Opcode.LOAD_MAP, Opcode.CONV, Opcode.POOL) & conv_done):
                    m.next = "CHECK"
                with m.If(is_op(Opcode.FLATTEN) & conv_done):
                    m.next = "FLATTEN_TAIL"
                with m.If(is_op(Opcode.STORE_MAP) & conv_done):
                    m.next = "FINISH"
                with m.If(is_op(Opcode.DENSE) & out_done):
                    with m.If(dn.to_memory):
                        m.next = "FINISH"
                    with m.Else():
                        m.next = "CHECK"
                with m.If(is_op(Opcode.LOAD_VEC) & ~unpack["vec"].busy):
                    m.next = "CHECK"

            with active("FLATTEN_TAIL"):
                with m.If(~flat.busy):
                    m.next = "CHECK"

            # A write is finished once the packer has handed the DMA its last word and
            # the DMA has requested every burst: the responses are collected while the
            # next descriptors run (the run waits for them before its counter records).
            with active("FINISH"):
                m.d.comb += in_stall.eq(1)
                with m.If(wr.cmd.ready & ~pack["map"].busy & ~pack["out"].busy):
                    m.next = "CHECK"

            with active("CHECK"):
                m.d.sync += check_bad_late.eq(check_bad)
                m.next = "ACCOUNT"

            with active("ACCOUNT"):
                first = image == 0
                is_conv = is_op(Opcode.CONV)
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
                             pc.eq(pc + 1), pc_bad.eq(pc + 1 >= cfg.max_program)]
                m.next = "FETCH"

            with active("END_IMAGE"):
                m.d.sync += [images_done.eq(images_done + 1), end_pc.eq(pc),
                             image.eq(image + 1)]
                with m.If(more_images):
                    m.d.sync += [pc.eq(0), next_desc.eq(base["program"]),
                                 self.resident.hold.eq(1),
                                 fire_desc.eq(rd_prog.desc_cmd.ready),
                                 prefetched.eq(rd_prog.desc_cmd.ready)]
                    m.next = "FETCH"
                with m.Else():
                    m.d.sync += [wr_addr.eq(base["counters"] + cfg.status_bytes),
                                 counters_bad.eq(counters_misaligned)]
                    m.next = "COUNTERS"

            with active("COUNTERS"):
                with m.If(end_pc == 0):
                    m.d.sync += wr_addr.eq(base["counters"])
                    m.next = "STATUS"
                with m.Elif(wr.cmd.ready):
                    # The command and the starts go out in COUNTERS_WAIT's first cycle,
                    # which therefore waits for nothing; wr_addr changes after it.
                    m.d.sync += [fire["write"].eq(1), begin["counters"].eq(1),
                                 wr_words.eq(words("counters", end_pc)),
                                 write_src.eq(WriteData.COUNTERS)]
                    m.next = "COUNTERS_WAIT"

            with active("COUNTERS_WAIT"):
                m.d.comb += in_stall.eq(1)
                with m.If(fire["write"]):
                    m.d.sync += wr_addr.eq(base["counters"])
                with m.Elif(~wr.busy & ~pack["counters"].busy & ~c_reader.busy):
                    m.next = "STATUS"

            with m.State("ABORT"):
                m.d.sync += wr_addr.eq(base["counters"])
                with m.If(Cat(r.idle for r in readers).all() & wr.idle):
                    m.d.sync += aborting.eq(0)
                    m.next = "STATUS"

            # Not an active state: the block of a faulted run is written all the same.
            with m.State("STATUS"):
                with m.If(counters_misaligned):
                    m.next = "DONE"
                with m.Elif(wr.cmd.ready):
                    m.d.sync += [fire["write"].eq(1), begin["status"].eq(1),
                                 wr_words.eq(words("status", 1)),
                                 write_src.eq(WriteData.STATUS)]
                    # The totals so far, this cycle and DONE's: all but the write's wait.
                    m.d.sync += [
                        block.payload.magic.eq(STATUS_MAGIC),
                        block.payload.status.eq(status_now),
                        block.payload.error_at.eq(error_at_now),
                        block.payload.images_done.eq(images_done),
                        block.payload.cycles.eq(total["cycles"] + 2),
                        block.payload.mac_cycles.eq(total["mac_cycles"]),
                        block.payload.skipped.eq(total["skipped"]),
                        block.payload.stall_cycles.eq(total["stall_cycles"]),
                        block.valid.eq(1),
                    ]
                    m.next = "STATUS_WAIT"
                with m.Else():
                    m.d.comb += in_stall.eq(1)

            with m.State("STATUS_WAIT"):
                m.d.comb += in_stall.eq(1)
                with m.If(block.ready):
                    m.d.sync += block.valid.eq(0)
                with m.If(~fire["write"] & ~block.valid & ~wr.busy & ~pack["status"].busy):
                    m.next = "DONE"

            with m.State("DONE"):
                m.d.comb += [csr.ap_done.eq(1), csr.ap_ready.eq(1)]
                m.next = "IDLE"
        # One flip-flop per state (Vivado and Yosys re-encode it so): the next-state
        # logic of a state then reads its own bit instead of a decode of five.
        fsm.state.attrs["fsm_encoding"] = "one_hot"

        m.d.comb += [bad.eq(pc_bad | decode_bad_late | misaligned | check_bad_late |
                            counters_bad),
                     wr.cmd.payload.addr.eq(wr_addr)]

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
        m.d.comb += [dp_reset.eq(aborting | restart), wr.flush.eq(aborting)] + \
            [r.flush.eq(aborting) for r in readers]
        ending = Cat(fsm.ongoing(name) for name in ("ABORT", "STATUS", "STATUS_WAIT", "DONE"))
        active_state = running & ~ending.any()
        with m.If(active_state & fault.any()):
            m.d.sync += [status.eq(fault), error_pc.eq(pc), error_op.eq(op)]
        st = csr.status
        where = REGMAP["error_at"]
        m.d.comb += [
            status_now.eq(status),
            error_at_now.eq((error_pc << where.field_named("PC").bit) |
                            (error_op << where.field_named("OPCODE").bit)),
            st.status.eq(status_now),
            st.error_at.eq(error_at_now),
            st.images_done.eq(images_done),
            st.cycles.eq(total["cycles"]),
            st.mac_cycles.eq(total["mac_cycles"]),
            st.skipped.eq(total["skipped"]),
            st.stall_cycles.eq(total["stall_cycles"]),
        ]
        return m
