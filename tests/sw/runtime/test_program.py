"""Compiled programs: the memory images the kernel reads."""

import numpy as np
import pytest

from velcro.hw.kernel.config import SHIPPED
from velcro.hw.kernel.descriptor import Opcode
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


def flatten_package(dense_op: str, segment: int = 1):
    """conv3x3 1->16 on 4x4, flatten (256), then ``dense_op`` 256 -> 8 with ReLU
    (int8, or codebooks with ``segment``), then int8 logits 8 -> 3."""
    from velcro.sw.export.bits import pack_indices, pack_mask
    from velcro.sw.export.package import Layer, Package

    rng = np.random.default_rng(5)

    def ints(lo, hi, shape, dtype):
        return rng.integers(lo, hi, shape, endpoint=True).astype(dtype)

    def requant(n):
        return {"bias": ints(-2000, 2000, (n,), np.int32),
                "mult": ints(1 << 15, (1 << 16) - 1, (n,), np.uint16),
                "shift": ints(18, 22, (n,), np.uint8)}

    conv = Layer("conv", "conv3x3", (1, 4, 4), (16, 4, 4), 0.05, {"stride": 1, "skipped": 0},
                 {"weight": ints(-127, 127, (16, 1, 3, 3), np.int8), **requant(16),
                  "mask": pack_mask(np.zeros((16, 4, 4), bool)),
                  "mean": np.zeros((16, 4, 4), np.int8)})
    flat = Layer("flat", "flatten", (16, 4, 4), (256,), 0.05)
    if dense_op == "dense":
        hidden = Layer("hidden", "dense", (256,), (8,), 0.1, {"relu": True, "output": "int8"},
                       {"weight": ints(-127, 127, (8, 256), np.int8), **requant(8)})
    else:
        n_seg = 256 // segment
        hidden = Layer("hidden", "dense_codebook", (256,), (8,), 0.1,
                       {"relu": True, "output": "int8", "bits": 2, "segment": segment,
                        "shared": False, "weight_scale": 0.01},
                       {"codebooks": ints(-127, 127, (n_seg, 4, segment), np.int8),
                        "indices": pack_indices(rng.integers(0, 4, (8, n_seg)), 2),
                        **requant(8)})
    logits = Layer("logits", "dense", (8,), (3,), 0.001, {"relu": False, "output": "int32"},
                   {"weight": ints(-127, 127, (3, 8), np.int8),
                    "bias": ints(-1000, 1000, (3,), np.int32)})
    return Package(
        input_shape=(1, 4, 4), input_scale=2 / 255, layers=[conv, flat, hidden, logits],
        task={"name": "flat", "classes": [0, 1, 2], "class_names": ["a", "b", "c"]},
        velcro={"criterion": "variance", "thresholds": [0.0], "C": 0.0},
        source={"model": None, "weights": None, "data": None, "image_size": None,
                "parameters_sha256": "0" * 64})


@pytest.mark.parametrize("dense_op, segment, hwc", [
    ("dense", 1, 1), ("dense_codebook", 1, 1), ("dense_codebook", 2, 0)])
def test_a_flatten_feeding_one_segment_per_input_runs_channel_last(
        dense_op, segment, hwc, golden_accelerator, images_for):
    package = flatten_package(dense_op, segment)
    accelerator = golden_accelerator(package)
    images = images_for(package, 3)
    logits = accelerator.run(images)
    (flatten,) = [s for s in accelerator.programs[0].steps if s.opcode == Opcode.FLATTEN]
    assert flatten.fields["hwc"] == hwc
    # A word per beat (16 beats) against a byte per cycle (256).
    assert (flatten.cost.busy < 32) == bool(hwc)
    np.testing.assert_array_equal(logits, golden.run(package, images))


def test_conv_kernels_start_on_a_burst(tiny_package):
    """A conv layer's first burst brings whole kernels: its weight stream starts on a
    ``max_burst`` boundary of the program (whose buffers are page-aligned), and every
    stream still lies inside the program image."""
    program = compile_segment(list(partition(tiny_package, SHIPPED)[0].layers), SHIPPED)
    burst = SHIPPED.max_burst * SHIPPED.word_bytes
    convs = [step for step in program.steps if step.opcode == Opcode.CONV]
    assert convs
    for step in convs:
        assert step.fields["weights"]["offset"] % burst == 0
        for name in ("weights", "requant"):
            stream = step.fields[name]
            assert stream["offset"] % SHIPPED.word_bytes == 0
            end = stream["offset"] + stream["records"] * SHIPPED.record_bytes(name)
            assert end <= len(program.program)
