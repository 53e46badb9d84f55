"""Host runtime of the VELCRO accelerator: one driver for the card, RTL simulation and golden.

Takes a deployment package and uint8 images; gives int32 logits computed on a device
(the ``golden`` model of the kernel, the RTL in simulation or an Alveo card), with the
kernel's counters. :class:`Accelerator` is the entry point::

    device = Accelerator.open("golden")
    device.load(package)
    logits = device.run(images)

``accelerator``
    :class:`Accelerator`: open a device, load a package, run images.
``partition``
    Split a package into stages the kernel runs and stages the host runs.
``program``
    Compile a device stage into descriptors and memory images.
``driver``
    The host driver of the kernel, over a PYNQ-like platform.
``counters``
    The kernel's counters, summed over runs.
``host``
    The layers that run on the host, with the golden rules.
``backends``
    The ``golden`` and ``alveo`` platforms.
"""

from .accelerator import DEVICES, Accelerator, parse_device
from .driver import DeviceTimeout, KernelError

__all__ = ["DEVICES", "Accelerator", "DeviceTimeout", "KernelError", "parse_device"]
