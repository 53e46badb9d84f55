"""The host driver of ``velcro_kernel``, written against the part of PYNQ's surface it uses.

One driver serves the card, the RTL simulation and the golden model of the kernel.
A *platform* gives it PYNQ's objects, or objects that behave like them:

``platform.overlay``
    The loaded design: ``overlay.HBM<n>`` memory banks and the kernel instances
    ``overlay.velcro_kernel_1`` (and ``_2``, ... in a design of several compute
    units) with ``start(**arguments)``, which returns a handle
    whose ``done`` says the run ended. A run needs nothing else of the instance: the
    kernel ends every run by writing its status block
    (:data:`~velcro.hw.kernel.config.STATUS_BLOCK`: error bits, where the first error
    happened, images done, the run's totals) to the start of the counter buffer, and
    the driver takes the outcome from there, so a platform without register access
    (``pyxrt``) runs like one with it. ``read(offset)`` is only for
    :meth:`KernelDriver.read`, to look at the status registers by hand.
``platform.allocate(shape, dtype, target=bank)``
    A device buffer: a NumPy array with ``device_address``, ``sync_to_device()``,
    ``sync_from_device()`` and ``freebuffer()``.
``platform.clock()``, ``platform.sleep(seconds)``
    The device's notion of time (wall time on the card, simulated time in RTL
    simulation), for the watchdog.

Register offsets come from :data:`~velcro.hw.kernel.regmap.REGMAP` by name, buffers go to
the bank their port of the driver's compute unit is linked to
(:mod:`velcro.hw.kernel.connectivity`), and formats come from the compiled
:class:`~velcro.sw.runtime.program.Program`.

A run is :meth:`KernelDriver.start` (buffers and the start) and
:meth:`KernelDriver.finish` (the wait, the outcome, the buffers freed): drivers of
several compute units start theirs one after another and then finish them, so the
units compute at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from velcro.hw.kernel.config import COUNTERS, STATUS_BLOCK, STATUS_MAGIC, KernelConfig
from velcro.hw.kernel.connectivity import CLOCK_HZ, bank_of, instance
from velcro.hw.kernel.cost import END_FIXED, RUN_FIXED
from velcro.hw.kernel.descriptor import Opcode
from velcro.hw.kernel.regmap import REGMAP

from ..errors import DeviceError
from .program import Program

__all__ = ["DeviceTimeout", "KernelDriver", "KernelError", "Pending", "Platform", "RunResult",
           "StepCounters"]


class KernelError(DeviceError):
    """The kernel ended a run with error bits set in its status block, or without
    writing the block."""


class DeviceTimeout(DeviceError):
    """The kernel did not signal ``ap_done`` within the watchdog time."""


class Platform:
    """What the driver needs from a backend (see the module docstring).

    Attributes
    ----------
    overlay : object
    min_timeout : float
        Seconds (of the platform's clock) added to every modelled run time.
    """

    overlay = None
    min_timeout = 1.0
    poll = 1e-3

    def allocate(self, shape, dtype, target):
        raise NotImplementedError

    def clock(self) -> float:
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device."""


@dataclass
class StepCounters:
    """Counters of one descriptor, summed over the images of a run."""

    name: str
    opcode: str
    cycles: int
    busy: int
    mac_cycles: int
    skipped: int
    stall_cycles: int


@dataclass
class RunResult:
    """Outputs and counters of one kernel call."""

    outputs: np.ndarray
    images: int
    steps: list[StepCounters] = field(default_factory=list)
    totals: dict = field(default_factory=dict)


@dataclass
class Loaded:
    """A program in device memory."""

    program: Program
    buffers: dict


def _expected_cycles(program: Program) -> int:
    """Modelled cycles of one image without memory stalls."""
    return sum(step.cost.fixed + step.cost.busy for step in program.steps
               if step.cost is not None) + END_FIXED


@dataclass
class Pending:
    """A started kernel call (:meth:`KernelDriver.start`), until it is finished."""

    loaded: Loaded
    images: int
    handle: object = None
    buffers: tuple = ()
    deadline: float = 0.0
    timeout: float = 0.0
    modelled: float = 0.0


class KernelDriver:
    """Runs compiled programs on one ``velcro_kernel`` instance.

    Parameters
    ----------
    platform : Platform
    config : KernelConfig
        The configuration the kernel was built with.
    cu : int
        Which compute unit of the design (from 0): its instance and its banks.
    """

    def __init__(self, platform: Platform, config: KernelConfig, cu: int = 0):
        self.platform = platform
        self.config = config
        self.cu = cu
        self.ip = getattr(platform.overlay, instance(cu))
        #: Cycles one descriptor may take before the kernel ends the run with an error;
        #: ``None``: eight times the longest modelled descriptor plus 65536, 0: no limit.
        self.watchdog: int | None = None
        #: The status block of the last run, as the kernel wrote it (``None`` before
        #: the first run ends; zeros if the kernel could not write it).
        self.last_block: bytes | None = None

    # --- memory ------------------------------------------------------------------------
    def _buffer(self, argument: str, raw: bytes | int):
        """A buffer for kernel ``argument`` in its port's bank, holding ``raw`` (or
        that many zero bytes)."""
        port = REGMAP[argument].port
        bank = bank_of(port, self.cu)
        size = raw if isinstance(raw, int) else len(raw)
        size = max(size, self.config.word_bytes)
        if size > bank.size:
            raise DeviceError(f"{argument}: {size} bytes do not fit {bank.name} "
                              f"({bank.size} bytes)")
        buf = self.platform.allocate((size,), np.uint8, target=getattr(self.platform.overlay,
                                                                       bank.name))
        if isinstance(raw, int):
            buf[:] = 0
        else:
            buf[:len(raw)] = np.frombuffer(raw, np.uint8)
            buf[len(raw):] = 0
        buf.sync_to_device()
        return buf

    def load(self, program: Program) -> Loaded:
        """Put ``program``'s images in device memory."""
        return Loaded(program, {"program": self._buffer("program", program.program),
                                "indices": self._buffer("indices", program.indices)})

    def unload(self, loaded: Loaded) -> None:
        for buf in loaded.buffers.values():
            buf.freebuffer()
        loaded.buffers.clear()

    # --- registers -----------------------------------------------------------------------
    def read(self, name: str) -> int:
        """A register by name (64-bit registers low word first); runs never read any."""
        reg = REGMAP[name]
        value = 0
        for n, offset in enumerate(reg.words):
            value |= (int(self.ip.read(offset)) & 0xFFFFFFFF) << (32 * n)
        return value

    # --- runs ---------------------------------------------------------------------------------
    def run(self, loaded: Loaded, x: np.ndarray, *, timeout: float | None = None) -> RunResult:
        """Run the program on every image of ``x`` in one kernel call.

        Raises
        ------
        KernelError
            The kernel reported an error; the message names it and the descriptor.
        DeviceTimeout
            ``ap_done`` did not come within ``timeout`` seconds of the platform's clock
            (default: four times the modelled time plus ``platform.min_timeout``).
        """
        return self.finish(self.start(loaded, x, timeout=timeout))

    def start(self, loaded: Loaded, x: np.ndarray, *, timeout: float | None = None) -> Pending:
        """Start the program on every image of ``x`` and return at once; every call
        started must be given to :meth:`finish`, which frees its buffers."""
        program = loaded.program
        n = len(x)
        if n == 0:
            return Pending(loaded, 0)
        per_image = _expected_cycles(program)
        if timeout is None:
            timeout = 4 * (per_image * n + RUN_FIXED) / CLOCK_HZ + self.platform.min_timeout
        longest = max(step.cost.fixed + step.cost.busy for step in program.steps
                      if step.cost is not None)
        buffers = (self._buffer("inputs", program.pack_inputs(x)),
                   self._buffer("outputs", n * program.output_stride),
                   self._buffer("counters", program.counter_bytes))
        inputs, outputs, counters = buffers
        try:
            handle = self.ip.start(
                program=loaded.buffers["program"], indices=loaded.buffers["indices"],
                inputs=inputs, outputs=outputs, counters=counters, images=n,
                watchdog=min(8 * longest + (1 << 16), (1 << 32) - 1)
                if self.watchdog is None else self.watchdog)
        except BaseException:
            for buf in buffers:
                buf.freebuffer()
            raise
        return Pending(loaded, n, handle, buffers, self.platform.clock() + timeout, timeout,
                       per_image * n / CLOCK_HZ)

    def finish(self, pending: Pending) -> RunResult:
        """Wait for a started call to end; its outputs and counters (see :meth:`run`)."""
        program = pending.loaded.program
        n = pending.images
        if pending.handle is None:
            return RunResult(program.unpack_outputs(b"", 0), 0)
        handle = pending.handle
        inputs, outputs, counters = pending.buffers
        try:
            while not handle.done:
                if self.platform.clock() > pending.deadline:
                    # Give the card's adapter the chance to end the run before the
                    # buffers go: it keeps those of a run that is still going.
                    ended = handle.abort() if hasattr(handle, "abort") else True
                    raise DeviceTimeout(f"the kernel did not finish {n} image(s) within "
                                        f"{pending.timeout:.3g} s (modelled: "
                                        f"{pending.modelled:.3g} s)" +
                                        ("" if ended else "; it is still running (xbutil "
                                         "reset stops it)"))
                self.platform.sleep(self.platform.poll)
            counters.sync_from_device()
            raw = bytes(counters)
            self.last_block = raw[:self.config.status_bytes]
            block = self._status_block(raw)
            self._check_status(program, block)
            outputs.sync_from_device()
            result = RunResult(program.unpack_outputs(bytes(outputs), n), n)
            result.steps = self._step_counters(program, raw[self.config.status_bytes:])
            result.totals = {name: int(block[name]) for name in
                             ("cycles", "mac_cycles", "skipped", "stall_cycles", "images_done")}
            return result
        finally:
            for buf in pending.buffers:
                buf.freebuffer()
            pending.buffers = ()

    def _status_block(self, raw: bytes):
        """The status block at the start of the counter buffer ``raw``.

        Raises
        ------
        KernelError
            The kernel did not write it (the buffer still holds the zeros it was
            given): only a failing write path keeps it from doing so.
        """
        value = int.from_bytes(raw[:self.config.status_bytes], "little")
        block = STATUS_BLOCK.from_bits(value & ((1 << STATUS_BLOCK.size) - 1))
        if block.magic != STATUS_MAGIC:
            port = REGMAP["counters"].port
            raise KernelError(f"the kernel ended without writing its status block: its "
                              f"writes through {port} failed (AXI_WRITE), or the counter "
                              f"buffer is in a bank {port} does not reach")
        return block

    def _check_status(self, program: Program, block) -> None:
        status = int(block.status)
        if not status:
            return
        reg, where = REGMAP["status"], REGMAP["error_at"]
        errors = [f.name for f in reg.fields if status & f.mask]
        at = int(block.error_at)
        pc_field, op_field = where.field_named("PC"), where.field_named("OPCODE")
        pc = (at & pc_field.mask) >> pc_field.bit
        opcode = (at & op_field.mask) >> op_field.bit
        try:
            op_name = Opcode(opcode).name
        except ValueError:
            op_name = f"unknown opcode {opcode}"
        step = program.steps[pc].name if pc < len(program.steps) else "beyond the program"
        raise KernelError(f"the kernel stopped with {' and '.join(errors)} (status "
                          f"{status:#x}) at descriptor {pc} ({op_name}, {step}) after "
                          f"{int(block.images_done)} image(s)")

    def _step_counters(self, program: Program, raw: bytes) -> list[StepCounters]:
        rb = self.config.record_bytes("counters")
        steps = []
        for index, step in enumerate(program.steps[:-1]):
            record = COUNTERS.from_bits(int.from_bytes(raw[index * rb:(index + 1) * rb],
                                                       "little") & ((1 << COUNTERS.size) - 1))
            steps.append(StepCounters(step.name, step.opcode.name, record.cycles, record.busy,
                                      record.mac_cycles, record.skipped, record.stall_cycles))
        return steps
