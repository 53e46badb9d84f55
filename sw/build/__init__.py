"""The bitstream flow, in one place.

Takes the kernel's configuration; gives its Verilog, ``kernel.xml``, the Vivado
packaging script, the ``v++`` link configuration, and where the AMD tools are
installed the ``.xo`` and the U280 ``.xclbin``; without them, a Yosys resource
estimate against the U280's capacity.

``kernel_xml``
    The Vitis kernel description, from the register map.
``tcl``
    Tcl scripts built from calls, never by pasting strings.
``vitis``
    ``package_xo.tcl`` and ``link.cfg``.
``bitstream``
    The build folder and the ``vivado`` and ``v++`` runs.
``yosys``
    Yosys ``synth_xilinx`` of an engine, and its cell counts.
``utilization``
    The kernel's share of the U280.
"""
