# amaranth: UnusedElaboratable=no
"""The descriptor format (velcro.hw.kernel.descriptor): round trips and refusals."""

import pytest

from velcro.hw.kernel.descriptor import DESCRIPTOR_BYTES, Opcode, decode, encode


def test_descriptors_round_trip_and_reject_unknown_opcodes():
    raw = encode(Opcode.CONV, buf=1, relu=1, skip=1, stride=2, c_in=32, c_out=64, height=7,
                 width=7, weights={"offset": 4096, "records": 128},
                 requant={"offset": 64, "records": 64}, mask={"offset": 0, "records": 192})
    assert len(raw) == DESCRIPTOR_BYTES
    opcode, args = decode(raw)
    assert opcode == Opcode.CONV
    assert (args.buf, args.stride, args.c_in, args.c_out, args.weights.offset,
            args.mask.records) == (1, 2, 32, 64, 4096, 192)
    assert decode(encode(Opcode.END)) == (Opcode.END, None)
    assert decode(bytes(DESCRIPTOR_BYTES)) == (0, None)
    assert decode(bytes([14]) + bytes(DESCRIPTOR_BYTES - 1)) == (14, None)
    with pytest.raises(ValueError, match="END takes no arguments"):
        encode(Opcode.END, buf=1)
    with pytest.raises(ValueError, match="64 bytes"):
        decode(b"\x01")

