"""The ``golden`` backend: a NumPy model of ``velcro_kernel`` behind the PYNQ surface.

:class:`GoldenPlatform` gives the driver the objects it expects of PYNQ around a
:class:`~velcro.sw.runtime.backends.kernel_model.KernelModel`:

* memory banks that hand out page-aligned buffers and reuse freed space;
* buffers (:class:`GoldenBuffer`) that are host arrays with a device copy in the
  model's :class:`~velcro.sw.runtime.backends.kernel_model.DeviceMemory`:
  ``sync_to_device`` and ``sync_from_device`` copy between the two, so a missing
  sync leaves the kernel, or the host, with stale data, as on the card;
* the kernel instance, whose registers are the model's and whose ``start`` runs the
  model to the end, so a run is done as soon as it starts and the platform's clock
  never has to move.

``GoldenPlatform(config, cus=N)`` is a design of ``N`` compute units
(``velcro_kernel_1`` ... ``velcro_kernel_N``), one model each over the one device
memory, each reaching only its own banks.
"""

from __future__ import annotations

import numpy as np

from velcro.hw.kernel.config import KernelConfig
from velcro.hw.kernel.connectivity import BANKS, check_cus, instance
from velcro.hw.kernel.regmap import REGMAP

from ..driver import Platform
from .kernel_model import DeviceMemory, KernelModel

__all__ = ["GoldenBuffer", "GoldenPlatform"]


class GoldenBuffer(np.ndarray):
    """A host array whose device copy lives in a :class:`DeviceMemory`."""

    def __new__(cls, shape, dtype, device: np.ndarray, address: int, release):
        obj = np.zeros(shape, dtype).view(cls)
        obj.device_address = address
        obj._device = device
        obj._release = release
        return obj

    def __array_finalize__(self, obj):
        self.device_address = getattr(obj, "device_address", None)
        self._device = getattr(obj, "_device", None)
        self._release = getattr(obj, "_release", None)

    def sync_to_device(self) -> None:
        self._device[:] = np.ascontiguousarray(self).view(np.uint8).reshape(-1)

    def sync_from_device(self) -> None:
        self.view(np.uint8).reshape(-1)[:] = self._device

    def freebuffer(self) -> None:
        self._release(self.device_address)


class _Handle:
    done = True


class GoldenIP:
    """The kernel instance: registers, and a model run per start."""

    def __init__(self, model: KernelModel):
        self.model = model

    def read(self, offset: int) -> int:
        return self.model.registers.get(offset, 0)

    def write(self, offset: int, value: int) -> None:
        self.model.registers[offset] = int(value) & 0xFFFFFFFF

    def start(self, **arguments) -> _Handle:
        for reg in REGMAP.arguments:
            value = arguments[reg.name]
            value = value.device_address if reg.pointer else int(value)
            for n, offset in enumerate(reg.words):
                self.write(offset, value >> (32 * n))
        self.model.run()
        return _Handle()

    def call(self, **arguments) -> None:
        self.start(**arguments)


class _Bank:
    """A bank handing out page-aligned buffers; freed space is reused from the top."""

    def __init__(self, bank):
        self.bank = bank
        self.live: dict[int, int] = {}

    def take(self, size: int) -> int:
        top = max((a + s for a, s in self.live.items()), default=self.bank.base)
        address = -(-top // 4096) * 4096
        if address + size > self.bank.base + self.bank.size:
            raise MemoryError(f"{self.bank.name} is full")
        self.live[address] = size
        return address

    def release(self, address: int) -> None:
        self.live.pop(address, None)


class _Overlay:
    def __init__(self, models: list[KernelModel]):
        for bank in BANKS:
            setattr(self, bank.name, _Bank(bank))
        for cu, model in enumerate(models):
            setattr(self, instance(cu), GoldenIP(model))


class GoldenPlatform(Platform):
    """The ``golden`` device: the driver's platform over :class:`KernelModel`."""

    min_timeout = 1.0

    def __init__(self, config: KernelConfig, cus: int = 1):
        self.memory = DeviceMemory()
        self.models = [KernelModel(config, self.memory, cu) for cu in range(check_cus(cus))]
        self.model = self.models[0]
        self.overlay = _Overlay(self.models)

    def allocate(self, shape, dtype, target: _Bank) -> GoldenBuffer:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        address = target.take(size)
        device = np.zeros(size, np.uint8)
        self.memory.add(address, device)

        def release(address, bank=target):
            bank.release(address)
            self.memory.remove(address)

        return GoldenBuffer(shape, dtype, device, address, release)

    def clock(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> None:
        """Runs finish inside ``start``; nothing to wait for."""
