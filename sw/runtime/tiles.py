"""Tiles: a 3x3 convolution larger than the conv array's buffers, as kernel calls on parts.

A convolution the conv array computes (:func:`~velcro.sw.runtime.program.conv_form`)
whose input map is taller or wider than the array's ``max_height`` x ``max_width``,
or which has more output channels than ``max_channels``, still runs on the kernel, as
one kernel call per *tile*: a window of the input map (all its input channels) from
which the call computes a range of output rows, columns and channels. A layer with
more *input* channels than ``max_channels`` has no tiles (its sums would have to
leave the array before requantization) and runs on the host.

Output channels go in runs of at most ``max_channels``. Output rows ``[o0, o1)`` of a
stride-``s`` layer read input rows ``s * o0 - 1 .. s * (o1 - 1) + 1``; the tile's
input starts ``s`` rows before ``s * o0`` (row 0 at the top edge) so that its own
output rows stay aligned with the layer's, and ends one row after the last window
centre (the last row at the bottom edge). So the window of every output the tile keeps
lies inside the tile's input, or crosses the map's edge, where the kernel's zero
padding is the layer's. A tile of ``max_height`` input rows keeps ``(max_height - 2)
// s`` output rows: 62 of 64 at stride 1, 31 at stride 2. Columns likewise.

The outputs of a tile that the layer does not keep (its first row or column, behind
the halo) are computed by nobody: the tile's VELCRO mask marks them skipped, with mean
0, so their blocks cost what a skipped block costs. Every kept output is computed by
the same integer rule as in one call, so the joined tiles equal the golden model bit
for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..export.bits import pack_mask, unpack_mask
from ..export.package import Layer

__all__ = ["Tile", "span", "tile_layer", "tiles"]


def span(size: int, limit: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis of ``size`` input positions for a buffer of ``limit``:
    ``(i0, i1, o0, o1)`` per tile, input ``[i0, i1)`` and kept outputs ``[o0, o1)``.

    One tile, the whole axis, when it fits; else ``ceil(out / keep)`` tiles of nearly
    equal kept outputs, ``keep = (limit - 2) // stride``.
    """
    out = (size - 1) // stride + 1
    if size <= limit:
        return [(0, size, 0, out)]
    keep = (limit - 2) // stride
    if keep < 1:
        raise ValueError(f"a buffer of {limit} cannot hold a stride-{stride} tile")
    count = -(-out // keep)
    edges = [round(n * out / count) for n in range(count + 1)]
    return [(max(0, stride * (o0 - 1)), min(size, stride * (o1 - 1) + 2), o0, o1)
            for o0, o1 in zip(edges, edges[1:], strict=False)]


@dataclass(frozen=True)
class Tile:
    """One kernel call of a tiled layer.

    ``rows``/``cols`` are the input window ``(i0, i1)``; ``keep_rows``/``keep_cols``
    the kept outputs in the layer's coordinates ``(o0, o1)``, which are outputs
    ``o0 - i0 / stride`` on of the tile's own; ``channels`` the output channels
    ``(c0, c1)``.
    """

    channels: tuple[int, int]
    rows: tuple[int, int]
    cols: tuple[int, int]
    keep_rows: tuple[int, int]
    keep_cols: tuple[int, int]
    stride: int

    @property
    def kept(self) -> tuple[slice, slice]:
        """The kept outputs within the tile's own output map (rows, columns)."""
        (i0, _), (j0, _) = self.rows, self.cols
        (o0, o1), (p0, p1) = self.keep_rows, self.keep_cols
        s = self.stride
        return slice(o0 - i0 // s, o1 - i0 // s), slice(p0 - j0 // s, p1 - j0 // s)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        (c0, c1), (i0, i1), (j0, j1) = self.channels, self.rows, self.cols
        s = self.stride
        return c1 - c0, (i1 - i0 - 1) // s + 1, (j1 - j0 - 1) // s + 1


def _stride(layer: Layer) -> int:
    stride = layer.attrs["stride"]
    return int(stride if layer.op == "conv3x3" else stride[0])


def tiles(layer: Layer, conv) -> list[Tile] | None:
    """The tiles of a convolution the conv array computes, for conv array configuration
    ``conv`` (:class:`~velcro.hw.conv.config.ConvArrayConfig`); ``None`` if it has more
    input channels than the array holds."""
    c_in, h, w = layer.in_shape
    if c_in > conv.max_channels:
        return None
    c_out = layer.out_shape[0]
    s = _stride(layer)
    step = conv.max_channels
    return [Tile((c0, min(c_out, c0 + step)), (i0, i1), (j0, j1), (o0, o1), (p0, p1), s)
            for c0 in range(0, c_out, step)
            for i0, i1, o0, o1 in span(h, conv.max_height, s)
            for j0, j1, p0, p1 in span(w, conv.max_width, s)]


def tile_layer(layer: Layer, tile: Tile) -> Layer:
    """The layer one kernel call of ``tile`` runs: the layer's channels of the tile, its
    input window, its mask and means at the kept outputs, every other output skipped."""
    a = layer.arrays
    c0, c1 = tile.channels
    (o0, o1), (p0, p1) = tile.keep_rows, tile.keep_cols
    rows, cols = tile.kept
    shape = tile.out_shape
    mask = np.ones(shape, bool)
    mean = np.zeros(shape, np.int8)
    if "mask" in a:
        mask[:, rows, cols] = unpack_mask(a["mask"], layer.out_shape)[c0:c1, o0:o1, p0:p1]
        mean[:, rows, cols] = a["mean"][c0:c1, o0:o1, p0:p1]
    else:
        mask[:, rows, cols] = False
    arrays = {role: a[role][c0:c1] for role in ("weight", "bias", "mult", "shift")}
    arrays.update(mask=pack_mask(mask), mean=mean)
    (i0, i1), (j0, j1) = tile.rows, tile.cols
    attrs = dict(layer.attrs, skipped=int(mask.sum()))
    return Layer(layer.name, layer.op, (layer.in_shape[0], i1 - i0, j1 - j0), shape,
                 layer.out_scale, attrs, arrays)
