"""The ``alveo`` backend without a card: every failure to open is a device error."""

import pytest

from velcro.sw.errors import DeviceError
from velcro.sw.runtime import Accelerator
from velcro.sw.runtime.backends import alveo


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
