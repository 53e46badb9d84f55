"""Cuts the packed index stream of the dense engine into groups of one segment's indices.

The index stream is the byte string of ``pack_indices``: segment-major (all rows of
segment 0, then segment 1, ...), little-endian bit packing, each segment's run padded
to a byte, cut into ``width``-bit beats (byte 0 in bits 0..7). Runs therefore start
anywhere in a beat and an index may straddle two beats.

The unpacker holds a window of two beats and a bit offset into it. Each cycle it
takes the next *group*, ``lanes`` indices of one run (fewer at the end of the run),
from the offset, and advances the offset past them (and past the run's padding after
its last group). A beat is dropped from the window once the offset passes it, and a
new one may arrive in the same cycle. Because a group never needs more than
``width`` bits (``lanes`` is sized for the widest index, and a group starts on a byte
within its run), the window always holds a whole group once two beats are in, so a
stream that offers a beat every cycle sustains one group per cycle.

Groups carry their row-group number, the table bank of their segment and flags for
the first segment, the last group of a segment and the last group of the layer, so
the lookup stage needs no counters of its own.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import DenseConfig


def unpacker_settings(config: DenseConfig) -> data.StructLayout:
    """What the unpacker needs to know about a layer (constant while it runs)."""
    return data.StructLayout({
        "index_bits": range(config.index_bits + 1),
        "n_seg": range(config.max_n_in + 1),
        "groups": range(config.max_groups + 1),
        "full_shift": range(config.width + 1),
        "last_shift": range(config.width + 1),
        "beats": range(config.max_index_beats + 1),
    })


def group_layout(config: DenseConfig) -> data.StructLayout:
    """One group of indices: ``index[l]`` is the index of output row ``row * lanes + l``."""
    return data.StructLayout({
        "index": data.ArrayLayout(config.index_bits, config.lanes),
        "row": range(config.max_groups),
        "bank": 1,
        "first": 1,     # segment 0: the accumulators start from zero
        "last": 1,      # last group of its segment: its table may be released
        "final": 1,     # last group of the layer
    })


class DenseIndexUnpacker(wiring.Component):
    """Packed index beats in, groups of ``lanes`` indices of one segment out.

    Parameters
    ----------
    config : DenseConfig

    Members
    -------
    start : In(1)
        Pulse: ``settings`` hold a new layer; forget any previous one.
    settings : In(unpacker_settings(config))
        Index bits, segments, groups per segment, the bits a full and a last group
        advance the offset by, and the beats of the layer's index stream.
    indices : In(stream.Signature(width))
        Packed index beats; exactly ``settings.beats`` are taken per layer.
    groups : Out(stream.Signature(group_layout(config)))
        Registered groups.
    """

    def __init__(self, config: DenseConfig):
        self.config = config
        super().__init__({
            "start": In(1),
            "settings": In(unpacker_settings(config)),
            "indices": In(stream.Signature(config.width)),
            "groups": Out(stream.Signature(group_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, st = self.config, self.settings
        width, lanes = cfg.width, cfg.lanes
        log2_width = width.bit_length() - 1

        active = Signal()
        cur, nxt = Signal(width), Signal(width)
        held = Signal(range(3))                 # beats in the window
        offset = Signal(log2_width)
        beats_left = Signal.like(st.beats)
        segs_left = Signal.like(st.n_seg)
        row = Signal.like(self.groups.payload.row)
        bank, first = Signal(), Signal(init=1)

        # Whether ``row`` is the last group, and the bits its indices take, registered
        # beside ``row`` so that no comparison of it feeds the window's arithmetic.
        last = Signal()
        need = Signal.like(st.full_shift)
        available = active & (held * width >= offset + need)
        take = available & (~self.groups.valid | self.groups.ready)
        moved = Signal(log2_width + 1)
        m.d.comb += moved.eq(offset + Mux(take, need, 0))
        drop = moved[log2_width]                # the offset passed the first beat

        m.d.comb += self.indices.ready.eq(active & (beats_left != 0) & ((held != 2) | drop))
        accept = self.indices.valid & self.indices.ready

        # Lane l reads bits [l*b, (l+1)*b) of the window above the offset. The index
        # width b is a run-time value: bit t of lane l's index is bit l*b + t, picked
        # among the widths by b - 1 (a register set at ``start``) as one bit select.
        aligned = Signal(width)
        m.d.comb += aligned.eq(Cat(cur, nxt) >> offset)
        bits_less = Signal(range(cfg.index_bits))
        payload = self.groups.payload
        with m.If(take):
            for lane in range(lanes):
                index = payload.index[lane]
                for t in range(cfg.index_bits):
                    choices = Cat(aligned[lane * bits + t] if t < bits and
                                  lane * bits + t < width else 0
                                  for bits in range(1, cfg.index_bits + 1))
                    m.d.sync += index[t].eq(choices.bit_select(bits_less, 1))
            m.d.sync += [
                payload.row.eq(row),
                payload.bank.eq(bank),
                payload.first.eq(first),
                payload.last.eq(last),
                payload.final.eq(last & (segs_left == 1)),
            ]
        with m.If(take):
            m.d.sync += self.groups.valid.eq(1)
        with m.Elif(self.groups.ready):
            m.d.sync += self.groups.valid.eq(0)

        ends = Mux(last, st.groups == 1, row + 2 == st.groups)
        with m.If(take):
            m.d.sync += [row.eq(Mux(last, 0, row + 1)), last.eq(ends),
                         need.eq(Mux(ends, st.last_shift, st.full_shift))]
            with m.If(last):
                m.d.sync += [bank.eq(~bank), first.eq(0), segs_left.eq(segs_left - 1)]
                with m.If(segs_left == 1):
                    m.d.sync += active.eq(0)

        m.d.sync += offset.eq(moved[:log2_width])
        with m.If(drop):
            m.d.sync += cur.eq(nxt)
            with m.If(accept):
                with m.If(held == 2):
                    m.d.sync += nxt.eq(self.indices.payload)
                with m.Else():
                    m.d.sync += cur.eq(self.indices.payload)
            with m.Else():
                m.d.sync += held.eq(held - 1)
        with m.Elif(accept):
            with m.If(held == 0):
                m.d.sync += cur.eq(self.indices.payload)
            with m.Else():
                m.d.sync += nxt.eq(self.indices.payload)
            m.d.sync += held.eq(held + 1)
        with m.If(accept):
            m.d.sync += beats_left.eq(beats_left - 1)

        with m.If(self.start):
            m.d.sync += [
                active.eq(1), held.eq(0), offset.eq(0), row.eq(0), bank.eq(0), first.eq(1),
                last.eq(st.groups == 1),
                need.eq(Mux(st.groups == 1, st.last_shift, st.full_shift)),
                beats_left.eq(st.beats), segs_left.eq(st.n_seg), self.groups.valid.eq(0),
                bits_less.eq(st.index_bits - 1),
            ]
        return m
