"""The host driver on the ``golden`` device: registers, error reports and the watchdog.

``tests/hw/kernel/test_top.py`` runs the same driver against the Verilog.
"""

import numpy as np
import pytest

from velcro.hw.kernel.config import SHIPPED
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
