"""The device memory the kernel bench gives ``velcro_kernel``: ports onto one sparse
memory, with HBM-like latency.

:class:`PortView` is what one ``m_axi`` port reaches of the memory (the
cocotbext-axi ``AxiSlave`` of the port calls it for every word): its bank, minus
the faults a test injects; it counts the bytes it moves. :class:`Delay` holds back
what such a slave sends on one of its channels, read data or write responses, by a
fixed time after the slave queued it: the slave queues a burst's read data as soon
as it has the address, and a write's response as soon as it has the last data, so
the delay is the memory's latency, per burst and pipelined, as in a memory
controller with a deep request queue.
"""

from __future__ import annotations

import os
from collections import deque

from velcro.hw.kernel.connectivity import bank_of

__all__ = ["DEFAULT_LATENCY", "LATENCY_ENV", "Delay", "PortView", "default_latency"]

#: Cycles from a read burst's address to its first data, and from a write burst's last
#: data to its response, unless told otherwise: about 330 ns at 300 MHz, what an HBM2
#: pseudo-channel takes behind the U280's AXI switch.
DEFAULT_LATENCY = 100
#: Overrides :data:`DEFAULT_LATENCY` for the ``sim`` device (``velcro run --device sim``).
LATENCY_ENV = "VELCRO_SIM_LATENCY"


def default_latency() -> int:
    """Memory latency of the ``sim`` device: ``$VELCRO_SIM_LATENCY`` or
    :data:`DEFAULT_LATENCY` cycles.

    Raises
    ------
    ValueError
        The variable is not a non-negative integer.
    """
    text = os.environ.get(LATENCY_ENV)
    if text is None:
        return DEFAULT_LATENCY
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{LATENCY_ENV} must be a non-negative number of cycles, not {text!r}")
    return value


class PortView:
    """What one ``m_axi`` port sees of device memory: its bank, minus injected faults."""

    def __init__(self, memory, port: str):
        self.memory = memory
        self.port = port
        self.bank = bank_of(port)
        self.faults: list[tuple[int, int]] = []
        self.fail_writes = False
        self.errors: list[str] = []
        self.bytes_read = 0
        self.bytes_written = 0

    def _check(self, address: int, length: int) -> None:
        if not self.bank.contains(address, length):
            self.errors.append(f"{self.port}: {address:#x} is outside {self.bank.name}")
            raise ValueError(self.errors[-1])
        for start, end in self.faults:
            if address < end and start < address + length:
                self.errors.append(f"{self.port}: injected error at {address:#x}")
                raise ValueError(self.errors[-1])

    async def read(self, address: int, length: int) -> bytes:
        self._check(address, length)
        self.bytes_read += length
        return self.memory.read(address, length)

    async def write(self, address: int, data: bytes) -> None:
        self._check(address, len(data))
        if self.fail_writes:
            self.errors.append(f"{self.port}: injected write error at {address:#x}")
            raise ValueError(self.errors[-1])
        self.bytes_written += len(data)
        self.memory.write(address, data)


class Delay:
    """Hands the items a slave model sends on ``channel`` to it ``delay`` picoseconds later.

    The items wait in order in a queue of their own; one coroutine (:meth:`start`)
    moves each to the channel when it is due and the channel has room. A ``delay`` of
    0 leaves the channel alone.
    """

    def __init__(self, channel, delay: int):
        self.channel = channel
        self.delay = delay
        self.pending: deque = deque()
        self._wake = None
        if delay > 0:
            channel.send = self._send

    async def _send(self, item) -> None:
        from cocotb.simtime import get_sim_time

        self.pending.append((int(get_sim_time("ps")) + self.delay, item))
        self._wake.set()

    def start(self) -> None:
        """Start moving items (inside the simulation, once the clock runs)."""
        import cocotb
        from cocotb.triggers import Event

        if self.delay > 0:
            self._wake = Event()
            cocotb.start_soon(self._release())

    async def _release(self) -> None:
        from cocotb.simtime import get_sim_time
        from cocotb.triggers import Timer

        channel, pending = self.channel, self.pending
        while True:
            if not pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = pending[0][0] - int(get_sim_time("ps"))
            if wait > 0:
                await Timer(wait, unit="ps")
            now = int(get_sim_time("ps"))
            while pending and pending[0][0] <= now:
                while channel.full():
                    channel.dequeue_event.clear()
                    await channel.dequeue_event.wait()
                channel.send_nowait(pending.popleft()[1])
