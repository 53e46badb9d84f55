"""The host runtime with the ``golden`` device: programs, memory layout, driver, partitioning.

The golden device is a model of the kernel that reads the very memory images and
descriptors the card would, so these tests check the compiler, the layout, the
driver and its error handling without RTL; ``tests/hw/test_kernel_sim.py`` runs the
same driver against the Verilog.
"""

import numpy as np
import pytest

from velcro.hw.conv_format import MASK_LAYOUT, REQUANT_LAYOUT, pack_mask, pack_requant
from velcro.hw.conv_params import ConvArrayConfig
from velcro.hw.dense_config import DenseConfig
from velcro.hw.descriptor import DESCRIPTOR_BYTES, Opcode
from velcro.hw.kernel_config import SHIPPED, KernelConfig
from velcro.hw.kernel_cost import END_FIXED, RUN_FIXED
from velcro.sw import golden
from velcro.sw.errors import DeviceError, VelcroError
from velcro.sw.package import load
from velcro.sw.runtime import Accelerator, DeviceTimeout, KernelError, alveo, parse_device
from velcro.sw.runtime.driver import KernelDriver, Platform
from velcro.sw.runtime.model import GoldenPlatform, fields
from velcro.sw.runtime.partition import partition
from velcro.sw.runtime.program import compile_segment

#: A kernel too small for part of the tiny package: the flatten and the 18-input
#: dense layer run on the host, between two device stages.
SPLIT = KernelConfig(ConvArrayConfig(lanes=2, max_height=8, max_width=8, max_channels=4),
                     DenseConfig(width=64, max_k=256, max_s=2, macs=8, max_n_in=16,
                                 max_n_out=8), data_width=256, max_program=8)


def images_for(package, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *package.input_shape), dtype=np.uint8)


def golden_accelerator(package, config=SHIPPED):
    accelerator = Accelerator(GoldenPlatform(config), config, "golden")
    accelerator.load(package)
    return accelerator


@pytest.mark.parametrize("config", [SHIPPED, SPLIT], ids=["shipped", "split"])
def test_golden_device_is_bit_exact_with_the_golden_model(config, tiny_package):
    package = tiny_package
    accelerator = golden_accelerator(package, config)
    images = images_for(package, 7)
    np.testing.assert_array_equal(accelerator.run(images), golden.run(package, images))
    np.testing.assert_array_equal(accelerator.run(images[:2]), golden.run(package, images[:2]))


def test_split_config_partitions_into_device_and_host_stages(tiny_package):
    package = tiny_package
    stages = partition(package, SPLIT)
    assert [(s.device, s.names) for s in stages] == [
        (True, ["conv", "pool"]), (False, ["flat"]), (False, ["hidden"]),
        (True, ["books", "logits"])]
    assert [(s.device, s.names) for s in partition(package, SHIPPED)] == [
        (True, ["conv", "pool", "flat", "hidden", "books", "logits"])]
    programs = [compile_segment(list(s.layers), SPLIT) for s in stages if s.device]
    assert [step.opcode for step in programs[0].steps] == [
        Opcode.LOAD_MAP, Opcode.CONV, Opcode.POOL, Opcode.STORE_MAP, Opcode.END]
    assert [step.opcode for step in programs[1].steps] == [
        Opcode.LOAD_VEC, Opcode.DENSE, Opcode.DENSE, Opcode.END]


def test_long_networks_split_at_max_program(tiny_package):
    package = tiny_package
    tight = KernelConfig(SHIPPED.conv, SHIPPED.dense, max_program=5)
    stages = partition(package, tight)
    assert all(len(s.layers) <= 2 for s in stages if s.device)
    # The flatten cannot start a stage: it runs on the host.
    assert (False, ["flat"]) in [(s.device, s.names) for s in stages]
    accelerator = golden_accelerator(package, tight)
    images = images_for(package, 3)
    np.testing.assert_array_equal(accelerator.run(images), golden.run(package, images))


def test_counters_follow_the_cost_model(footwear_package):
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


def test_inputs_are_packed_in_the_conv_arrays_format(tiny_package):
    package = tiny_package
    program = compile_segment(list(partition(package, SHIPPED)[0].layers), SHIPPED)
    x = golden.quantize_input(images_for(package, 2))
    raw = program.pack_inputs(x)
    assert len(raw) == 2 * program.input_stride
    from velcro.hw.conv_format import pack_activations

    rb = SHIPPED.record_bytes("act")
    for i in range(2):
        beats = pack_activations(x[i], SHIPPED.conv.lanes)
        expected = b"".join(b.to_bytes(rb, "little") for b in beats)
        start = i * program.input_stride
        assert raw[start:start + len(expected)] == expected
    with pytest.raises(ValueError, match="int8"):
        program.pack_inputs(x.astype(np.int16))


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


# --- the driver's error paths ---------------------------------------------------------------

def test_unknown_opcode_is_a_named_error_and_the_next_run_succeeds(tiny_package):
    package = tiny_package
    accelerator = golden_accelerator(package)
    images = images_for(package, 2)
    program = accelerator.buffers(0)["program"]
    program[2 * DESCRIPTOR_BYTES] = 14
    program.sync_to_device()
    with pytest.raises(KernelError, match=r"BAD_DESCRIPTOR .* at descriptor 2 \(unknown opcode "
                       r"14, pool\)"):
        accelerator.run(images)
    accelerator.load(package)
    np.testing.assert_array_equal(accelerator.run(images), golden.run(package, images))


def test_stream_lengths_that_do_not_match_the_layer_are_bad_descriptors(tiny_package):
    package = tiny_package
    accelerator = golden_accelerator(package)
    steps = accelerator.programs[0].steps
    conv = [i for i, s in enumerate(steps) if s.opcode == Opcode.CONV][0]
    program = accelerator.buffers(0)["program"]
    # The weights' record count sits in the descriptor; one record more than the layer takes.
    from velcro.hw.descriptor import decode, encode

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


class _Wrapped(Platform):
    """A golden platform with one behaviour changed."""

    def __init__(self, config=SHIPPED):
        self.inner = GoldenPlatform(config)
        self.overlay = self.inner.overlay

    def allocate(self, shape, dtype, target):
        return self.inner.allocate(shape, dtype, target)

    def clock(self):
        return self.inner.clock()

    def sleep(self, seconds):
        self.inner.sleep(seconds)


def test_a_buffer_in_the_wrong_bank_fails_like_on_the_card(tiny_package):
    class WrongBank(_Wrapped):
        def allocate(self, shape, dtype, target):
            return self.inner.allocate(shape, dtype, self.overlay.HBM7)

    package = tiny_package
    accelerator = Accelerator(WrongBank(), SHIPPED)
    accelerator.load(package)
    with pytest.raises(KernelError, match="AXI_READ .* at descriptor 0"):
        accelerator.run(images_for(package, 1))


def test_a_missing_sync_fails_like_on_the_card(tiny_package):
    class NoSync(_Wrapped):
        def allocate(self, shape, dtype, target):
            buffer = self.inner.allocate(shape, dtype, target)
            buffer.sync_to_device = lambda: None
            return buffer

    package = tiny_package
    accelerator = Accelerator(NoSync(), SHIPPED)
    accelerator.load(package)
    # The kernel finds zeros where the program should be: opcode 0.
    with pytest.raises(KernelError, match=r"BAD_DESCRIPTOR .* descriptor 0 \(unknown opcode 0"):
        accelerator.run(images_for(package, 1))


def test_a_kernel_that_never_finishes_times_out(tiny_package):
    class Hung(_Wrapped):
        now = 0.0
        min_timeout = 0.5

        def __init__(self):
            super().__init__()
            ip = self.overlay.velcro_kernel_1

            class Never:
                done = False

            ip.start = lambda **arguments: Never()

        def clock(self):
            return self.now

        def sleep(self, seconds):
            self.now += seconds

    platform = Hung()
    package = tiny_package
    accelerator = Accelerator(platform, SHIPPED)
    accelerator.load(package)
    with pytest.raises(DeviceTimeout, match=r"did not finish 3 image\(s\) within 0.5"):
        accelerator.run(images_for(package, 3))
    assert 0.5 < platform.now < 0.6


def test_device_specs():
    assert parse_device("golden") == ("golden", 0)
    assert parse_device("alveo") == ("alveo", 0)
    assert parse_device("alveo:3") == ("alveo", 3)
    for bad in ("tpu", "sim:1", "alveo:x", "", "golden:0"):
        with pytest.raises(DeviceError, match="unknown device"):
            parse_device(bad)


def test_alveo_without_bitstream_or_bindings_is_a_device_error(tmp_path, monkeypatch):
    with pytest.raises(DeviceError, match="alveo:1: no bitstream at"):
        alveo.open_platform(1, xclbin=tmp_path / "none.xclbin")
    xclbin = tmp_path / "velcro.xclbin"
    xclbin.write_bytes(b"xclbin2\0")
    monkeypatch.setattr(alveo, "_available", lambda module: False)
    with pytest.raises(DeviceError, match="needs XRT's Python bindings .* or PYNQ 3.0.1"):
        Accelerator.open("alveo:0", xclbin=xclbin)


def test_alveo_backend_failures_are_device_errors(tmp_path, monkeypatch):
    xclbin = tmp_path / "velcro.xclbin"
    xclbin.write_bytes(b"xclbin2\0")
    monkeypatch.setattr(alveo, "_available", lambda module: module == "pynq")

    def broken(index, path):
        raise OSError("no card")

    monkeypatch.setattr(alveo, "PynqPlatform", broken)
    with pytest.raises(DeviceError, match="alveo:0: PYNQ 3.0.1 failed: OSError: no card"):
        alveo.open_platform(0, xclbin=xclbin)


def test_runs_check_their_images(tiny_package):
    package = tiny_package
    accelerator = golden_accelerator(package)
    with pytest.raises(VelcroError, match=r"uint8 \[N, 1, 6, 6\]"):
        accelerator.run(np.zeros((1, 1, 5, 5), np.uint8))
    with pytest.raises(DeviceError, match="no package loaded"):
        Accelerator(GoldenPlatform(SHIPPED)).run(images_for(package, 1))


def test_driver_reads_64_bit_registers_low_word_first():
    platform = GoldenPlatform(SHIPPED)
    driver = KernelDriver(platform, SHIPPED)
    from velcro.hw.regmap import REGMAP

    low, high = REGMAP["cycles"].words
    platform.overlay.velcro_kernel_1.write(low, 0x89ABCDEF)
    platform.overlay.velcro_kernel_1.write(high, 0x1234)
    assert driver.read("cycles") == 0x1234_89ABCDEF
