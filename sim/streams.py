"""cocotb drivers for Amaranth ``lib.stream`` ports, with random idle and back-pressure.

Amaranth flattens a stream member ``name`` of a component into the Verilog ports
``name__payload``, ``name__valid`` and ``name__ready``; :class:`StreamSource` drives
such an input, :class:`StreamSink` absorbs such an output.

All endpoints of a bench are stepped by one :class:`Clocked` loop rather than one
cocotb task each: a task switch costs more than a simulated cycle of most designs,
and a single loop also fixes the order of driving and sampling. Each cycle the loop

1. waits for the rising edge and calls every endpoint's :meth:`~Endpoint.edge`:
   the endpoint retires the transfer it saw at the previous sample and drives the
   inputs for the coming cycle;
2. waits for the falling edge and calls :meth:`~Endpoint.sample`: inputs and the
   design's combinational response are settled, so ``valid and ready`` seen here is
   exactly the transfer that happens at the next rising edge.

Idle (a source withholding ``valid`` while it has data) and back-pressure (a sink
withholding ``ready``) are drawn per cycle from a seeded :class:`random.Random`.
A source never drops ``valid`` or changes its payload before the beat is taken.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable

from cocotb.triggers import FallingEdge, RisingEdge


class Endpoint:
    """Something stepped once per cycle by :class:`Clocked`."""

    def edge(self) -> None:
        """After the rising edge: retire what was sampled and drive the next inputs."""

    def sample(self) -> None:
        """At the falling edge: read the settled signals of the current cycle."""


class _Port(Endpoint):
    """The ``payload``, ``valid`` and ``ready`` signals of the stream ``prefix`` of ``dut``."""

    def __init__(self, dut, prefix: str, rng: random.Random | None):
        self.payload = getattr(dut, f"{prefix}__payload")
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.name = prefix
        self.rng = rng or random.Random(0)


class StreamSource(_Port):
    """Drives the stream input ``prefix`` of ``dut`` with queued integer payloads.

    Parameters
    ----------
    dut : cocotb handle
        The toplevel.
    prefix : str
        Stream member name (``weights`` drives ``weights__payload`` etc.).
    idle : float
        Probability, per cycle with a beat pending, of holding ``valid`` low.
    rng : random.Random, optional
        Source of the idle pattern.

    Attributes
    ----------
    sent : int
        Beats transferred so far.
    idle_cycles : int
        Cycles in which a beat was pending but withheld.
    """

    def __init__(self, dut, prefix: str, *, idle: float = 0.0,
                 rng: random.Random | None = None):
        super().__init__(dut, prefix, rng)
        self.idle = idle
        self.queue: deque[int] = deque()
        self.sent = 0
        self.idle_cycles = 0
        self._offered = False
        self._taken = False
        self.valid.value = 0

    def send(self, beats: Iterable[int]) -> None:
        """Queue ``beats`` (unsigned integers of the payload width)."""
        self.queue.extend(beats)

    @property
    def pending(self) -> int:
        """Beats queued and not yet transferred."""
        return len(self.queue)

    def edge(self) -> None:
        if self._taken:
            self.queue.popleft()
            self.sent += 1
            self._offered = self._taken = False
        if self._offered:
            return
        if not self.queue:
            self.valid.value = 0
        elif self.idle and self.rng.random() < self.idle:
            self.valid.value = 0
            self.idle_cycles += 1
        else:
            self.payload.value = self.queue[0]
            self.valid.value = 1
            self._offered = True

    def sample(self) -> None:
        self._taken = self._offered and bool(self.ready.value)


class StreamSink(_Port):
    """Accepts beats from the stream output ``prefix`` of ``dut``.

    Parameters
    ----------
    dut : cocotb handle
        The toplevel.
    prefix : str
        Stream member name.
    backpressure : float
        Probability, per cycle, of holding ``ready`` low.
    rng : random.Random, optional
        Source of the back-pressure pattern.

    Attributes
    ----------
    beats : list of int
        Payloads received, in order (unsigned).
    stall_cycles : int
        Cycles in which ``valid`` was high but ``ready`` withheld.
    """

    def __init__(self, dut, prefix: str, *, backpressure: float = 0.0,
                 rng: random.Random | None = None):
        super().__init__(dut, prefix, rng)
        self.backpressure = backpressure
        self.beats: list[int] = []
        self.stall_cycles = 0
        self._ready = False
        self.ready.value = 0

    def edge(self) -> None:
        self._ready = not (self.backpressure and self.rng.random() < self.backpressure)
        self.ready.value = int(self._ready)

    def sample(self) -> None:
        if self.valid.value:
            if self._ready:
                self.beats.append(self.payload.value.to_unsigned())
            else:
                self.stall_cycles += 1


class Clocked:
    """Steps a set of :class:`Endpoint` objects every cycle of ``clk``.

    Parameters
    ----------
    clk : cocotb handle
        The clock (already running).
    endpoints : iterable of Endpoint
        Stepped in this order.

    Attributes
    ----------
    cycle : int
        Rising edges seen by :meth:`run`.
    """

    def __init__(self, clk, endpoints: Iterable[Endpoint] = ()):
        self.clk = clk
        self.endpoints = list(endpoints)
        self.cycle = 0
        self._rising = RisingEdge(clk)
        self._falling = FallingEdge(clk)

    def add(self, endpoint: Endpoint) -> Endpoint:
        """Step ``endpoint`` too, from the next cycle on; returns it."""
        self.endpoints.append(endpoint)
        return endpoint

    async def run(self, until: Callable[[], bool], max_cycles: int, what: str = "") -> int:
        """Run cycles until ``until()`` is true after a sample; return how many ran.

        Raises
        ------
        TimeoutError
            If ``until()`` is still false after ``max_cycles`` cycles.
        """
        for n in range(1, max_cycles + 1):
            await self._rising
            self.cycle += 1
            for endpoint in self.endpoints:
                endpoint.edge()
            await self._falling
            for endpoint in self.endpoints:
                endpoint.sample()
            if until():
                return n
        raise TimeoutError(f"{what or 'condition'} not reached within {max_cycles} cycles")
