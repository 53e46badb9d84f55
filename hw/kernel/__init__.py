"""``velcro_kernel``, the Vitis RTL kernel: both engines behind a descriptor sequencer.

``config``
    The kernel's configuration and record sizes.
``cost``
    The per-descriptor cycle model.
``descriptor``
    The descriptor format the host compiles and the sequencer decodes.
``regmap``, ``csr``
    The ``s_axi_control`` register map and the register bank.
``connectivity``
    Where the kernel's ports reach on the card.
``top``
    The kernel; ``pool``, ``flatten``, ``records`` and ``buffers`` are its units.
``sequencer``
    The descriptor sequencer: runs the program, drives every unit, counts.
"""
