"""A stand-in for PYNQ 3.0.1 on an Alveo card, over the fake card of ``fake_pyxrt``
(``FakeCard``).

:func:`build` gives a ``pynq`` module with what the ``alveo`` backend uses, shaped as in
PYNQ 3.0.1's sources: ``Device.devices`` (a property of the metaclass) holding
``XrtDevice``-like devices (``_handle_events``, ``close``), ``Overlay(bitfile_name,
dtbo=None, download=True, ignore_version=False, device=None, gen_cache=False)`` with
its memory banks (``HBM<n>``, ``XrtMemory``-like) and ``DefaultIP`` instances (``read``,
``write``, ``start`` = ``start_ert``, ``start_sw``, ``call``), ``ErtWaitHandle``
(``done``, ``wait``, ``wait_async``, its future) and ``allocate`` giving
``PynqBuffer``-like arrays. Arguments are packed with ``struct`` as PYNQ packs them
from ``kernel.xml`` (``Q`` for pointers, ``I`` for ``unsigned int``), and a run that
ends in any state from ``ERT_CMD_STATE_COMPLETED`` up completes its future, with
``RuntimeError("Execution failed: <state>")`` unless it completed. One departure: PYNQ
3.0.1's buffer sets ``self.device``, which NumPy 2 made read-only (the backend refuses
PYNQ under NumPy 2); the fake buffer keeps its device as ``_device``.
"""

from __future__ import annotations

import inspect
import struct
import types
from concurrent.futures import Future

import numpy as np

from velcro.hw.kernel.connectivity import BANKS
from velcro.hw.kernel.regmap import REGMAP

#: ``ert_cmd_state`` values (PYNQ's ``_3rdparty/ert.py``, XRT's ``ert.h``).
VALUES = {"ERT_CMD_STATE_COMPLETED": 4, "ERT_CMD_STATE_ERROR": 5, "ERT_CMD_STATE_ABORT": 6,
          "ERT_CMD_STATE_TIMEOUT": 8, "ERT_CMD_STATE_NORESPONSE": 9,
          "ERT_CMD_STATE_SKERROR": 10, "ERT_CMD_STATE_SKCRASHED": 11}


def build(card) -> types.ModuleType:
    """A ``pynq`` module over ``card`` (a ``fake_pyxrt.FakeCard``)."""
    m = types.ModuleType("pynq")
    m.card = card
    m.__version__ = "3.0.1"

    class DeviceMeta(type):
        @property
        def devices(cls):
            if not hasattr(cls, "_devices"):
                cls._devices = [XrtDevice(i) for i in range(len(card.devices))]
            return cls._devices

        @property
        def active_device(cls):
            return cls.devices[0]

    class Device(metaclass=DeviceMeta):
        __slots__ = ("tag",)

    class ErtWaitHandle:
        __slots__ = ("_future", "_bo", "device")

        def __init__(self, bo, future, device):
            self._future, self._bo, self.device = future, bo, device

        def _complete(self, state):
            if state != VALUES["ERT_CMD_STATE_COMPLETED"]:
                self._future.set_exception(RuntimeError("Execution failed: " + str(state)))
            else:
                self._future.set_result(None)
            self._bo = None

        @property
        def _has_bo(self):
            return self._bo is not None

        @property
        def done(self):
            return self._future.done()

        async def wait_async(self):
            raise NotImplementedError("no event loop in the fake")

        def wait(self):
            while not self.done:
                self.device._handle_events(1000)

    class XrtDevice(Device):
        __slots__ = ("index", "active_bos", "closed")

        def __init__(self, index, tag="xrt{}"):
            self.tag, self.index, self.active_bos, self.closed = tag.format(index), index, [], False

        @property
        def name(self):
            return card.devices[self.index][1]

        def _handle_events(self, timeout=0):
            card.events.append(("handle_events", timeout))
            still = []
            for run, handle in self.active_bos:
                run["polled"] += 1
                if card.polls is not None and run["polled"] > card.polls:
                    handle._complete(VALUES[card.final_state])
                else:
                    still.append((run, handle))
            self.active_bos = still

        def close(self):
            self.closed = True

    class XrtMemory:
        __slots__ = ("device", "idx")

        def __init__(self, device, idx):
            self.device, self.idx = device, idx

        def allocate(self, shape, dtype, **kwargs):
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            ident = len(card.of("bo"))
            card.events.append(("bo", ident, size, "normal", self.idx))
            address = card.place(self.idx, size)
            card.device_memory[ident] = (address, np.zeros(size, np.uint8))
            buf = PynqBuffer(shape, dtype, device=self.device, device_address=address)
            buf.ident = ident
            return buf

        @property
        def mem_used(self):
            return 0

        @property
        def num_buffers(self):
            return len(card.of("bo"))

    class PynqBuffer(np.ndarray):
        def __new__(cls, *args, device=None, device_address=0, bo=0, coherent=False,
                    **kwargs):
            self = super().__new__(cls, *args, **kwargs)
            self.device_address, self.coherent, self.bo = device_address, coherent, bo
            # PYNQ 3.0.1 sets self.device, which NumPy 2 made a read-only ndarray property.
            self._device, self.offset, self.freed = device, 0, False
            return self

        def freebuffer(self):
            if not self.freed:
                self.freed = True
                card.events.append(("free", self.ident))
                card.device_memory.pop(self.ident, None)

        @property
        def cacheable(self):
            return False

        @property
        def physical_address(self):
            return self.device_address

        @property
        def virtual_address(self):
            return self.ctypes.data

        def close(self):
            self.freebuffer()

        def flush(self):
            card.events.append(("sync", self.ident, "XCL_BO_SYNC_BO_TO_DEVICE", self.nbytes, 0))
            card.device_memory[self.ident][1][:] = self.view(np.uint8).reshape(-1)

        def invalidate(self):
            card.events.append(("sync", self.ident, "XCL_BO_SYNC_BO_FROM_DEVICE",
                                self.nbytes, 0))
            self.view(np.uint8).reshape(-1)[:] = card.device_memory[self.ident][1]

        def sync_to_device(self):
            self.flush()

        def sync_from_device(self):
            self.invalidate()

        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc_value, traceback):
            self.freebuffer()

    names = [r.name for r in REGMAP.arguments]
    layout = "=" + "".join("Q" if r.pointer else "I" for r in REGMAP.arguments)

    class DefaultIP:
        __slots__ = ("device", "cu", "_signature", "start", "start_ert", "start_sw", "call")

        def __init__(self, device, cu=0):
            self.device = device
            self.cu = cu
            self._signature = inspect.Signature(
                [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
            self.start = self.start_ert = self._start_ert
            self.start_sw = self._start_sw
            self.call = self._call

        def _start_ert(self, *args, waitfor=(), **kwargs):
            if kwargs:
                args = self._signature.bind(*args, **kwargs).args
            pointers = [r.pointer for r in REGMAP.arguments]
            args = [a.device_address if p else a for a, p in zip(args, pointers, strict=True)]
            struct.pack(layout, *args)
            for index, value in enumerate(args):
                card.events.append(("set_arg", index, value))
            card.events.append(("start",))
            if card.kernel is not None:
                card.execute(dict(enumerate(args)), self.cu)
            run = {"polled": 0}
            handle = ErtWaitHandle(run, Future(), self.device)
            self.device.active_bos.append((run, handle))
            return handle

        def _start_sw(self, *args, ap_ctrl=1, waitfor=None, **kwargs):
            raise NotImplementedError("the card's kernel is started through ERT")

        def _call(self, *args, **kwargs):
            self.start(*args, **kwargs).wait()

        def read(self, offset=0):
            card.events.append(("read", offset))
            return 0

        def write(self, offset, value):
            card.events.append(("write", offset, value))

    class Overlay:
        __slots__ = ("device", "bitfile_name", "_ip", "_mems")

        def __init__(self, bitfile_name, dtbo=None, download=True, ignore_version=False,
                     device=None, gen_cache=False):
            if bitfile_name not in card.xclbins:
                raise OSError(f"Bitstream file {bitfile_name} does not exist.")
            self.device = device or Device.active_device
            self.bitfile_name = bitfile_name
            card.loaded = card.xclbins[bitfile_name]
            self._ip = {f"velcro_kernel_{cu + 1}": DefaultIP(self.device, cu)
                        for cu in range(card.loaded.cus)}
            self._mems = {b.name: XrtMemory(self.device, b.index) for b in BANKS}

        def __getattr__(self, key):
            if key in self._ip:
                return self._ip[key]
            if key in self._mems:
                return self._mems[key]
            raise AttributeError(f"Could not find IP or hierarchy {key} in overlay")

        def free(self):
            pass

        def is_loaded(self):
            return True

    def allocate(shape, dtype="u4", target=None, **kwargs):
        return target.allocate(shape, dtype, **kwargs)

    m.Device, m.Overlay, m.DefaultIP, m.allocate = Device, Overlay, DefaultIP, allocate
    m.PynqBuffer, m.ErtWaitHandle, m.XrtDevice = PynqBuffer, ErtWaitHandle, XrtDevice
    return m
