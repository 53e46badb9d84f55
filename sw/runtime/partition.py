"""Graph partitioning: which layers of a package the kernel runs, and which the host runs.

The network is a graph of layers in execution order. A layer goes to the kernel when
the kernel has its op and it fits the hardware configuration:

* ``conv3x3``, and ``conv`` layers that are 3x3 with padding 1, stride 1 or 2, one
  group, ReLU or no activation: channels, map size within the conv array's limits;
* ``maxpool2x2``: a map the conv array holds (it pools in place, signed);
* ``flatten``: only between a map on chip and a dense layer on chip (elsewhere the
  host reshapes), and only if the flattened vector fits the activation buffer;
* ``dense``, ``dense_codebook``: within the dense engine's limits (at most 8-bit
  indices, segments of at most ``max_s``).

A *device* stage is a chain of kernel layers, each reading only the one before,
whose intermediate outputs nothing else reads (one kernel call per batch, split
when a stage would exceed ``max_program`` descriptors). A convolution the conv array
computes but whose map or output channels exceed its buffers is a device stage of its
own, run in tiles (:mod:`velcro.sw.runtime.tiles`, one kernel call per tile); one
with more input channels than the array holds runs on the host. Every other layer
is a *host* stage run with the golden model's integer rules
(:mod:`velcro.sw.runtime.host`). A stage reads the value its first layer reads and
gives its last layer's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from velcro.hw.conv.config import ConvConfigError
from velcro.hw.kernel.config import SHIPPED, KernelConfig

from ..export.package import Layer, Package
from ..export.schema import layer_inputs
from .program import compile_segment, conv_form, conv_layer, dense_layer
from .tiles import Tile, tile_layer, tiles

__all__ = ["Stage", "devices", "kernel_mac_fraction", "partition", "partition_report",
           "placement", "round_trip_report", "round_trips", "supported"]

_DENSE = ("dense", "dense_codebook")
# Descriptors a stage needs besides one per layer: input, output and END.
_OVERHEAD = 3


@dataclass(frozen=True)
class Stage:
    """Consecutive layers run on the kernel (``device``) or on the host; a device stage
    with ``tiles`` is one convolution, run a tile per kernel call."""

    device: bool
    layers: tuple[Layer, ...]
    inputs: tuple[str, ...] = ()
    tiles: tuple[Tile, ...] = ()

    def segments(self) -> list[list[Layer]]:
        """The layers of each kernel call of a device stage: one call, or one per tile."""
        if not self.tiles:
            return [list(self.layers)]
        (layer,) = self.layers
        return [[tile_layer(layer, tile)] for tile in self.tiles]

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def output(self) -> str:
        return self.layers[-1].name


def supported(layer: Layer, config: KernelConfig) -> str | None:
    """``None`` if the kernel can run ``layer`` (flatten aside), else the reason."""
    conv = config.conv
    if layer.op in ("conv3x3", "conv"):
        why = conv_form(layer)
        if why is not None:
            return why
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
    inputs = layer_inputs(layers)
    readers: dict[str, int] = {}
    for reads in inputs:
        for name in reads:
            readers[name] = readers.get(name, 0) + 1
    on_device = [supported(layer, config) is None for layer in layers]

    def chained(i: int) -> bool:
        """Layer ``i`` reads only layer ``i - 1``, which nothing else reads."""
        return i > 0 and inputs[i] == (layers[i - 1].name,) and readers[layers[i - 1].name] == 1

    # Flatten runs on chip only from a map on chip into a dense layer on chip.
    for i, layer in enumerate(layers):
        if layer.op == "flatten":
            fits = math.prod(layer.in_shape) <= config.vector_bytes
            on_device[i] = (fits and 0 < i < len(layers) - 1 and on_device[i - 1]
                            and on_device[i + 1] and layers[i + 1].op in _DENSE
                            and chained(i) and chained(i + 1))
    limit = config.max_program - _OVERHEAD
    stages: list[Stage] = []
    current: list[Layer] = []
    current_inputs: tuple[str, ...] = ()

    def close():
        if current:
            stages.append(Stage(True, tuple(current), current_inputs))
            current.clear()

    for i, (layer, device) in enumerate(zip(layers, on_device, strict=True)):
        if current and not chained(i):
            close()
        if device and layer.op == "flatten":
            # Its dense layer must join the same stage, behind a map already on chip.
            device = bool(current) and len(current) + 2 <= limit
        elif device and len(current) + 1 > limit:
            close()
        if device:
            if not current:
                current_inputs = inputs[i]
            current.append(layer)
        else:
            close()
            parts = _tiles(layer, config)
            stages.append(Stage(bool(parts), (layer,), inputs[i], tuple(parts or ())))
    close()
    return stages


def _tiles(layer: Layer, config: KernelConfig) -> list[Tile] | None:
    """The tiles of a convolution the conv array computes only in parts, else ``None``."""
    if layer.op not in ("conv3x3", "conv") or conv_form(layer) is not None:
        return None
    return tiles(layer, config.conv)


def devices(stages: list[Stage]) -> dict[str, str]:
    """``layer name -> "kernel" | "host"``: where each layer runs."""
    return {layer.name: "kernel" if stage.device else "host"
            for stage in stages for layer in stage.layers}


def kernel_mac_fraction(stages: list[Stage], macs: dict[str, int]) -> float:
    """The share of a package's MACs (``layer name -> MACs``, skipped ones included) in
    layers the kernel runs."""
    where = devices(stages)
    total = sum(macs.values())
    on_kernel = sum(m for name, m in macs.items() if where[name] == "kernel")
    return on_kernel / total if total else 0.0


def placement(device, package, counts) -> tuple[dict[str, str], float, dict[str, int]]:
    """Where each layer of ``package`` runs on ``device`` (``kernel`` or ``host``), the
    kernel's share of the MACs in ``counts`` (the device's per-layer
    :class:`~velcro.sw.golden.LayerMacs`, skipped ones included) and the kernel calls of
    each layer per batch (0 on the host, 1 on the kernel, its tiles in tiles)."""
    stages = (getattr(device, "stages", None)
              or partition(package, getattr(device, "config", None) or SHIPPED))
    macs = {c.name: c.macs + c.skipped for c in counts}
    tiled = {layer.name: len(stage.tiles) or int(stage.device)
             for stage in stages for layer in stage.layers}
    return devices(stages), kernel_mac_fraction(stages, macs), tiled


def round_trips(device, package) -> dict:
    """What crossing between host and card costs a batch of ``package`` on ``device``:
    kernel calls (one per device stage, one per tile of a tiled one), host stages, the
    bytes one image moves to and from the card's memory (each call's input and output
    buffers) and, where the device measures them (``last_seconds``), the seconds of its
    last run in kernel calls and in host stages."""
    config = getattr(device, "config", None) or SHIPPED
    stages = getattr(device, "stages", None) or partition(package, config)
    calls = [compile_segment(layers, config) for stage in stages if stage.device
             for layers in stage.segments()]
    record = {"kernel_calls": len(calls),
              "host_stages": sum(not stage.device for stage in stages),
              "bytes_per_image": sum(p.input_stride + p.output_stride for p in calls)}
    seconds = getattr(device, "last_seconds", None)
    if seconds is not None:
        record.update(kernel_seconds=round(seconds["kernel"], 4),
                      host_seconds=round(seconds["host"], 4))
    return record


def round_trip_report(trips: dict) -> str:
    """:func:`round_trips` as one line."""
    timing = (f"; this run: {trips['kernel_seconds']:.3f} s in kernel calls, "
              f"{trips['host_seconds']:.3f} s in host stages" if "host_seconds" in trips else "")
    return (f"round trips: {trips['kernel_calls']} kernel call(s) and {trips['host_stages']} "
            f"host stage(s) per batch, {trips['bytes_per_image']:,} bytes per image to and "
            f"from the card's memory{timing}")


def partition_report(package, where: dict[str, str], fraction: float,
                     tiled: dict[str, int] | None = None) -> str:
    """The partition as people read it: runs of layers on the kernel or the host, and
    the layers run in tiles (``tiled``: layer name -> kernel calls, as
    :func:`placement` gives)."""
    runs: list[tuple[str, list[str]]] = []
    for layer in package.layers:
        if runs and runs[-1][0] == where[layer.name]:
            runs[-1][1].append(layer.name)
        else:
            runs.append((where[layer.name], [layer.name]))
    parts = [f"{kind} [{names[0]}{' .. ' + names[-1] if len(names) > 1 else ''}"
             f"{f' ({len(names)} layers)' if len(names) > 2 else ''}]" for kind, names in runs]
    on_kernel = sum(where[layer.name] == "kernel" for layer in package.layers)
    tiles_note = "".join(f"; {name} in {count} tiles" for name, count in (tiled or {}).items()
                         if count > 1)
    return (f"partition: {on_kernel} of {len(package.layers)} layers on the kernel, "
            f"{fraction:.1%} of MACs: " + ", ".join(parts) + tiles_note)
