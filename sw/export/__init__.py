"""Export: a float model and its compression, as one integer deployment package.

Takes a float model, a task (its preprocessing images calibrate the activation
scales), a VELCRO plan and vector-quantized dense layers; gives a
:class:`~velcro.sw.export.package.Package`, the ``.velcro`` file that the golden
model, the RTL simulation and the card all run. :func:`export` is the one call::

    from velcro.sw.export import export
    package = export(model, task, thresholds=[20, 30, 30, 20])

``pipeline``
    :func:`export`: plan, codebook layers and quantization in one call.
``quantize``
    Int8 post-training quantization and requantization factors.
``codebooks``
    The int8 codebook form of a vector-quantized dense layer, as the dense engine runs it.
``package``
    The package file: strict reading, atomic writing (NumPy only).
``schema``
    The package schema: the integer network, its manifest and their checks (NumPy only).
``bits``
    Bit packing of skip masks and codebook indices (NumPy only).

``from velcro.sw.export import export`` loads torch; ``velcro.sw.export.package``,
``schema`` and ``bits`` alone do not, so the golden model and the runtime read packages
without it.
"""

__all__ = ["export"]


def __getattr__(name):
    # Lazy, so that importing velcro.sw.export.package does not load torch.
    if name == "export":
        from .pipeline import export

        return export
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
