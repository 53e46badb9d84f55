"""``Accelerator``: device specs and the checks a run makes before it reaches a device."""

import numpy as np
import pytest

from velcro.hw.kernel.config import SHIPPED
from velcro.sw.errors import DeviceError, VelcroError
from velcro.sw.runtime import Accelerator, parse_device
from velcro.sw.runtime.backends.golden import GoldenPlatform


def test_device_specs():
    assert parse_device("golden") == ("golden", 0)
    assert parse_device("alveo") == ("alveo", 0)
    assert parse_device("alveo:3") == ("alveo", 3)
    for bad in ("tpu", "sim:1", "alveo:x", "", "golden:0"):
        with pytest.raises(DeviceError, match="unknown device"):
            parse_device(bad)


def test_runs_check_their_images(tiny_package, golden_accelerator, images_for):
    package = tiny_package
    accelerator = golden_accelerator(package)
    with pytest.raises(VelcroError, match=r"uint8 \[N, 1, 6, 6\]"):
        accelerator.run(np.zeros((1, 1, 5, 5), np.uint8))
    with pytest.raises(DeviceError, match="no package loaded"):
        Accelerator(GoldenPlatform(SHIPPED)).run(images_for(package, 1))


# --- several compute units ------------------------------------------------------------------
def test_compute_units_split_a_batch_and_add_up_to_one_unit(footwear_package,
                                                            golden_accelerator):
    from velcro.hw.kernel.connectivity import bank_of
    from velcro.sw.data import make_task
    from velcro.sw.export.package import load

    package = load(footwear_package)
    images = make_task("footwear").split("validation").images[:7]
    one = golden_accelerator(package)
    want = one.run(images)
    device = Accelerator.open("golden", cus=3)
    device.load(package)
    np.testing.assert_array_equal(device.run(images), want)
    # Descriptor counters and totals add up over the units as one unit's over all images,
    # but for the fixed cycles of each run outside its descriptors.
    from velcro.hw.kernel.cost import RUN_FIXED

    assert device.counters() == one.counters()
    calls = sum(1 for stage in device.stages if stage.device)
    assert device.totals == {**one.totals, "cycles": one.totals["cycles"] + 2 * calls * RUN_FIXED}
    # array_split: 3, 2 and 2 images; each unit's share of the cycles, none idle.
    units = device.last_unit_cycles
    assert len(units) == 3 and sum(units) == device.last_totals["cycles"]
    assert units[0] > units[1] == units[2] > 0
    # Every unit holds its programs in its own banks, which its model alone reaches.
    for cu in range(3):
        program = device.buffers(0, cu)["program"]
        assert bank_of("m_axi_program", cu).contains(program.device_address, program.nbytes)
    # Fewer images than units: the units without one sit out.
    np.testing.assert_array_equal(device.run(images[:2]), want[:2])
    assert device.last_unit_cycles[2] == 0 < device.last_unit_cycles[1]
    device.close()


def test_a_compute_unit_that_fails_is_named_and_every_unit_is_finished(
        tiny_package, images_for):
    from velcro.hw.kernel.connectivity import instance
    from velcro.sw.runtime.backends.golden import GoldenPlatform as Golden

    platform = Golden(SHIPPED, 2)
    device = Accelerator(platform, SHIPPED, "golden", 2)
    device.load(tiny_package)
    finished = []
    for driver in device.drivers:
        finish = driver.finish

        def counted(pending, finish=finish, cu=driver.cu):
            finished.append(cu)
            return finish(pending)
        driver.finish = counted
    # The second unit's model stops at its first descriptor, as a faulting kernel would.
    def faulting(**arguments):
        raise DeviceError("AXI_READ")

    getattr(platform.overlay, instance(1)).start = faulting
    with pytest.raises(DeviceError, match="^compute unit 2 of 2: AXI_READ"):
        device.run(images_for(tiny_package, 4))
    assert finished == [0]  # the first unit's started run was waited for
    # Only the loaded programs (program and indices, per stage and unit) stay in device
    # memory: every run buffer was freed.
    stages = sum(1 for stage in device.stages if stage.device)
    assert len(platform.memory.regions) == 2 * stages * 2


@pytest.mark.parametrize("cus", [0, 17])
def test_compute_units_the_card_cannot_link_are_refused(cus):
    with pytest.raises(DeviceError, match="golden: compute units must be 1 to 16"):
        Accelerator.open("golden", cus=cus)
