"""The int8 codebook form of a vector-quantized dense layer, as the dense engine runs it.

Scalar k-means and x-axis product quantization (:mod:`velcro.sw.vq.methods`) give
codebooks whose segments run along a layer's inputs, the layout of the hardware dense
engine. :func:`deploy` turns such a layer into int8 codebooks with one scale and its
indices (:class:`DeployedDense`), which the quantizer writes as a ``dense_codebook``
layer of the package (:mod:`velcro.sw.export.package`, indices packed by
:mod:`velcro.sw.export.bits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import VQError
from ..vq.clustering import index_bits
from ..vq.methods import ProductQuantized, QuantizedDense, ScalarKMeans, decode
from .bits import index_dtype


@dataclass
class DeployedDense:
    """Int8 codebook form of a dense layer for the hardware dense engine.

    ``W[o, j*s:(j+1)*s] = scale * codebooks[j][indices[o, j]]`` (the package's
    ``dense_codebook`` op); with ``codebooks [1, k, s]`` one codebook serves every
    segment (scalar k-means is ``s = 1``). One scale per layer keeps every lookup-table
    sum in one scale.
    """

    codebooks: np.ndarray
    scale: float
    indices: np.ndarray
    bits: int

    def __post_init__(self):
        n_seg = self.indices.shape[1]
        if self.codebooks.dtype != np.int8 or self.codebooks.ndim != 3 \
                or self.codebooks.shape[0] not in (1, n_seg) \
                or self.codebooks.shape[1] != 1 << self.bits:
            raise VQError(f"codebooks must be int8 [{n_seg} or 1, {1 << self.bits}, s], not "
                          f"{self.codebooks.dtype} {list(self.codebooks.shape)}")

    @property
    def segment(self) -> int:
        return self.codebooks.shape[2]

    def weight(self) -> np.ndarray:
        """The int8 ``[n_out, n_in]`` weights the engine computes with."""
        return decode(self.codebooks, self.indices)


def deploy(q: QuantizedDense) -> DeployedDense:
    """Int8 codebooks, one scale and the indices of a scalar k-means or x-axis PQ layer.

    The scale maps the largest codebook magnitude to 127 (symmetric, zero point 0).
    Other methods have no input-axis codebook the engine can look up: y-axis PQ
    segments run along the outputs, residual quantization needs several lookups per
    weight, and binarized and SVD layers run as plain int8 dense layers.
    """
    if isinstance(q, ScalarKMeans) or (isinstance(q, ProductQuantized) and q.axis == "x"):
        codebooks = q.codebooks
    else:
        raise VQError(f"the dense engine runs scalar k-means and x-axis PQ layers, not "
                      f"{q.describe()}; deploy it as a plain int8 dense layer")
    peak = float(np.abs(codebooks).max())
    scale = peak / 127 if peak > 0 else 1.0
    books = np.clip(np.rint(codebooks / scale), -127, 127).astype(np.int8)
    bits = index_bits(q.k)
    return DeployedDense(books, scale, q.indices.astype(index_dtype(bits)), bits)
