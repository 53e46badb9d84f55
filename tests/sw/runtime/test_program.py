"""Compiled programs: the memory images the kernel reads."""

import numpy as np
import pytest

from velcro.hw.kernel.config import SHIPPED
from velcro.sw import golden
from velcro.sw.runtime.partition import partition
from velcro.sw.runtime.program import compile_segment


def test_inputs_are_packed_in_the_conv_arrays_format(tiny_package, images_for):
    package = tiny_package
    program = compile_segment(list(partition(package, SHIPPED)[0].layers), SHIPPED)
    x = golden.quantize_input(images_for(package, 2))
    raw = program.pack_inputs(x)
    assert len(raw) == 2 * program.input_stride
    from velcro.hw.conv.format import pack_activations

    rb = SHIPPED.record_bytes("act")
    for i in range(2):
        beats = pack_activations(x[i], SHIPPED.conv.lanes)
        expected = b"".join(b.to_bytes(rb, "little") for b in beats)
        start = i * program.input_stride
        assert raw[start:start + len(expected)] == expected
    with pytest.raises(ValueError, match="int8"):
        program.pack_inputs(x.astype(np.int16))
