"""Graph partitioning: which layers of a package the kernel runs, and which the host runs.

The network is a chain of layers. A layer goes to the kernel when the kernel has its
op and it fits the hardware configuration:

* ``conv3x3``: channels, map size within the conv array's limits;
* ``maxpool2x2``: a map the conv array holds;
* ``flatten``: only between a map on chip and a dense layer on chip (elsewhere the
  host reshapes), and only if the flattened vector fits the activation buffer;
* ``dense``, ``dense_codebook``: within the dense engine's limits (at most 8-bit
  indices, segments of at most ``max_s``).

Consecutive kernel layers form a *device* stage (one kernel call per batch, split
when a stage would exceed ``max_program`` descriptors); every other layer is a
*host* stage run with the golden model's integer rules
(:mod:`velcro.sw.runtime.host`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from velcro.hw.conv.config import ConvConfigError
from velcro.hw.kernel.config import KernelConfig

from ..export.package import Layer, Package
from .program import conv_layer, dense_layer

__all__ = ["Stage", "partition", "supported"]

_DENSE = ("dense", "dense_codebook")
# Descriptors a stage needs besides one per layer: input, output and END.
_OVERHEAD = 3


@dataclass(frozen=True)
class Stage:
    """Consecutive layers run on the kernel (``device``) or on the host."""

    device: bool
    layers: tuple[Layer, ...]

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]


def supported(layer: Layer, config: KernelConfig) -> str | None:
    """``None`` if the kernel can run ``layer`` (flatten aside), else the reason."""
    conv = config.conv
    if layer.op == "conv3x3":
        try:
            conv_layer(layer).check(conv)
        except ConvConfigError as e:
            return str(e)
        return None
    if layer.op == "maxpool2x2":
        c, h, w = layer.in_shape
        if c > conv.max_channels or h > conv.max_height or w > conv.max_width:
            return (f"a {c}x{h}x{w} map exceeds the conv array's {conv.max_channels}x"
                    f"{conv.max_height}x{conv.max_width}")
        return None
    if layer.op in _DENSE:
        if layer.op == "dense_codebook" and layer.attrs["bits"] > config.dense.index_bits:
            return f"{layer.attrs['bits']}-bit indices exceed the dense engine's " \
                   f"{config.dense.index_bits}"
        try:
            dense_layer(layer).check(config.dense)
        except ValueError as e:
            return str(e)
        if layer.out_shape[0] > config.vector_bytes and layer.attrs["output"] == "int8":
            return "its output exceeds the activation buffer"
        return None
    if layer.op == "flatten":
        return None
    return f"the kernel has no {layer.op}"


def partition(package: Package, config: KernelConfig) -> list[Stage]:
    """Split the package's layers into device and host stages, in order."""
    layers = package.layers
    on_device = [supported(layer, config) is None for layer in layers]
    # Flatten runs on chip only from a map on chip into a dense layer on chip.
    for i, layer in enumerate(layers):
        if layer.op == "flatten":
            fits = math.prod(layer.in_shape) <= config.vector_bytes
            on_device[i] = (fits and 0 < i < len(layers) - 1 and on_device[i - 1]
                            and on_device[i + 1] and layers[i + 1].op in _DENSE)
    limit = config.max_program - _OVERHEAD
    stages: list[Stage] = []
    current: list[Layer] = []

    def close():
        if current:
            stages.append(Stage(True, tuple(current)))
            current.clear()

    for layer, device in zip(layers, on_device, strict=True):
        if device and layer.op == "flatten":
            # Its dense layer must join the same stage, behind a map already on chip.
            device = bool(current) and len(current) + 2 <= limit
        elif device and len(current) + 1 > limit:
            close()
        if device:
            current.append(layer)
        else:
            close()
            stages.append(Stage(False, (layer,)))
    close()
    return stages
