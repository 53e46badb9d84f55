"""How the kernel sits in the linked design on the Alveo U280: its names, its clock and
the HBM pseudo-channels its ``m_axi`` ports reach.

The top module is :data:`KERNEL_NAME`, linked as one compute unit :data:`INSTANCE`
clocked at :data:`CLOCK_HZ` (the frequency the link step asks for, the watchdog
assumes and throughput projections use).

The U280's 8 GiB of HBM2 are 32 pseudo-channels of 256 MiB, ``HBM[0]`` at address 0
and each next one 256 MiB higher. The link step connects every ``m_axi`` port to
one pseudo-channel (``sp=velcro_kernel_1.<port>:HBM[n]``), and a buffer passed
through a port must live in that port's channel: the runtime allocates each buffer
there (PYNQ's ``allocate(target=ol.HBM<n>)``), and the simulation's memory model
answers a port only inside its channel.

A compute unit takes :data:`CHANNELS_PER_CU` channels. The two ports of constants,
``m_axi_program`` (descriptors, conv kernels, requantization, masks and means, dense
parameters and codebooks) and ``m_axi_indices`` (dense weights and indices), share
one: a run reads its constants from device memory for its first image only, and
every later image from the kernel's on-chip copies of them
(:mod:`velcro.hw.axi.resident`), so after the first image that channel carries
nothing but the reads beyond the copies. ``m_axi_data`` (each image's input and
output, the counters and the status block) has a channel of its own, whose
bandwidth no constant takes.

A design can hold up to :data:`MAX_CUS` compute units: compute unit ``cu`` (counted from
0) is :func:`instance` ``velcro_kernel_<cu + 1>`` and its ports reach the two channels
after those of compute unit ``cu - 1`` (:func:`bank_of`): ``velcro_kernel_2`` is on
``HBM[2..3]``. No two compute units share a channel, so each has the bandwidth one
alone would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from .regmap import PORTS

__all__ = ["BANKS", "CHANNELS_PER_CU", "CLOCK_HZ", "CONNECTIVITY", "INSTANCE", "KERNEL_NAME",
           "MAX_CUS", "Bank", "bank_of", "check_cus", "instance"]

#: The kernel's top module, and its name in ``kernel.xml`` and the ``.xclbin``.
KERNEL_NAME = "velcro_kernel"
#: Name of the kernel's first compute unit in the linked design (:func:`instance`).
INSTANCE = f"{KERNEL_NAME}_1"
#: Kernel clock, in Hz.
CLOCK_HZ = 300_000_000

HBM_CHANNELS = 32
HBM_CHANNEL_BYTES = 256 << 20


@dataclass(frozen=True)
class Bank:
    """One memory bank of the card.

    Attributes
    ----------
    index : int
    base : int
        Device address of its first byte.
    size : int
        Bytes.
    """

    index: int
    base: int
    size: int

    @property
    def name(self) -> str:
        """PYNQ's name (``ol.HBM3``)."""
        return f"HBM{self.index}"

    @property
    def link_name(self) -> str:
        """The Vitis linker's name (``HBM[3]``)."""
        return f"HBM[{self.index}]"

    def contains(self, address: int, length: int = 1) -> bool:
        return self.base <= address and address + length <= self.base + self.size


BANKS = tuple(Bank(n, n * HBM_CHANNEL_BYTES, HBM_CHANNEL_BYTES) for n in range(HBM_CHANNELS))

#: The pseudo-channel each port of the first compute unit is linked to.
CONNECTIVITY = MappingProxyType({"m_axi_program": 0, "m_axi_indices": 0, "m_axi_data": 1})
assert set(CONNECTIVITY) == set(PORTS)
#: Channels each compute unit takes.
CHANNELS_PER_CU = len(set(CONNECTIVITY.values()))
assert set(CONNECTIVITY.values()) == set(range(CHANNELS_PER_CU))

#: Compute units one design can hold.
MAX_CUS = HBM_CHANNELS // CHANNELS_PER_CU


def check_cus(cus: int) -> int:
    """``cus`` if a design can hold that many compute units, else :class:`ValueError`."""
    if isinstance(cus, bool) or not isinstance(cus, int) or not 1 <= cus <= MAX_CUS:
        raise ValueError(f"compute units must be 1 to {MAX_CUS} (each takes "
                         f"{CHANNELS_PER_CU} of the {HBM_CHANNELS} HBM channels), not {cus!r}")
    return cus


def instance(cu: int = 0) -> str:
    """The name of compute unit ``cu`` (from 0) in the linked design."""
    check_cus(cu + 1)
    return f"{KERNEL_NAME}_{cu + 1}"


def bank_of(port: str, cu: int = 0) -> Bank:
    """The bank ``port`` of compute unit ``cu`` reaches."""
    check_cus(cu + 1)
    try:
        return BANKS[CONNECTIVITY[port] + CHANNELS_PER_CU * cu]
    except KeyError:
        raise KeyError(f"no port {port!r}; ports: {', '.join(CONNECTIVITY)}") from None
