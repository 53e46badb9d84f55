"""Records in device memory, and the adapters between AXI words and engine streams.

Every engine stream is stored in device memory as a sequence of *records*: one
stream beat each, its payload in the low bits of a little-endian record of
:func:`record_bytes` bytes (the rest zero). A record is either a power-of-two
fraction of a data word (several records per word, the first in the low bytes) or a
whole number of words, so the hardware never shifts records across word
boundaries; the host packs and unpacks buffers with the same rule.

:class:`Unpacker` turns the words of a DMA channel into ``count`` records, and
:class:`Packer` turns ``count`` records into words for the write DMA (the last word
zero-padded). Both take exactly the words that hold the ``count`` records and
nothing more, so consecutive transfers through one channel never mix.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Shape, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

__all__ = ["Packer", "Unpacker", "record_bytes", "record_words", "words_for"]

COUNT_BITS = 32


def record_bytes(payload_bits: int, word_bytes: int) -> int:
    """Bytes of the record holding a ``payload_bits``-bit beat in ``word_bytes``-byte words."""
    size = -(-payload_bits // 8)
    if size <= word_bytes:
        return 1 << ceil_log2(size)
    return -(-size // word_bytes) * word_bytes


def record_words(payload_bits: int, word_bytes: int) -> tuple[int, int]:
    """``(records per word, words per record)``: one of them is 1."""
    size = record_bytes(payload_bits, word_bytes)
    if size <= word_bytes:
        return word_bytes // size, 1
    return 1, size // word_bytes


def words_for(records: int, payload_bits: int, word_bytes: int) -> int:
    """Words holding ``records`` records."""
    per_word, per_record = record_words(payload_bits, word_bytes)
    return -(-records // per_word) * per_record


def _bits(shape) -> int:
    return Shape.cast(shape).width


class _RecordAdapter(wiring.Component):
    """What :class:`Unpacker` and :class:`Packer` share: the record geometry and the ports.

    ``per_word`` records fill one word, or one record takes ``per_record`` words
    (:func:`record_words`). A packer takes records in and gives words out; an
    unpacker the other way round.
    """

    def __init__(self, word_bits: int, payload, *, packing: bool):
        self.word_bits = word_bits
        self.payload_bits = _bits(payload)
        self.per_word, self.per_record = record_words(self.payload_bits, word_bits // 8)
        words, records = stream.Signature(word_bits), stream.Signature(payload)
        ports = {"start": In(1), "count": In(COUNT_BITS)}
        if packing:
            ports |= {"records": In(records), "words": Out(words)}
        else:
            ports |= {"words": In(words), "records": Out(records)}
        super().__init__({**ports, "busy": Out(1)})

    def _countdown(self, m: Module, take):
        """The records left of the transfer, as flags registered beside the count:
        ``(pending, last_record)``, some left and exactly one left. The ready and valid
        of both streams read them, and so do not wait on a 32-bit comparison."""
        remaining = Signal(COUNT_BITS)
        pending, last_record = Signal(), Signal()
        with m.If(self.start):
            m.d.sync += [remaining.eq(self.count), pending.eq(self.count != 0),
                         last_record.eq(self.count == 1)]
        with m.Elif(take):
            m.d.sync += [remaining.eq(remaining - 1), pending.eq(~last_record),
                         last_record.eq(remaining == 2)]
        return pending, last_record


class Unpacker(_RecordAdapter):
    """Words in, ``count`` records out.

    Parameters
    ----------
    word_bits : int
        Data width of the word stream.
    payload : shape or layout
        Payload of a record (its low bits).

    Attributes
    ----------
    start : In(1)
        Begin a transfer of ``count`` records (dropping anything left of the last one).
    count : In(32)
    words : In(stream of word_bits)
    records : Out(stream of payload)
    busy : Out(1)
        Records of the transfer are still to be delivered.
    """

    def __init__(self, word_bits: int, payload):
        super().__init__(word_bits, payload, packing=False)

    def elaborate(self, platform):
        m = Module()
        take = self.records.valid & self.records.ready
        pending, last_record = self._countdown(m, take)
        m.d.comb += self.busy.eq(pending)
        word_in = self.words.valid & self.words.ready

        if self.per_record == 1:
            # Several records per word: hold a word, hand out its records in turn. The
            # record offered is a register of its own, loaded with the next record as
            # one is taken (with the first as a word arrives), so the engine behind
            # reads a flip-flop, not a mux of the word's records.
            size = self.word_bits // self.per_word
            word = Signal(self.word_bits)
            current = Signal(self.payload_bits)
            have = Signal()
            index = Signal(range(self.per_word))
            last_of_word = (index == self.per_word - 1) | last_record
            slices = Array(word[size * k:size * k + self.payload_bits]
                           for k in range(self.per_word))
            m.d.comb += [
                self.records.valid.eq(have & pending),
                self.records.payload.eq(current),
                self.words.ready.eq(pending & (~have | (take & last_of_word)) &
                                    ~(take & last_record)),
            ]
            with m.If(take):
                m.d.sync += [index.eq(Mux(last_of_word, 0, index + 1)),
                             current.eq(slices[(index + 1)[:len(index)]])]
                with m.If(last_of_word):
                    m.d.sync += have.eq(0)
            with m.If(word_in):
                m.d.sync += [word.eq(self.words.payload), have.eq(1),
                             current.eq(self.words.payload[:self.payload_bits])]
            with m.If(self.start):
                m.d.sync += [have.eq(0), index.eq(0)]
        else:
            # One record from several words: collect them, low word first.
            parts = self.per_record
            collected = Signal(range(parts + 1))
            record = Signal(parts * self.word_bits)
            full = collected == parts
            m.d.comb += [
                self.records.valid.eq(full & pending),
                self.records.payload.eq(record[:self.payload_bits]),
                self.words.ready.eq(pending & (~full | take) &
                                    ~(take & last_record)),
            ]
            with m.If(word_in):
                m.d.sync += record.eq(Cat(record[self.word_bits:], self.words.payload))
            with m.If(take):
                m.d.sync += collected.eq(Mux(word_in, 1, 0))
            with m.Elif(word_in):
                m.d.sync += collected.eq(collected + 1)
            with m.If(self.start):
                m.d.sync += collected.eq(0)
        return m


class Packer(_RecordAdapter):
    """``count`` records in, words out (the last word zero-padded).

    Parameters
    ----------
    word_bits : int
    payload : shape or layout

    Attributes
    ----------
    start : In(1)
    count : In(32)
    records : In(stream of payload)
    words : Out(stream of word_bits)
    busy : Out(1)
        Records of the transfer are still expected or words still to be sent.
    """

    def __init__(self, word_bits: int, payload):
        super().__init__(word_bits, payload, packing=True)

    def elaborate(self, platform):
        m = Module()
        take = self.records.valid & self.records.ready
        sent = self.words.valid & self.words.ready
        pending, last_record = self._countdown(m, take)

        if self.per_record == 1:
            size = self.word_bits // self.per_word
            word = Signal(self.word_bits)
            full = Signal()
            index = Signal(range(self.per_word))
            closing = (index == self.per_word - 1) | last_record
            m.d.comb += [
                self.records.ready.eq(pending & (~full | sent)),
                self.words.valid.eq(full), self.words.payload.eq(word),
                self.busy.eq(pending | full),
            ]
            with m.If(sent):
                m.d.sync += full.eq(0)
            with m.If(take):
                record = Value.cast(self.records.payload)
                # Records of a word are written at their own position; a new word
                # starts from zero so that padding records and bytes stay zero.
                lanes = [Mux(index == k, record,
                             Mux(index == 0, 0, word[size * k:size * (k + 1)]))
                         for k in range(self.per_word)]
                m.d.sync += [word.eq(Cat(*lanes)), index.eq(Mux(closing, 0, index + 1))]
                with m.If(closing):
                    m.d.sync += full.eq(1)
            with m.If(self.start):
                m.d.sync += [index.eq(0), full.eq(0)]
        else:
            parts = self.per_record
            record = Signal(parts * self.word_bits)
            left = Signal(range(parts + 1))
            m.d.comb += [
                self.records.ready.eq(pending & ((left == 0) | ((left == 1) & sent))),
                self.words.valid.eq(left != 0),
                self.words.payload.eq(record[:self.word_bits]),
                self.busy.eq(pending | (left != 0)),
            ]
            with m.If(take):
                m.d.sync += [record.eq(self.records.payload), left.eq(parts)]
            with m.Elif(sent):
                m.d.sync += [record.eq(record >> self.word_bits), left.eq(left - 1)]
            with m.If(self.start):
                m.d.sync += left.eq(0)
        return m

