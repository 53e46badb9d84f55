"""The dense engine: codebook lookups (product quantization, k-means) and int8 dense layers.

``config``
    The engine's geometry and a layer's parameters, checked.
``cost``
    The cycle model the RTL is measured against, and the index-bandwidth bound.
``format``
    Stream beats of a layer, and the host-side packing.
``engine``
    The engine; ``lut`` (the lookup-table builder), ``unpack`` (the index unpacker)
    and ``requant`` are its units.
"""
