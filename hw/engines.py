"""The engines of the accelerator at the shipped configuration, listed once.

``velcro build verilog`` writes the Verilog of every engine listed in
:data:`ENGINES`, and ``velcro bench hw`` estimates the resources of each; adding an
engine to the flow means adding one :class:`Engine` here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from amaranth.lib import wiring

__all__ = ["ENGINES", "Engine", "engine"]


@dataclass(frozen=True)
class Engine:
    """One engine: its Verilog module name and how to elaborate it.

    Attributes
    ----------
    name : str
        Verilog module name (and file name ``<name>.v``).
    make : callable
        Returns the Amaranth component at the shipped configuration.
    summary : str
        One line for listings.
    """

    name: str
    make: Callable[[], wiring.Component]
    summary: str


def _conv_array():
    from .conv.array import ConvArray
    from .conv.config import SHIPPED

    return ConvArray(SHIPPED)


def _dense_engine():
    from .dense.config import SHIPPED
    from .dense.engine import DenseEngine

    return DenseEngine(SHIPPED)


def _kernel():
    from .kernel.config import SHIPPED
    from .kernel.top import VelcroKernel

    return VelcroKernel(SHIPPED)


ENGINES: tuple[Engine, ...] = (
    Engine("conv_array", _conv_array,
           "16-lane conv3x3 + requantization + ReLU array with VELCRO skipping, 64x64 maps"),
    Engine("dense_engine", _dense_engine,
           "codebook-lookup (PQ/k-means) and int8 dense engine, 16 lookups per cycle "
           "from a 128-bit index stream, k <= 256, s <= 8"),
    Engine("velcro_kernel", _kernel,
           "the Vitis RTL kernel: both engines, descriptor sequencer, AXI4-Lite control "
           "and three 512-bit AXI4 managers (one Verilog file, top module velcro_kernel)"),
)


def engine(name: str) -> Engine:
    """The engine called ``name``; :class:`KeyError` naming the known ones otherwise."""
    for candidate in ENGINES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no engine {name!r}; known: {', '.join(e.name for e in ENGINES)}")
