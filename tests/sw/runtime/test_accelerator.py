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
