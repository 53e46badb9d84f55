"""The ``sim`` backend: the host driver against ``velcro_kernel``'s Verilog in cocotb.

Inside the simulator (:mod:`velcro.sim.kernel_bench`), :class:`SimPlatform` gives the
driver (:mod:`velcro.sw.runtime.driver`) the PYNQ objects it expects, over bus
models of the card:

* the control port is a cocotbext-axi ``AxiLiteMaster``; register reads and writes
  are coroutines, made blocking calls with :func:`cocotb.task.resume`, and the
  synchronous driver runs in a thread started by :func:`cocotb.task.bridge`;
* device memory is a model of the U280's HBM channels: one sparse memory, which
  every ``m_axi`` port reaches through an ``AxiSlave`` that answers only inside the
  channel its port is linked to (:mod:`velcro.hw.kernel.connectivity`) and returns
  ``SLVERR`` elsewhere, so a buffer in the wrong bank fails like on the card;
* buffers are host arrays (:class:`SimBuffer`); ``sync_to_device`` and
  ``sync_from_device`` copy between them and device memory, so a missing sync
  leaves the kernel, or the host, with stale data;
* time is simulated time (a 300 MHz clock), so the driver's watchdog measures the
  kernel's time, and ``sleep`` also returns when the kernel raises ``interrupt``.

Device memory answers with HBM-like latency: read data comes
:data:`DEFAULT_LATENCY` cycles after its burst's address was taken, and a write's
response that long after its last data beat (``latency``, ``write_latency``; 0 gives
the bus models' own few cycles). The delay is per burst and pipelined: every burst the
kernel has in flight waits its own latency, as in a memory controller with a deep
request queue. Every port counts the bytes it moves (:attr:`PortView.bytes_read`,
:attr:`PortView.bytes_written`).

Random pauses can be put on every AXI channel (the ``pause`` of cocotbext-axi's
channel models; :attr:`KernelTB.pause_cycles` counts the channel-cycles paused),
address ranges of a port can be made to answer ``SLVERR`` (:meth:`KernelTB.fail`)
and a port's read data can be held forever (:meth:`KernelTB.stall`).

Outside the simulator, :class:`SimAccelerator` is what ``Accelerator.open("sim")``
returns: it has the accelerator's interface and runs each batch in a simulator,
where the driver runs against the RTL.
"""

from __future__ import annotations

import random
import time

import numpy as np

from velcro.hw.kernel.config import SHIPPED, KernelConfig
from velcro.hw.kernel.connectivity import BANKS, CLOCK_HZ, CONNECTIVITY, INSTANCE, Bank
from velcro.hw.kernel.regmap import REGMAP
from velcro.sw.runtime.counters import Counters
from velcro.sw.runtime.driver import Platform

from .memory import DEFAULT_LATENCY, LATENCY_ENV, Delay, PortView, default_latency

__all__ = ["CLOCK_PS", "DEFAULT_LATENCY", "LATENCY_ENV", "KernelTB", "SimAccelerator",
           "SimPlatform", "build_kernel", "default_latency"]

#: The kernel clock in simulation: 300 MHz (3.334 ns, an even number of picoseconds).
CLOCK_PS = 2 * round(1e12 / CLOCK_HZ / 2)
#: Buffers start on 4 KiB pages, like XRT's.
PAGE = 4096
#: Mean length of a run of pause cycles on an AXI channel.
PAUSE_RUN = 4


class KernelTB:
    """Clock, reset, control master and memory models around ``velcro_kernel``.

    Parameters
    ----------
    dut : cocotb handle
    pause : float
        Probability, per cycle and AXI channel, of a pause (no valid from a source,
        no ready from a sink).
    seed : int
    latency : int
        Cycles from a read burst's address to its data on every ``m_axi`` port.
    write_latency : int, optional
        Cycles from a write burst's last data to its response; default ``latency``.

    Attributes
    ----------
    pause_cycles : int
        Channel-cycles paused so far: for every cycle, the number of AXI channels
        whose pause was on.
    """

    def __init__(self, dut, *, pause: float = 0.0, seed: int = 0,
                 latency: int = DEFAULT_LATENCY, write_latency: int | None = None):
        from cocotb.clock import Clock
        from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiSlave
        from cocotbext.axi.sparse_memory import SparseMemory

        self.dut = dut
        Clock(dut.ap_clk, CLOCK_PS, unit="ps").start()
        self.memory = SparseMemory(BANKS[-1].base + BANKS[-1].size)
        self.control = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.ap_clk,
                                     dut.ap_rst_n, reset_active_level=False)
        self.views = {port: PortView(self.memory, port) for port in CONNECTIVITY}
        self.ports = {port: AxiSlave(AxiBus.from_prefix(dut, port), dut.ap_clk, dut.ap_rst_n,
                                     target=view, reset_active_level=False)
                      for port, view in self.views.items()}
        self.rng = random.Random(seed)
        self.pause = pause
        self.pause_cycles = 0
        self.held: set = set()
        self.latency = latency
        self.write_latency = latency if write_latency is None else write_latency
        self.delays = [delay for slave in self.ports.values() for delay in (
            Delay(slave.read_if.r_channel, self.latency * CLOCK_PS),
            Delay(slave.write_if.b_channel, self.write_latency * CLOCK_PS))]

    def channels(self):
        """Every AXI channel model: the control master's and each port's."""
        interfaces = [self.control.write_if, self.control.read_if]
        for slave in self.ports.values():
            interfaces += [slave.write_if, slave.read_if]
        for interface in interfaces:
            for name in ("aw_channel", "w_channel", "b_channel", "ar_channel", "r_channel"):
                if hasattr(interface, name):
                    yield getattr(interface, name)

    async def _drive_pauses(self) -> None:
        """Draw every channel's pause for every cycle, in one coroutine.

        This does what a ``set_pause_generator`` per channel does, without waking
        one coroutine per channel and cycle, which would cost more than the RTL.
        Pauses come in runs (geometric lengths of mean :data:`PAUSE_RUN` cycles) that
        cover ``pause`` of the cycles; so do the runs between them.
        """
        from cocotb.triggers import RisingEdge

        channels = list(self.channels())
        p = self.pause
        # Per cycle: leave a pause run with probability 1/L, enter one with
        # p / (1 - p) / L, which keeps a fraction p of the cycles paused.
        leave = 1 / PAUSE_RUN
        enter = min(1.0, p / (1 - p) / PAUSE_RUN)
        rng = random.Random(self.rng.random())
        paused = [False] * len(channels)
        edge = RisingEdge(self.dut.ap_clk)
        while True:
            for n, channel in enumerate(channels):
                flip = rng.random() < (leave if paused[n] else enter)
                if flip and channel not in self.held:
                    paused[n] = not paused[n]
                    channel.pause = paused[n]
            self.pause_cycles += sum(paused)
            await edge

    def fail(self, port: str, start: int, length: int) -> None:
        """Make ``port`` answer ``SLVERR`` for ``length`` bytes from ``start``."""
        self.views[port].faults.append((start, start + length))

    def fail_writes(self, port: str) -> None:
        """Make every write through ``port`` answer ``SLVERR``."""
        self.views[port].fail_writes = True

    def heal(self) -> None:
        """Remove every injected fault."""
        for view in self.views.values():
            view.faults.clear()
            view.fail_writes = False

    def stall(self, port: str) -> None:
        """Hold the read data channel of ``port`` forever: the kernel never gets data."""
        channel = self.ports[port].read_if.r_channel
        self.held.add(channel)
        channel.pause = True

    async def reset(self) -> None:
        import cocotb
        from cocotb.triggers import RisingEdge

        self.dut.ap_rst_n.value = 0
        for _ in range(4):
            await RisingEdge(self.dut.ap_clk)
        self.dut.ap_rst_n.value = 1
        await RisingEdge(self.dut.ap_clk)
        for delay in self.delays:
            delay.start()
        if self.pause:
            cocotb.start_soon(self._drive_pauses())

    @property
    def bytes_moved(self) -> int:
        """Bytes read and written over every ``m_axi`` port so far: whole words read,
        the bytes their strobes enable written."""
        return sum(view.bytes_read + view.bytes_written for view in self.views.values())


class SimBank:
    """A memory bank of the model, handing out page-aligned buffers."""

    def __init__(self, bank: Bank):
        self.bank = bank
        self.next = bank.base

    def take(self, size: int) -> int:
        address = self.next
        if address + size > self.bank.base + self.bank.size:
            raise MemoryError(f"{self.bank.name} is full")
        self.next = -(-(address + size) // PAGE) * PAGE
        return address


class SimBuffer(np.ndarray):
    """A host array with a device copy in the memory model (PYNQ's ``PynqBuffer``)."""

    def __new__(cls, shape, dtype, memory, address: int):
        obj = np.zeros(shape, dtype).view(cls)
        obj.device_address = address
        obj._memory = memory
        return obj

    def __array_finalize__(self, obj):
        self.device_address = getattr(obj, "device_address", None)
        self._memory = getattr(obj, "_memory", None)

    def sync_to_device(self) -> None:
        self._memory.write(self.device_address, np.ascontiguousarray(self).tobytes())

    def sync_from_device(self) -> None:
        raw = self._memory.read(self.device_address, self.nbytes)
        self[...] = np.frombuffer(raw, self.dtype).reshape(self.shape)

    def freebuffer(self) -> None:
        """Buffers are not reused; the model's banks are far larger than any test."""


class SimHandle:
    """A started run: ``done`` reads ``CTRL`` until ``AP_DONE`` shows once."""

    def __init__(self, ip):
        self.ip = ip
        self._done = False

    @property
    def done(self) -> bool:
        if not self._done:
            ctrl = REGMAP["CTRL"]
            if self.ip.read(ctrl.offset) & ctrl.field_named("AP_DONE").mask:
                self._done = True
                isr = REGMAP["ISR"]
                self.ip.write(isr.offset, isr.field_named("DONE").mask)
        return self._done


class SimIP:
    """The kernel instance, as PYNQ's ``DefaultIP`` presents it."""

    def __init__(self, tb: KernelTB, sleep):
        from cocotb.task import resume

        self.tb = tb
        self.sleep = sleep
        self.read = resume(self._read)
        self.write = resume(self._write)

    async def _read(self, offset: int) -> int:
        return await self.tb.control.read_dword(offset)

    async def _write(self, offset: int, value: int) -> None:
        await self.tb.control.write_dword(offset, int(value) & 0xFFFFFFFF)

    def start(self, **arguments) -> SimHandle:
        """Write the arguments, enable the done interrupt and set ``AP_START``."""
        for reg in REGMAP.arguments:
            value = arguments[reg.name]
            value = value.device_address if reg.pointer else int(value)
            for n, offset in enumerate(reg.words):
                self.write(offset, value >> (32 * n))
        self.write(REGMAP["GIE"].offset, REGMAP["GIE"].field_named("ENABLE").mask)
        self.write(REGMAP["IER"].offset, REGMAP["IER"].field_named("DONE").mask)
        self.write(REGMAP["CTRL"].offset, REGMAP["CTRL"].field_named("AP_START").mask)
        return SimHandle(self)

    def call(self, **arguments) -> None:
        """Start and wait for the end (PYNQ's blocking call)."""
        handle = self.start(**arguments)
        while not handle.done:
            self.sleep(SimPlatform.poll)


class SimOverlay:
    """The design as the driver sees it: ``HBM<n>`` banks and the kernel instance."""

    def __init__(self, tb: KernelTB, sleep):
        for bank in BANKS:
            setattr(self, bank.name, SimBank(bank))
        setattr(self, INSTANCE, SimIP(tb, sleep))


class SimPlatform(Platform):
    """The driver's platform inside a cocotb test (see the module docstring)."""

    min_timeout = 2e-4
    poll = 1e-4

    def __init__(self, tb: KernelTB):
        from cocotb.task import resume

        self.tb = tb
        self.sleep = resume(self._sleep)
        self.overlay = SimOverlay(tb, self.sleep)

    def allocate(self, shape, dtype, target: SimBank) -> SimBuffer:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return SimBuffer(shape, dtype, self.tb.memory, target.take(size))

    def clock(self) -> float:
        from cocotb.simtime import get_sim_time

        return get_sim_time("ns") * 1e-9

    async def _sleep(self, seconds: float) -> None:
        from cocotb.triggers import First, RisingEdge, Timer

        await First(Timer(max(1, round(seconds * 1e9)), unit="ns"),
                    RisingEdge(self.tb.dut.interrupt))


def build_kernel(config: KernelConfig = SHIPPED, simulator: str | None = None):
    """The kernel compiled for ``simulator`` (once per configuration and session)."""
    from velcro.hw.kernel.top import VelcroKernel

    from . import runner

    return runner.build(f"velcro_kernel-{config.name}", lambda: VelcroKernel(config),
                        simulator=simulator, toplevel="velcro_kernel")


class SimAccelerator:
    """``Accelerator.open("sim")``: every run is a simulation of the kernel.

    Parameters
    ----------
    config : KernelConfig
    simulator : str, optional
        ``"verilator"`` or ``"icarus"``; default ``$VELCRO_SIM`` or ``"verilator"``.
    pause : float
        AXI pause probability per channel and cycle.
    seed : int
    latency : int, optional
        Memory latency in cycles, for reads and write responses (see the module
        docstring); default :func:`default_latency`.
    jobs : int
        Simulator processes per run and compute unit: the images are split into this
        many contiguous parts, each simulated as a kernel run of its own (seed ``seed +
        part``), and the logits joined in order. The counters add up over the parts, so
        they include one run's fixed cycles per part.
    cus : int
        Compute units of the design: the images are first split into this many
        contiguous shares (``numpy.array_split``, as on the card), one per unit, and
        each unit's share is simulated in its own processes, all at once. The units
        share nothing on the card but the host (each has its own HBM channels), so each
        is a simulation of the one kernel; :attr:`last_unit_cycles` has every unit's
        cycles of the last run.
    """

    def __init__(self, config: KernelConfig = SHIPPED, *, simulator: str | None = None,
                 pause: float = 0.0, seed: int = 0, latency: int | None = None,
                 jobs: int = 1, cus: int = 1):
        from velcro.hw.kernel.connectivity import check_cus
        from velcro.sw.errors import DeviceError

        from . import runner

        try:
            simulator = runner.check_simulator(simulator or runner.default_simulator())
            latency = default_latency() if latency is None else latency
        except ValueError as e:
            raise DeviceError(f"sim: {e}") from None
        if not isinstance(jobs, int) or jobs < 1:
            raise DeviceError(f"sim: jobs must be a positive integer, not {jobs!r}")
        try:
            self.cus = check_cus(cus)
        except ValueError as e:
            raise DeviceError(f"sim: {e}") from None
        #: Cycles of each compute unit in the last run, and over every run.
        self.last_unit_cycles: list[int] = []
        self.unit_cycles = [0] * self.cus
        if not isinstance(latency, int) or latency < 0:
            raise DeviceError(f"sim: latency must be a non-negative number of cycles, "
                              f"not {latency!r}")
        self.latency = latency
        self.jobs = jobs
        self.config = config
        self.simulator = simulator
        self.pause = pause
        self.seed = seed
        self.package = None
        self.images = 0
        self._counters = Counters()
        self.sim = {"cycles": 0, "seconds": 0.0, "build_seconds": 0.0, "bytes": 0,
                    "pause_cycles": 0}

    def load(self, package) -> None:
        self.package = package

    def run(self, images: np.ndarray, *, timeout: float | None = None) -> np.ndarray:
        """int32 logits of uint8 ``images``, from one simulation of the kernel per job.

        Raises
        ------
        DeviceError
            The simulator is missing or failed (the message names its log), or the
            driver raised one inside the simulation (:class:`KernelError`,
            :class:`DeviceTimeout`).
        """
        from concurrent.futures import ThreadPoolExecutor

        from velcro.sw.errors import DeviceError

        from . import runner

        if self.package is None:
            raise DeviceError("no package loaded")
        images = np.asarray(images)
        start = time.perf_counter()
        try:
            # Checked first: converting the shipped kernel to Verilog takes most of a minute.
            runner.prepare_environment(self.simulator)
            model = build_kernel(self.config, self.simulator)
        except runner.SimulationError as e:
            raise DeviceError(f"sim: {str(e).splitlines()[0]}") from None
        self.sim["build_seconds"] += time.perf_counter() - start
        shares = [share for share in np.array_split(images, self.cus) if len(share)] or [images]
        parts, unit_of = [], []
        for cu, share in enumerate(shares):
            for part in np.array_split(share, max(1, min(self.jobs, len(share)))):
                parts.append(part)
                unit_of.append(cu)

        def simulate(part: int):
            try:
                return model.run("velcro.sim.kernel_bench", {
                    "config": self.config, "package": self.package, "pause": self.pause,
                    "seed": self.seed + part, "latency": self.latency,
                    "actions": [{"run": parts[part], "timeout": timeout}],
                })
            except runner.SimulationError as e:
                # The first line names the failure and the log; the log has the rest.
                raise DeviceError(f"sim: {str(e).splitlines()[0]}") from None

        with ThreadPoolExecutor(len(parts)) as pool:
            results = list(pool.map(simulate, range(len(parts))))
        outcomes = [result["outcomes"][0] for result in results]
        for outcome in outcomes:
            if "error" in outcome:
                raise outcome["error"]
        self._counters.start()
        self.last_unit_cycles = [0] * self.cus
        for cu, result, outcome in zip(unit_of, results, outcomes, strict=True):
            self.last_unit_cycles[cu] += outcome["totals"].get("cycles", 0)
            self.unit_cycles[cu] += outcome["totals"].get("cycles", 0)
            self._counters.add(outcome["counters"], outcome["totals"])
            self.sim["cycles"] += result["sim_cycles"]
            self.sim["seconds"] += result["sim_seconds"]
            self.sim["bytes"] += outcome["bytes"]
            self.sim["pause_cycles"] += result["pause_cycles"]
        self.images += len(images)
        return np.concatenate([outcome["logits"] for outcome in outcomes])

    @property
    def totals(self) -> dict:
        """Run totals of every run, added up over the parts (see the parameters)."""
        return self._counters.totals

    def counters(self):
        """Counters of every device descriptor, summed over every part of every run."""
        return self._counters.steps()

    def counts(self):
        from velcro.sw.golden import GoldenModel

        return [c.times(self.images) for c in GoldenModel(self.package).per_image()]

    def close(self) -> None:
        """Nothing to release: every run had its own simulator."""
