"""The conv array: 16 lanes of 3x3 convolution, requantization and ReLU, with VELCRO skips.

``config``
    The array's geometry and a layer's parameters, checked.
``cost``
    The cycle model the RTL is measured against.
``format``
    Record layouts of its streams, and the host-side packing.
``array``
    The array; ``lane``, ``scan`` (the skip scanner) and ``walk`` (the plane walker)
    are its units.
"""
