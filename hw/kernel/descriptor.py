"""The descriptor program: what one kernel call runs, as data the host writes to memory.

A program is a list of 64-byte descriptors at the start of the ``program`` buffer.
The kernel runs it once per image: from descriptor 0 to an ``END``, then again for
the next image, until ``images`` are done. Every descriptor is one
:data:`DESCRIPTOR` (little-endian, low bits first), an opcode and the arguments of
its op; stream arguments are a byte offset and a record count
(:mod:`velcro.hw.kernel.records`), per-image tensors an offset, a per-image stride and a
record count. Offsets and strides are multiples of the AXI word size.

``LOAD_MAP`` (``map``)
    Input tensor ``inputs + offset + image * stride`` (``records`` activation beats,
    the conv array's ``ifmap`` format) into conv buffer ``buf``. With ``ahead`` (for a
    program whose only read of ``inputs`` it is), the kernel requests the next image's
    tensor while the rest of this image runs, so that its load finds the data on chip.
``CONV`` (``conv``)
    A conv3x3 layer from buffer ``buf`` into the other buffer; ``weights``,
    ``requant`` and (when ``skip``) ``mask`` are streams in ``program``.
``POOL`` (``map``)
    2x2 max-pooling (stride 2, floor) of buffer ``buf`` (``channels x height x
    width``) into the other buffer.
``FLATTEN`` (``map``)
    Buffer ``buf`` flattened in C order into half ``dst`` of the activation buffer, or
    with ``hwc`` in channel-last order, a word per beat (``channels`` a multiple of the
    conv lanes, whose bytes fit an activation-buffer word).
``LOAD_VEC`` (``vec``)
    A vector from ``inputs`` (``records`` beats of the dense engine's ``x`` format)
    into half ``dst`` of the activation buffer.
``DENSE`` (``dense``)
    A dense layer on half ``src`` of the activation buffer (``x_records`` beats); the
    ``indices`` stream is in ``indices``, ``codebook`` and ``params`` in ``program``;
    the output goes to half ``dst``, or with ``to_memory`` to ``outputs`` (``out``).
    With ``int8``, ``indices`` holds the weights as records of the ``codebook``
    stream (:func:`dense_records`), read from ``indices`` into the engine's codebook
    input, and ``codebook`` is empty.
``STORE_MAP`` (``map``)
    Buffer ``buf`` to ``outputs + offset + image * stride``.
``END``
    The image is done.

Opcode 0 is not an op, so a zeroed or unwritten descriptor is a bad descriptor.
"""

from __future__ import annotations

import enum

from amaranth.lib import data

__all__ = ["DESCRIPTOR", "DESCRIPTOR_BYTES", "Opcode", "decode", "dense_records", "encode"]

DESCRIPTOR_BYTES = 64


class Opcode(enum.IntEnum):
    """Descriptor opcodes."""

    LOAD_MAP = 1
    CONV = 2
    POOL = 3
    FLATTEN = 4
    LOAD_VEC = 5
    DENSE = 6
    STORE_MAP = 7
    END = 8


#: A stream in a buffer: byte offset from the buffer's base, records.
STREAM = data.StructLayout({"offset": 32, "records": 32})

#: A per-image tensor: ``base + offset + image * stride``, records.
TENSOR_IO = data.StructLayout({"offset": 32, "stride": 32, "records": 32})

MAP_ARGS = data.StructLayout({
    "buf": 1, "dst": 1, "channels": 16, "height": 16, "width": 16, "io": TENSOR_IO,
    "hwc": 1, "ahead": 1,
})

CONV_ARGS = data.StructLayout({
    "buf": 1, "relu": 1, "skip": 1, "stride": 2,
    "c_in": 16, "c_out": 16, "height": 16, "width": 16,
    "weights": STREAM, "requant": STREAM, "mask": STREAM,
})

DENSE_ARGS = data.StructLayout({
    "src": 1, "dst": 1, "to_memory": 1, "relu": 1, "logits": 1, "int8": 1,
    "n_seg": 16, "s": 8, "index_bits": 8, "n_out": 16, "x_records": 32,
    "indices": STREAM, "codebook": STREAM, "params": STREAM, "out": TENSOR_IO,
})

VEC_ARGS = data.StructLayout({"dst": 1, "io": TENSOR_IO})

#: Which argument layout each opcode uses.
ARGS_OF = {Opcode.LOAD_MAP: "map", Opcode.CONV: "conv", Opcode.POOL: "map",
           Opcode.FLATTEN: "map", Opcode.LOAD_VEC: "vec", Opcode.DENSE: "dense",
           Opcode.STORE_MAP: "map", Opcode.END: None}

DESCRIPTOR = data.StructLayout({
    "opcode": 8,
    "args": data.UnionLayout({"map": MAP_ARGS, "conv": CONV_ARGS, "dense": DENSE_ARGS,
                              "vec": VEC_ARGS}),
})
assert DESCRIPTOR.size <= 8 * DESCRIPTOR_BYTES


def encode(opcode: Opcode, **fields) -> bytes:
    """The 64 bytes of one descriptor.

    ``fields`` are the arguments of the opcode's layout (nested dicts for streams),
    e.g. ``encode(Opcode.POOL, buf=0, channels=32, height=28, width=28)``.
    """
    opcode = Opcode(opcode)
    name = ARGS_OF[opcode]
    if name is None:
        if fields:
            raise ValueError(f"{opcode.name} takes no arguments, got {sorted(fields)}")
        init = {"opcode": opcode}
    else:
        init = {"opcode": opcode, "args": {name: fields}}
    bits = DESCRIPTOR.const(init).as_bits()
    return bits.to_bytes(DESCRIPTOR_BYTES, "little")


def decode(raw: bytes) -> tuple[int, data.Const | None]:
    """``(opcode, arguments)`` of a descriptor's bytes; the arguments of an unknown
    opcode or of ``END`` are ``None``."""
    if len(raw) != DESCRIPTOR_BYTES:
        raise ValueError(f"a descriptor is {DESCRIPTOR_BYTES} bytes, not {len(raw)}")
    value = DESCRIPTOR.from_bits(int.from_bytes(raw, "little") & ((1 << DESCRIPTOR.size) - 1))
    try:
        name = ARGS_OF[Opcode(value.opcode)]
    except ValueError:
        return value.opcode, None
    return value.opcode, None if name is None else getattr(value.args, name)


def dense_records(beats: dict[str, int], int8: bool) -> dict[str, int]:
    """Records of a ``DENSE`` descriptor's ``indices`` and ``codebook`` streams, from the
    engine's stream beats (:func:`velcro.hw.dense.cost.stream_beats`): an int8 layer's
    weights, the engine's ``codebook`` beats, are read from the ``indices`` buffer."""
    if int8:
        return {"indices": beats["codebook"], "codebook": 0}
    return {"indices": beats["indices"], "codebook": beats["codebook"]}
