"""The ``alveo`` backend: the driver on a U280 through XRT's ``pyxrt`` or PYNQ 3.0.1.

PYNQ 3.0.1 is the last PYNQ release that drives Alveo cards, and it binds XRT's
legacy ``xcl*`` C API, which XRT 2.16 and later no longer export; current XRT ships
its own Python bindings, ``pyxrt``. :func:`open_platform` takes ``pyxrt`` when it is
importable and PYNQ otherwise, and both present the PYNQ surface the driver uses
(:mod:`velcro.sw.runtime.driver`). Both adapters are thin: everything below them
(programs, layouts, registers, buffers, the watchdog) is the driver's and is tested
against the RTL and the golden model.

Without either package, without a card, or without the bitstream, opening fails
with a :class:`~velcro.sw.errors.DeviceError` that says which.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np

from velcro.hw.kernel.connectivity import BANKS, CONNECTIVITY, INSTANCE, KERNEL_NAME
from velcro.hw.kernel.regmap import REGMAP
from velcro.sw.errors import DeviceError

from ..driver import Platform

__all__ = ["DEFAULT_XCLBIN", "open_platform"]

#: Where the bitstream flow leaves the bitstream; ``$VELCRO_XCLBIN`` overrides.
DEFAULT_XCLBIN = Path("bitstreams/build/velcro_u280.xclbin")


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def open_platform(index: int = 0, *, xclbin: Path | str | None = None) -> Platform:
    """The platform of card ``index`` with ``xclbin`` (default :data:`DEFAULT_XCLBIN`)."""
    path = Path(xclbin or os.environ.get("VELCRO_XCLBIN", DEFAULT_XCLBIN))
    where = f"alveo:{index}"
    if not path.is_file():
        raise DeviceError(f"{where}: no bitstream at {path} (name it with --xclbin or "
                          "$VELCRO_XCLBIN)")
    if _available("pyxrt"):
        backend, name = XrtPlatform, "pyxrt"
    elif _available("pynq"):
        backend, name = PynqPlatform, "PYNQ 3.0.1"
    else:
        raise DeviceError(f"{where} needs XRT's Python bindings (pyxrt) or PYNQ 3.0.1 "
                          "(pip install 'velcro[alveo]'); neither is installed")
    try:
        return backend(index, path)
    except DeviceError:
        raise
    except Exception as e:
        raise DeviceError(f"{where}: {name} failed: {type(e).__name__}: {e}") from None


class _Handle:
    def __init__(self, poll):
        self._poll = poll

    @property
    def done(self) -> bool:
        return self._poll()


class PynqPlatform(Platform):
    """Card ``index`` through PYNQ 3.0.1 (``Overlay``, ``allocate``, ERT-scheduled starts)."""

    def __init__(self, index: int, path: Path):
        import pynq

        devices = pynq.Device.devices
        if index >= len(devices):
            raise DeviceError(f"alveo:{index}: PYNQ finds {len(devices)} Alveo card(s)")
        self.device = devices[index]
        self._pynq = pynq
        loaded = pynq.Overlay(str(path), device=self.device)
        ip = getattr(loaded, INSTANCE)

        class Kernel:
            read = staticmethod(ip.read)
            write = staticmethod(ip.write)

            @staticmethod
            def start(**arguments):
                handle = ip.start(**arguments)

                def poll():
                    # ERT completions are collected only when events are handled.
                    if not handle.done:
                        self.device._handle_events(10)
                    return handle.done
                return _Handle(poll)

        class Overlay:
            def __getattr__(self, name):
                return getattr(loaded, name)

        self.overlay = Overlay()
        setattr(self.overlay, INSTANCE, Kernel())

    def allocate(self, shape, dtype, target):
        return self._pynq.allocate(shape, dtype, target=target)

    def clock(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        self.device.close()


class XrtPlatform(Platform):
    """Card ``index`` through ``pyxrt`` (XRT's native API)."""

    def __init__(self, index: int, path: Path):
        import pyxrt

        self._pyxrt = pyxrt
        self.device = pyxrt.device(index)
        uuid = self.device.load_xclbin(pyxrt.xclbin(str(path)))
        kernel = pyxrt.kernel(self.device, uuid, KERNEL_NAME,
                              pyxrt.kernel.cu_access_mode.exclusive)
        arguments = [r.name for r in REGMAP.arguments]

        class Bank:
            def __init__(self, group):
                self.group = group

        class Overlay:
            pass

        self.overlay = Overlay()
        for reg in REGMAP.arguments:
            if reg.pointer:
                bank = BANKS[CONNECTIVITY[reg.port]]
                setattr(self.overlay, bank.name, Bank(kernel.group_id(arguments.index(reg.name))))

        # No register access (pyxrt has none): the driver reads the status block.
        class Kernel:
            @staticmethod
            def start(**values):
                run = pyxrt.run(kernel)
                for position, name in enumerate(arguments):
                    value = values[name]
                    run.set_arg(position, value.bo if hasattr(value, "bo") else int(value))
                run.start()
                finished = (pyxrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED,
                            pyxrt.ert_cmd_state.ERT_CMD_STATE_ERROR,
                            pyxrt.ert_cmd_state.ERT_CMD_STATE_ABORT)
                return _Handle(lambda: run.state() in finished)

        setattr(self.overlay, INSTANCE, Kernel())

    def allocate(self, shape, dtype, target):
        pyxrt = self._pyxrt
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        bo = pyxrt.bo(self.device, size, pyxrt.bo.normal, target.group)
        array = np.frombuffer(bo.map(), np.uint8, size).view(dtype).reshape(shape).view(_XrtBuffer)
        array.bo = bo
        array.device_address = bo.address()
        array.directions = (pyxrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE,
                            pyxrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE)
        return array

    def clock(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _XrtBuffer(np.ndarray):
    """A ``pyxrt.bo`` mapped as an array, with PYNQ's buffer methods."""

    def sync_to_device(self) -> None:
        self.bo.sync(self.directions[0], self.nbytes, 0)

    def sync_from_device(self) -> None:
        self.bo.sync(self.directions[1], self.nbytes, 0)

    def freebuffer(self) -> None:
        self.bo = None
