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
from ..export.ops import clamp_of
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


def _general_conv(layer: Layer, x: np.ndarray) -> np.ndarray:
    a, attrs = layer.arrays, layer.attrs
    mask = unpack_mask(a["mask"], layer.out_shape) if "mask" in a else None
    lo, hi = clamp_of(layer.op, attrs)
    outs = [golden.conv(x[i:i + CHUNK], a["weight"], a["bias"], a["mult"], a["shift"],
                        attrs["stride"], attrs["padding"], attrs["groups"], lo, hi, mask,
                        a.get("mean"))
            for i in range(0, len(x), CHUNK)]
    return np.concatenate(outs) if outs else np.zeros((0, *layer.out_shape), np.int8)


def _add(layer: Layer, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    arrays = layer.arrays
    mask = unpack_mask(arrays["mask"], layer.out_shape) if "mask" in arrays else None
    lo, hi = clamp_of(layer.op, layer.attrs)
    return golden.add(a, b, arrays["mult"], int(arrays["shift"][0]), lo, hi, mask,
                      arrays.get("mean"))


def _pool(layer: Layer, x: np.ndarray) -> np.ndarray:
    a = layer.attrs
    if layer.op == "maxpool":
        return golden.maxpool(x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"])
    return golden.avgpool(x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"],
                          a["count_include_pad"])


def run_layer(layer: Layer, *xs: np.ndarray) -> np.ndarray:
    """The output batch of ``layer`` on its input batches ``xs`` (one per input)."""
    if layer.op == "add":
        return _add(layer, *xs)
    if layer.op == "concat":
        return golden.concat(list(xs), layer.arrays["mult"], layer.arrays["shift"])
    (x,) = xs
    if layer.op == "conv":
        return _general_conv(layer, x)
    if layer.op in ("maxpool", "avgpool"):
        return _pool(layer, x)
    if layer.op == "conv3x3":
        return _conv(layer, x)
    if layer.op == "maxpool2x2":
        return golden.maxpool2x2(x)
    if layer.op == "flatten":
        return x.reshape(len(x), -1)
    if layer.op in ("dense", "dense_codebook"):
        return _dense(layer, x)
    raise ValueError(f"no host rule for op {layer.op!r}")
