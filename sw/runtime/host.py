"""Layers the kernel does not run, executed on the host with the golden model's rules.

Every function here is a composition of :mod:`velcro.sw.golden`'s public integer
operations, so a host stage gives exactly what the golden model gives for the same
layer. Tensors are batches: maps ``[N, C, H, W]`` int8, vectors ``[N, n]`` int8,
logits ``[N, n]`` int32.
"""

from __future__ import annotations

import numpy as np

from .. import golden
from ..export.bits import unpack_indices, unpack_mask
from ..export.package import Layer

__all__ = ["run_layer"]

#: Images per golden convolution (bounds the memory of its unrolled windows).
CHUNK = 64


def _conv(layer: Layer, x: np.ndarray) -> np.ndarray:
    a = layer.arrays
    mask = unpack_mask(a["mask"], layer.out_shape)
    outs = [golden.conv3x3(x[i:i + CHUNK], a["weight"], a["bias"], a["mult"], a["shift"],
                           stride=layer.attrs["stride"], mask=mask, mean=a["mean"])
            for i in range(0, len(x), CHUNK)]
    return np.concatenate(outs) if outs else np.zeros((0, *layer.out_shape), np.int8)


def _dense(layer: Layer, x: np.ndarray) -> np.ndarray:
    a = layer.arrays
    if layer.op == "dense":
        acc = golden.dense_acc(x, a["weight"], a["bias"])
    else:
        bits, s = layer.attrs["bits"], layer.attrs["segment"]
        n_seg = layer.in_shape[0] // s
        indices = unpack_indices(a["indices"], bits, layer.out_shape[0], n_seg)
        acc = golden.dense_codebook_acc(x, a["codebooks"], indices, a["bias"])
    if layer.attrs["output"] == "int32":
        return acc.astype(np.int32)
    return golden.requantize(acc, a["mult"], a["shift"], layer.attrs["relu"], channel_axis=1)


def run_layer(layer: Layer, x: np.ndarray) -> np.ndarray:
    """The output batch of ``layer`` on the input batch ``x``."""
    if layer.op == "conv3x3":
        return _conv(layer, x)
    if layer.op == "maxpool2x2":
        return golden.maxpool2x2(x)
    if layer.op == "flatten":
        return x.reshape(len(x), -1)
    if layer.op in ("dense", "dense_codebook"):
        return _dense(layer, x)
    raise ValueError(f"no host rule for op {layer.op!r}")
