"""The host driver on the ``golden`` device: registers, the status block, error reports
and the watchdog.

``tests/hw/kernel/test_top.py`` runs the same driver against the Verilog.
"""

import numpy as np
import pytest

from velcro.hw.kernel.config import SHIPPED, STATUS_BLOCK, STATUS_MAGIC
from velcro.hw.kernel.descriptor import DESCRIPTOR_BYTES
from velcro.sw import golden
from velcro.sw.runtime import Accelerator, DeviceTimeout, KernelError
from velcro.sw.runtime.backends.golden import GoldenPlatform
from velcro.sw.runtime.driver import KernelDriver


def test_unknown_opcode_is_a_named_error_and_the_next_run_succeeds(tiny_package,
                                                                   golden_accelerator,
                                                                   images_for):
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


def test_a_kernel_that_never_finishes_times_out(tiny_package, wrapped_platform, images_for):
    class Hung(wrapped_platform):
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


def test_driver_reads_64_bit_registers_low_word_first():
    platform = GoldenPlatform(SHIPPED)
    driver = KernelDriver(platform, SHIPPED)
    from velcro.hw.kernel.regmap import REGMAP

    low, high = REGMAP["cycles"].words
    platform.overlay.velcro_kernel_1.write(low, 0x89ABCDEF)
    platform.overlay.velcro_kernel_1.write(high, 0x1234)
    assert driver.read("cycles") == 0x1234_89ABCDEF


def _without_register_reads(wrapped_platform):
    """A golden platform whose kernel instance refuses every register read once started,
    like ``pyxrt``'s."""

    class NoReads(wrapped_platform):
        def __init__(self):
            super().__init__()
            ip = self.overlay.velcro_kernel_1
            start = ip.start
            self.started = 0

            def refuse(offset):
                raise AssertionError(f"register {offset:#x} read after start")

            def start_then_refuse(**arguments):
                self.started += 1
                ip.read = refuse
                return start(**arguments)

            ip.start = start_then_refuse

    return NoReads()


def test_a_run_reads_no_register_after_start(tiny_package, wrapped_platform,
                                             golden_accelerator, images_for):
    """Outputs, counters and totals all come from device memory: the same as a platform
    with register access gives."""
    package = tiny_package
    images = images_for(package, 3)
    platform = _without_register_reads(wrapped_platform)
    accelerator = Accelerator(platform, SHIPPED)
    accelerator.load(package)
    reference = golden_accelerator(package)
    np.testing.assert_array_equal(accelerator.run(images), reference.run(images))
    assert platform.started >= 1
    assert accelerator.last_totals == reference.last_totals
    assert accelerator.last_totals["images_done"] == 3
    assert accelerator.last_steps == reference.last_steps


def test_an_error_is_reported_from_the_status_block(tiny_package, wrapped_platform,
                                                    images_for):
    package = tiny_package
    platform = _without_register_reads(wrapped_platform)
    accelerator = Accelerator(platform, SHIPPED)
    accelerator.load(package)
    program = accelerator.buffers(0)["program"]
    program[2 * DESCRIPTOR_BYTES] = 14
    program.sync_to_device()
    with pytest.raises(KernelError, match=r"BAD_DESCRIPTOR \(status 0x4\) at descriptor 2 "
                       r"\(unknown opcode 14, pool\) after 0 image\(s\)"):
        accelerator.run(images_for(package, 2))


def test_the_status_block_matches_the_status_registers(tiny_package, golden_accelerator,
                                                      images_for):
    """The golden kernel's block is its registers' figures (it has no write to wait for),
    at the start of the counter buffer, and the counter records follow it."""
    accelerator = golden_accelerator(tiny_package)
    platform = accelerator.platform
    seen = {}
    inner_run = platform.model.run

    def run_and_keep():
        inner_run()
        counters = platform.model.arg("counters")
        seen["raw"] = platform.memory.view(counters, SHIPPED.status_bytes).tobytes()

    platform.model.run = run_and_keep
    accelerator.run(images_for(tiny_package, 2))
    block = STATUS_BLOCK.from_bits(int.from_bytes(seen["raw"], "little"))
    assert block.magic == STATUS_MAGIC
    driver = KernelDriver(platform, SHIPPED)
    for name in ("status", "error_at", "images_done", "cycles", "mac_cycles", "skipped",
                 "stall_cycles"):
        assert getattr(block, name) == driver.read(name), name
    assert block.images_done == 2
