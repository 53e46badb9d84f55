"""The kernel's model: record decoding, the cost model's counters and the kernel's
error rules (through the driver on the ``golden`` device)."""

import numpy as np
import pytest

from velcro.hw.conv.format import MASK_LAYOUT, REQUANT_LAYOUT, pack_mask, pack_requant
from velcro.hw.kernel.config import SHIPPED
from velcro.hw.kernel.connectivity import bank_of
from velcro.hw.kernel.cost import END_FIXED, RUN_FIXED
from velcro.hw.kernel.descriptor import DESCRIPTOR_BYTES, Opcode
from velcro.sw.export.package import load
from velcro.sw.runtime import Accelerator, KernelError
from velcro.sw.runtime.backends.kernel_model import fields


def test_counters_follow_the_cost_model(footwear_package, golden_accelerator, images_for):
    package = load(footwear_package)
    accelerator = golden_accelerator(package)
    n = 5
    accelerator.run(images_for(package, n))
    program = accelerator.programs[0]
    counters = accelerator.counters()
    assert [c.name for c in counters] == [s.name for s in program.steps[:-1]]
    for step, measured in zip(program.steps, counters, strict=False):
        assert measured.busy == n * step.cost.busy
        assert measured.cycles == n * (step.cost.busy + step.cost.fixed)
    convs = [layer for layer in package.layers if layer.op == "conv3x3"]
    assert accelerator.totals["skipped"] == n * sum(layer.attrs["skipped"] for layer in convs)
    assert accelerator.totals["cycles"] == sum(c.cycles for c in counters) + n * END_FIXED \
        + RUN_FIXED
    skipped_macs = sum(c.skipped for c in accelerator.counts())
    assert skipped_macs == n * sum(9 * layer.in_shape[0] * layer.attrs["skipped"]
                                   for layer in convs)


def test_record_fields_decode_what_the_packers_encode(rng):
    mask = rng.random((3, 5, 4)) < 0.5
    mean = rng.integers(0, 128, mask.shape).astype(np.int8)
    beats = pack_mask(mask, mean)
    records = np.frombuffer(b"".join(b.to_bytes(16, "little") for b in beats), np.uint8)
    decoded = fields(records.reshape(len(beats), 16), MASK_LAYOUT)
    assert decoded["skip"].tolist() == [b & 0x1FF for b in beats]
    assert decoded["mean"].shape == (len(beats), 9)
    bias = rng.integers(-(1 << 31), 1 << 31, 6)
    mult = rng.integers(0, 1 << 16, 6)
    shift = rng.integers(0, 32, 6)
    raw = b"".join(b.to_bytes(8, "little") for b in pack_requant(bias, mult, shift))
    q = fields(np.frombuffer(raw, np.uint8).reshape(6, 8), REQUANT_LAYOUT)
    assert q["bias"].tolist() == bias.tolist() and q["mult"].tolist() == mult.tolist()
    assert q["shift"].tolist() == shift.tolist()


def test_stream_lengths_that_do_not_match_the_layer_are_bad_descriptors(tiny_package,
                                                                        golden_accelerator,
                                                                        images_for):
    package = tiny_package
    accelerator = golden_accelerator(package)
    steps = accelerator.programs[0].steps
    conv = [i for i, s in enumerate(steps) if s.opcode == Opcode.CONV][0]
    program = accelerator.buffers(0)["program"]
    # The weights' record count sits in the descriptor; one record more than the layer takes.
    from velcro.hw.kernel.descriptor import decode, encode

    raw = bytes(program[conv * DESCRIPTOR_BYTES:(conv + 1) * DESCRIPTOR_BYTES])
    fields_ = dict(steps[conv].fields)
    opcode, args = decode(raw)
    fields_["weights"] = {"offset": args.weights.offset, "records": args.weights.records + 1}
    fields_["requant"] = {"offset": args.requant.offset, "records": args.requant.records}
    fields_["mask"] = {"offset": args.mask.offset, "records": args.mask.records}
    program[conv * DESCRIPTOR_BYTES:(conv + 1) * DESCRIPTOR_BYTES] = np.frombuffer(
        encode(opcode, **fields_), np.uint8)
    program.sync_to_device()
    with pytest.raises(KernelError, match="BAD_DESCRIPTOR"):
        accelerator.run(images_for(package, 1))


def test_a_buffer_in_the_wrong_bank_fails_like_on_the_card(tiny_package, wrapped_platform,
                                                          images_for):
    class WrongBank(wrapped_platform):
        """The program in a bank its port does not reach, the rest where it belongs."""

        def allocate(self, shape, dtype, target):
            if target is getattr(self.overlay, bank_of("m_axi_program").name):
                target = self.overlay.HBM7
            return self.inner.allocate(shape, dtype, target)

    assert bank_of("m_axi_program").name != "HBM7"
    package = tiny_package
    accelerator = Accelerator(WrongBank(), SHIPPED)
    accelerator.load(package)
    with pytest.raises(KernelError, match="AXI_READ .* at descriptor 0"):
        accelerator.run(images_for(package, 1))


def test_a_counter_buffer_the_kernel_cannot_write_is_an_error(tiny_package, wrapped_platform,
                                                              images_for):
    """No status block can be written, so none is read: the run is still an error."""
    class WrongBank(wrapped_platform):
        def allocate(self, shape, dtype, target):
            return self.inner.allocate(shape, dtype, self.overlay.HBM7)

    package = tiny_package
    accelerator = Accelerator(WrongBank(), SHIPPED)
    accelerator.load(package)
    with pytest.raises(KernelError, match="without writing its status block"):
        accelerator.run(images_for(package, 1))
