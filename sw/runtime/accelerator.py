"""The user-facing runtime: open a device, load a package, run images.

``Accelerator.open(spec)`` picks the backend:

``golden``
    The driver against
    :class:`~velcro.sw.runtime.backends.kernel_model.KernelModel`, a NumPy model of
    the kernel that executes the very descriptors and memory images the card would
    (with the cost model's cycles).
``sim``
    The driver against the generated Verilog in cocotb (:mod:`velcro.sim.backend`);
    runs start a simulator, the driver code runs inside it.
``alveo`` or ``alveo:N``
    The driver on card ``N`` through PYNQ 3.0.1 or XRT's ``pyxrt``
    (:mod:`velcro.sw.runtime.backends.alveo`).

``load`` partitions the package (:mod:`velcro.sw.runtime.partition`), compiles every
device stage (:mod:`velcro.sw.runtime.program`) and puts it in device memory; ``run``
quantizes the images like the golden model, sends them through the stages (host
stages with the golden rules) and returns int32 logits. A stage run in tiles
(:mod:`velcro.sw.runtime.tiles`) has one program per tile; ``run`` makes one kernel
call per tile, each on its window of the input, and places the outputs each keeps. Counters of every
descriptor accumulate over runs (:meth:`Accelerator.counters`,
:mod:`velcro.sw.runtime.counters`).

A design of several compute units (``Accelerator.open(spec, cus=N)``, a bitstream
from ``velcro build xclbin --cus N``) holds every device program once per unit, in
the unit's own banks. A run splits each device stage's batch into ``N`` contiguous
shares (``numpy.array_split``), starts every unit on its share before waiting for
any, and joins the outputs in image order; the counters of one descriptor add up
over the units, as if one unit had run every image, and
:attr:`Accelerator.last_unit_cycles` keeps each unit's cycles of the last run (the
run takes as long as the largest).
"""

from __future__ import annotations

import re
import time

import numpy as np

from velcro.hw.kernel.config import SHIPPED, KernelConfig
from velcro.hw.kernel.connectivity import check_cus

from .. import golden
from ..errors import DeviceError
from ..export.package import Package
from ..export.schema import INPUT
from . import host
from .counters import Counters
from .driver import KernelDriver, Platform, StepCounters
from .partition import Stage, partition
from .program import Program, compile_segment

__all__ = ["Accelerator", "DEVICES", "parse_device"]

DEVICES = ("golden", "sim", "alveo[:N]")


def parse_device(spec: str) -> tuple[str, int]:
    """``(kind, index)`` of a device spec; :class:`DeviceError` naming it if bad."""
    match = re.fullmatch(r"(golden|sim|alveo)(?::(\d+))?", spec or "")
    if not match or (match.group(2) is not None and match.group(1) != "alveo"):
        raise DeviceError(f"unknown device {spec!r}; available: {', '.join(DEVICES)}")
    return match.group(1), int(match.group(2) or 0)


class Accelerator:
    """A package on a device.

    Parameters
    ----------
    platform : Platform
    config : KernelConfig
        The configuration of the kernel behind ``platform``.
    name : str
        The device spec, for messages.
    cus : int
        Compute units of the design behind ``platform``.
    """

    def __init__(self, platform: Platform, config: KernelConfig = SHIPPED, name: str = "",
                 cus: int = 1):
        self.platform = platform
        self.config = config
        self.name = name
        self.cus = check_cus(cus)
        self.drivers = [KernelDriver(platform, config, cu) for cu in range(cus)]
        self.driver = self.drivers[0]
        #: Cycles of each compute unit in the last run, summed over its kernel calls, and
        #: over every run.
        self.last_unit_cycles: list[int] = []
        self.unit_cycles = [0] * self.cus
        self.package: Package | None = None
        self.stages: list[Stage] = []
        #: The program of each device stage (a tiled stage's first tile's), ``None`` for
        #: a host stage.
        self.programs: list[Program | None] = []
        self._loaded = []
        self._counters = Counters()
        self.images = 0
        #: Seconds of the last run in host stages and in kernel calls (each call from
        #: its inputs' copy to the card to its outputs' copy back).
        self.last_seconds = {"host": 0.0, "kernel": 0.0}

    @classmethod
    def open(cls, spec: str, *, config: KernelConfig | None = None, cus: int = 1, **options):
        """The accelerator named by ``spec`` (see the module docstring), with ``cus``
        compute units.

        ``options`` go to the backend: ``xclbin`` and ``backend`` for ``alveo``; ``simulator``,
        ``pause``, ``seed``, ``latency`` and friends for ``sim``.
        """
        kind, index = parse_device(spec)
        config = config or SHIPPED
        try:
            check_cus(cus)
        except ValueError as e:
            raise DeviceError(f"{spec}: {e}") from None
        if kind == "golden":
            from .backends.golden import GoldenPlatform

            return cls(GoldenPlatform(config, cus), config, spec, cus)
        if kind == "sim":
            from velcro.sim.backend import SimAccelerator

            return SimAccelerator(config, cus=cus, **options)
        from .backends.alveo import open_platform

        return cls(open_platform(index, cus=cus, **options), config, spec, cus)

    def load(self, package: Package) -> None:
        """Partition and compile ``package`` and put its programs in device memory."""
        self.unload()
        self.package = package
        self.stages = partition(package, self.config)
        for stage in self.stages:
            if stage.device:
                programs = [compile_segment(layers, self.config)
                            for layers in stage.segments()]
                self.programs.append(programs[0])
                self._loaded.append([[driver.load(program) for driver in self.drivers]
                                     for program in programs])
            else:
                self.programs.append(None)
                self._loaded.append(None)

    def unload(self) -> None:
        for calls in self._loaded:
            for loaded in calls or ():
                for driver, one in zip(self.drivers, loaded, strict=True):
                    driver.unload(one)
        self._loaded, self.programs, self.stages = [], [], []

    def run(self, images: np.ndarray, *, timeout: float | None = None) -> np.ndarray:
        """int32 logits ``[N, n_out]`` of uint8 ``images [N, C, H, W]``."""
        if self.package is None:
            raise DeviceError("no package loaded")
        images = np.asarray(images)
        expected = tuple(self.package.input_shape)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            raise DeviceError(f"images must be uint8 [N, {', '.join(map(str, expected))}], "
                              f"got {images.dtype} {list(images.shape)}")
        values = {INPUT: golden.quantize_input(images)}
        last_read = {name: i for i, stage in enumerate(self.stages) for name in stage.inputs}
        self._counters.start()
        self.last_unit_cycles = [0] * self.cus
        self.last_seconds = {"host": 0.0, "kernel": 0.0}
        for index, (stage, loaded) in enumerate(zip(self.stages, self._loaded, strict=True)):
            xs = [values[name] for name in stage.inputs]
            start = time.perf_counter()
            if stage.tiles:
                (x,) = xs
                (layer,) = stage.layers
                y = np.zeros((len(x), *layer.out_shape), np.int8)
                for tile, one in zip(stage.tiles, loaded, strict=True):
                    (i0, i1), (j0, j1) = tile.rows, tile.cols
                    (c0, c1), (o0, o1), (p0, p1) = tile.channels, tile.keep_rows, tile.keep_cols
                    rows, cols = tile.kept
                    part = self._call(index, one, np.ascontiguousarray(x[:, :, i0:i1, j0:j1]),
                                      timeout)
                    y[:, c0:c1, o0:o1, p0:p1] = part[:, :, rows, cols]
                x = y
            elif stage.device:
                (x,) = xs
                if self.programs[index].input_kind == "vector":
                    x = x.reshape(len(x), -1)
                x = self._call(index, loaded[0], x, timeout)
            else:
                (layer,) = stage.layers
                x = host.run_layer(layer, *xs)
            self.last_seconds["kernel" if stage.device else "host"] += \
                time.perf_counter() - start
            for name in stage.inputs:
                if last_read[name] == index:
                    del values[name]
            values[stage.output] = x
        self.images += len(images)
        return np.asarray(x, np.int32)

    def _call(self, stage: int, loaded: list, x: np.ndarray, timeout: float | None):
        """One kernel call of device stage ``stage`` on the batch ``x``, over the units;
        its counters added to the stage's."""
        results = self._run_units(loaded, x, timeout)
        for cu, result in enumerate(results):
            self.last_unit_cycles[cu] += result.totals.get("cycles", 0)
            self.unit_cycles[cu] += result.totals.get("cycles", 0)
        self._counters.add_units([(r.steps, r.totals) for r in results], stage=stage)
        return np.concatenate([result.outputs for result in results]) \
            if len(results) > 1 else results[0].outputs

    def _run_units(self, loaded: list, x: np.ndarray, timeout: float | None) -> list:
        """One device stage on the compute units, each on its share of ``x`` (units
        without images sit out): all started, then every started one finished, also
        when another fails; the first failure is raised, naming its unit."""
        shares = [share for share in np.array_split(x, self.cus) if len(share)] or [x]
        pending, results, failure = [], [], None
        for cu, share in enumerate(shares):
            try:
                pending.append((cu, self.drivers[cu].start(loaded[cu], share, timeout=timeout)))
            except BaseException as e:
                failure = (cu, e)
                break
        for cu, started in pending:
            try:
                results.append(self.drivers[cu].finish(started))
            except BaseException as e:
                failure = failure or (cu, e)
        if failure is not None:
            cu, error = failure
            if self.cus > 1 and isinstance(error, DeviceError):
                raise type(error)(f"compute unit {cu + 1} of {self.cus}: {error}") from error
            raise error
        return results

    def buffers(self, stage: int = 0, cu: int = 0) -> dict:
        """Device buffers of the ``stage``-th device stage on compute unit ``cu``, by
        kernel argument."""
        loaded = [calls[0] for calls in self._loaded if calls is not None]
        return loaded[stage][cu].buffers

    @property
    def totals(self) -> dict:
        """Run totals (cycles, MAC cycles, skipped, stall cycles, images done) of every run."""
        return self._counters.totals

    @property
    def last_totals(self) -> dict:
        """Run totals of the last run."""
        return self._counters.last_totals

    @property
    def last_steps(self) -> list[StepCounters]:
        """Counters of every device descriptor of the last run, in order."""
        return self._counters.last_steps

    def counters(self) -> list[StepCounters]:
        """Counters of every device descriptor, summed over all images run so far."""
        return self._counters.steps()

    def counts(self):
        """MACs performed and skipped per layer (:meth:`velcro.sw.golden.GoldenModel.counts`)."""
        return [c.times(self.images) for c in golden.GoldenModel(self.package).per_image()]

    def close(self) -> None:
        self.unload()
        self.platform.close()

