"""The devices behind the host driver, each behind the same PYNQ-like surface.

``golden``
    The PYNQ surface over a NumPy model of the kernel that reads the descriptors
    and memory images the card would.
``kernel_model``
    That model: the kernel's behaviour on device memory, with the cost model's
    counters.
``alveo``
    The Alveo U280 through XRT's ``pyxrt`` or PYNQ 3.0.1.

The RTL simulation backend is :mod:`velcro.sim.backend`.
"""
