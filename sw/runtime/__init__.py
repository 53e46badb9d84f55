"""Host runtime of the VELCRO accelerator: one driver for the card, RTL simulation and golden.

See :mod:`velcro.sw.runtime.accelerator` for the entry point.
"""

from .accelerator import DEVICES, Accelerator, parse_device
from .driver import DeviceTimeout, KernelError

__all__ = ["DEVICES", "Accelerator", "DeviceTimeout", "KernelError", "parse_device"]
