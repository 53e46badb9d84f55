"""AXI4 and AXI4-Lite: signatures with Vitis's flat port names, and the kernel's DMAs.

``bus``
    Signatures and the helpers that connect and tie off flat ports.
``read``, ``write``
    The read DMA (channels of bursts) and the write DMA.
"""
