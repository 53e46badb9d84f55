"""The ``sim`` device outside the simulator: what it says when it cannot simulate.

Runs against the RTL are in ``tests/hw/kernel/test_top.py``.
"""

import numpy as np
import pytest

from velcro.sw.errors import DeviceError
from velcro.sw.runtime import Accelerator


def test_unknown_simulator_is_a_device_error(monkeypatch):
    with pytest.raises(DeviceError, match="sim: simulator must be one of verilator, icarus, "
                                          "not 'modelsim'"):
        Accelerator.open("sim", simulator="modelsim")
    monkeypatch.setenv("VELCRO_SIM", "xsim")
    with pytest.raises(DeviceError, match="not 'xsim'"):
        Accelerator.open("sim")


def test_missing_simulator_is_a_one_line_device_error(tiny_package, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    device = Accelerator.open("sim", simulator="icarus")
    device.load(tiny_package)
    images = np.zeros((1, *tiny_package.input_shape), np.uint8)
    with pytest.raises(DeviceError, match=r"^sim: Icarus Verilog \(iverilog, vvp\) is not on "
                                          r"PATH") as info:
        device.run(images)
    assert "\n" not in str(info.value)


def test_memory_latency_comes_from_the_environment_or_the_argument(monkeypatch):
    from velcro.sim.backend import DEFAULT_LATENCY, LATENCY_ENV

    monkeypatch.delenv(LATENCY_ENV, raising=False)
    assert Accelerator.open("sim").latency == DEFAULT_LATENCY
    monkeypatch.setenv(LATENCY_ENV, "0")
    assert Accelerator.open("sim").latency == 0
    assert Accelerator.open("sim", latency=7).latency == 7
    for bad in ("-1", "fast"):
        monkeypatch.setenv(LATENCY_ENV, bad)
        with pytest.raises(DeviceError, match=rf"^sim: {LATENCY_ENV} must be a non-negative "
                                              rf"number of cycles, not '{bad}'$"):
            Accelerator.open("sim")
    monkeypatch.delenv(LATENCY_ENV)
    with pytest.raises(DeviceError, match="latency must be a non-negative number of cycles, "
                                          "not -3"):
        Accelerator.open("sim", latency=-3)
