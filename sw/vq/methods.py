"""The five vector-quantization methods of dense layers (Gong et al. 2014).

A dense weight matrix ``W`` is stored as torch's ``nn.Linear`` stores it,
``[n_out, n_in]``. Five methods compress it, each returning a quantized-layer object
with ``reconstruct()``, its codebook(s) and indices, and its exact storage in bits
*including the codebook* (codebook values and scales count 32 bits each, as in the
paper; indices ``log2(k)`` bits each):

========  =====================================  ==========================================
method    what is stored                         storage in bits
========  =====================================  ==========================================
``bin``   sign of every weight, one scale        ``m n + 32``
``km``    scalar k-means: k values, m n indices  ``m n log2(k) + 32 k``
``pq``    product quantization, segments of s    x-axis: ``m (n/s) log2(k) + 32 k n``;
          along one axis, k codewords each       y-axis: ``n (m/s) log2(k) + 32 k m``
``rq``    residual quantization, t stages of PQ  ``t (m (n/s) log2(k) + 32 k n)``
``svd``   rank-r factors and singular values     ``32 r (m + n + 1)``
========  =====================================  ==========================================

with ``m = n_out`` and ``n = n_in``. The *x-axis* segments are ``s`` consecutive inputs
of one row, ``W[o, j*s:(j+1)*s]`` (the layout of the hardware dense engine); the
*y-axis* segments are ``s`` consecutive outputs of one column, ``W[j*s:(j+1)*s, i]``.
Residual quantization quantizes the rows (default: whole rows, the paper's form), then
the residuals, ``t`` times.

The clustering is faiss's (:mod:`velcro.sw.vq.clustering`). Every layer also offers its
float parameters to fine-tuning as torch tensors (:mod:`velcro.sw.vq.finetune`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..errors import VQError
from . import AXES, METHODS
from .clustering import index_bits, product_codes

FLOAT_BITS = 32


# --------------------------------------------------------------------------- checks

def check_weights(w) -> np.ndarray:
    """A finite, non-empty 2-D float matrix as float32 (raises :class:`VQError` otherwise)."""
    w = np.asarray(w)
    if w.ndim != 2 or w.size == 0:
        raise VQError(f"weights must be a non-empty 2-D matrix, not shape {list(w.shape)}")
    if not np.issubdtype(w.dtype, np.floating):
        raise VQError(f"weights must be floating point, not {w.dtype}")
    bad = ~np.isfinite(w)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise VQError(f"weights hold {int(bad.sum())} non-finite values "
                      f"(first: {w[first]} at {list(first)}); expected finite numbers")
    return np.ascontiguousarray(w, dtype=np.float32)


def _check_segment(segment, length: int, what: str) -> int:
    if isinstance(segment, bool) or not isinstance(segment, (int, np.integer)) or segment < 1:
        raise VQError(f"segment length must be a positive integer, not {segment!r}")
    if length % segment:
        raise VQError(f"segment length {segment} does not divide the {length} {what}")
    return int(segment)


def _check_count(name: str, value, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not lo <= value <= hi:
        raise VQError(f"{name} must be an integer in [{lo}, {hi}] ({what}), not {value!r}")
    return int(value)


def decode(codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``[n, n_seg * s]`` rows from ``codebooks [n_seg or 1, k, s]`` and ``codes [n, n_seg]``."""
    n, n_seg = codes.shape
    books = np.broadcast_to(codebooks, (n_seg,) + codebooks.shape[1:])
    return books[np.arange(n_seg), codes].reshape(n, -1)


def _torch_lookup(n_books: int, codes: np.ndarray):
    """Differentiable :func:`decode`: ``codebooks -> [n, n_seg * s]`` for fixed ``codes``.

    The backward pass of the lookup adds up the gradients of all weights that use a
    codeword: the codeword's gradient is the sum of its members' gradients.
    """
    n, n_seg = codes.shape
    book = torch.arange(n_seg) if n_books == n_seg else torch.zeros(n_seg, dtype=torch.long)
    codes = torch.from_numpy(codes.astype(np.int64))
    return lambda codebooks: codebooks[book, codes].reshape(n, -1)


# --------------------------------------------------------------------------- layers

class QuantizedDense:
    """What every quantized dense layer offers (``shape`` is ``(n_out, n_in)``)."""

    method: ClassVar[str]
    shape: tuple[int, int]

    def reconstruct(self) -> np.ndarray:
        """The float32 ``[n_out, n_in]`` weights the quantized form stands for."""
        raise NotImplementedError

    @property
    def storage_bits(self) -> int:
        """Bits to store the layer's weights, codebooks and scales included."""
        raise NotImplementedError

    @property
    def params(self) -> dict:
        """The method's parameters, as recorded in result files."""
        raise NotImplementedError

    @property
    def float_bits(self) -> int:
        """Bits of the same weights in float32."""
        return FLOAT_BITS * self.shape[0] * self.shape[1]

    @property
    def compression_rate(self) -> float:
        return self.float_bits / self.storage_bits

    def describe(self) -> str:
        return " ".join([self.method] + [f"{k}={v}" for k, v in self.params.items()])

    def trainable(self) -> dict[str, np.ndarray]:
        """The float arrays fine-tuning may change (codebooks, scale or factors); the
        indices and therefore the storage stay as they are."""
        raise NotImplementedError

    def torch_decoder(self):
        """A function of tensors keyed like :meth:`trainable` that returns the weights
        as :meth:`reconstruct` does, differentiably."""
        raise NotImplementedError

    def replaced(self, arrays: dict[str, np.ndarray]) -> QuantizedDense:
        """The same layer with the arrays of :meth:`trainable` replaced."""
        return dataclasses.replace(self, **arrays)


@dataclass(frozen=True, eq=False)
class Binarized(QuantizedDense):
    """``W ~ scale * sign(W)``; ``signs`` is True where ``W >= 0``."""

    signs: np.ndarray
    scale: float
    method: ClassVar[str] = "bin"

    @property
    def shape(self):
        return self.signs.shape

    @property
    def codebooks(self) -> np.ndarray:
        return np.array([[[-self.scale], [self.scale]]], dtype=np.float32)

    @property
    def indices(self) -> np.ndarray:
        return self.signs.astype(np.uint8)

    def reconstruct(self):
        return np.where(self.signs, self.scale, -self.scale).astype(np.float32)

    @property
    def storage_bits(self):
        return self.signs.size + FLOAT_BITS

    @property
    def params(self):
        return {}

    def trainable(self):
        return {"scale": np.array([self.scale], dtype=np.float32)}

    def torch_decoder(self):
        sign = torch.from_numpy(np.where(self.signs, 1.0, -1.0).astype(np.float32))
        return lambda p: sign * p["scale"]

    def replaced(self, arrays):
        return Binarized(self.signs, float(arrays["scale"][0]))


class CodebookDense(QuantizedDense):
    """A layer stored as codewords and their indices (k-means, PQ, RQ): the last two axes
    of ``codebooks`` are ``[k, s]``, ``k`` codewords of ``s`` weights, and each index
    takes ``log2(k)`` bits."""

    codebooks: np.ndarray
    indices: np.ndarray

    @property
    def k(self) -> int:
        return self.codebooks.shape[-2]

    @property
    def segment(self) -> int:
        return self.codebooks.shape[-1]

    @property
    def storage_bits(self):
        return self.indices.size * index_bits(self.k) + FLOAT_BITS * self.codebooks.size

    def trainable(self):
        return {"codebooks": self.codebooks}


@dataclass(frozen=True, eq=False)
class ScalarKMeans(CodebookDense):
    """``W[o, i] = codebook[indices[o, i]]``."""

    codebook: np.ndarray
    indices: np.ndarray
    method: ClassVar[str] = "km"

    @property
    def shape(self):
        return self.indices.shape

    @property
    def codebooks(self) -> np.ndarray:
        """The codebook as ``[1, k, 1]``: one scalar codebook shared by every input."""
        return self.codebook.reshape(1, -1, 1)

    def reconstruct(self):
        return self.codebook[self.indices]

    @property
    def params(self):
        return {"k": self.k}

    def trainable(self):
        return {"codebook": self.codebook}

    def torch_decoder(self):
        codes = torch.from_numpy(self.indices.astype(np.int64))
        return lambda p: p["codebook"][codes]


@dataclass(frozen=True, eq=False)
class ProductQuantized(CodebookDense):
    """Segments of ``s`` weights along one axis, one codebook of ``k`` codewords each.

    x-axis: ``codebooks [n_in/s, k, s]``, ``indices [n_out, n_in/s]``,
    ``W[o, j*s:(j+1)*s] = codebooks[j, indices[o, j]]``.
    y-axis: ``codebooks [n_out/s, k, s]``, ``indices [n_in, n_out/s]``,
    ``W[j*s:(j+1)*s, i] = codebooks[j, indices[i, j]]``.
    """

    codebooks: np.ndarray
    indices: np.ndarray
    axis: str
    method: ClassVar[str] = "pq"

    @property
    def shape(self):
        rows, cols = self.indices.shape[0], self.indices.shape[1] * self.segment
        return (rows, cols) if self.axis == "x" else (cols, rows)

    def reconstruct(self):
        w = decode(self.codebooks, self.indices)
        return w if self.axis == "x" else np.ascontiguousarray(w.T)

    @property
    def params(self):
        return {"k": self.k, "segment": self.segment, "axis": self.axis}

    def torch_decoder(self):
        lookup = _torch_lookup(self.codebooks.shape[0], self.indices)
        if self.axis == "x":
            return lambda p: lookup(p["codebooks"])
        return lambda p: lookup(p["codebooks"]).T


@dataclass(frozen=True, eq=False)
class ResidualQuantized(CodebookDense):
    """``t`` stages of x-axis PQ, each quantizing what the previous stages left.

    ``codebooks [t, n_in/s, k, s]``, ``indices [t, n_out, n_in/s]``; the weights are
    the sum of the stages' decoded rows.
    """

    codebooks: np.ndarray
    indices: np.ndarray
    method: ClassVar[str] = "rq"

    @property
    def stages(self) -> int:
        return self.codebooks.shape[0]

    @property
    def shape(self):
        return self.indices.shape[1], self.indices.shape[2] * self.segment

    def reconstruct(self):
        return sum(decode(c, i) for c, i in zip(self.codebooks, self.indices, strict=True))

    @property
    def params(self):
        return {"k": self.k, "stages": self.stages, "segment": self.segment}

    def torch_decoder(self):
        stages = [_torch_lookup(self.codebooks.shape[1], i) for i in self.indices]
        return lambda p: sum(lookup(c) for lookup, c in zip(stages, p["codebooks"], strict=True))


@dataclass(frozen=True, eq=False)
class LowRank(QuantizedDense):
    """Truncated SVD ``W ~ u @ diag(sigma) @ vt`` (no codebook, no indices)."""

    u: np.ndarray
    sigma: np.ndarray
    vt: np.ndarray
    method: ClassVar[str] = "svd"

    @property
    def rank(self) -> int:
        return len(self.sigma)

    @property
    def shape(self):
        return self.u.shape[0], self.vt.shape[1]

    def reconstruct(self):
        return ((self.u * self.sigma) @ self.vt).astype(np.float32)

    @property
    def storage_bits(self):
        return FLOAT_BITS * (self.u.size + self.sigma.size + self.vt.size)

    @property
    def params(self):
        return {"rank": self.rank}

    def trainable(self):
        return {"u": self.u, "sigma": self.sigma, "vt": self.vt}

    def torch_decoder(self):
        return lambda p: (p["u"] * p["sigma"]) @ p["vt"]


# --------------------------------------------------------------------------- methods

def binarize(w) -> Binarized:
    """Signs with one per-layer scale, ``mean(|W|)`` (the scale closest to W in L2)."""
    w = check_weights(w)
    return Binarized(w >= 0, float(np.abs(w).mean()))


def kmeans(w, k: int, seed: int = 0) -> ScalarKMeans:
    """Scalar k-means: all weights of the layer share ``k`` values."""
    w = check_weights(w)
    index_bits(k)
    if k > w.size:
        raise VQError(f"k={k} exceeds the {w.size} weights of the {_dims(w)} matrix")
    codebooks, codes = product_codes(w.reshape(-1, 1), k, 1, seed)
    return ScalarKMeans(codebooks.ravel(), codes.reshape(w.shape))


def product_quantize(w, k: int, segment: int, axis: str = "x", seed: int = 0) -> ProductQuantized:
    """Product quantization with segments of ``segment`` weights along ``axis``."""
    w = check_weights(w)
    index_bits(k)
    if axis not in AXES:
        raise VQError(f"axis must be 'x' (segments along the inputs) or 'y' (along the "
                      f"outputs), not {axis!r}")
    vectors = w if axis == "x" else np.ascontiguousarray(w.T)
    what = "inputs (x-axis)" if axis == "x" else "outputs (y-axis)"
    _check_segment(segment, vectors.shape[1], f"{what} of the {_dims(w)} matrix")
    if k > len(vectors):
        raise VQError(f"k={k} exceeds the {len(vectors)} sub-vectors per segment of the "
                      f"{_dims(w)} matrix along the {axis}-axis")
    codebooks, codes = product_codes(vectors, k, int(segment), seed)
    return ProductQuantized(codebooks, codes, axis)


def residual_quantize(w, k: int, stages: int, segment: int | None = None,
                      seed: int = 0) -> ResidualQuantized:
    """Residual quantization: ``stages`` rounds of PQ of the rows (whole rows by default)."""
    w = check_weights(w)
    index_bits(k)
    segment = w.shape[1] if segment is None else segment
    _check_segment(segment, w.shape[1], f"inputs of the {_dims(w)} matrix")
    _check_count("stages", stages, 1, 64, "residual quantization rounds")
    if k > w.shape[0]:
        raise VQError(f"k={k} exceeds the {w.shape[0]} rows of the {_dims(w)} matrix")
    residual = w.copy()
    books, codes = [], []
    for stage in range(stages):
        c, i = product_codes(residual, k, int(segment), seed + stage)
        residual -= decode(c, i)
        books.append(c)
        codes.append(i)
    return ResidualQuantized(np.stack(books), np.stack(codes))


def svd(w, rank: int) -> LowRank:
    """Rank-``rank`` truncated singular value decomposition, the paper's baseline."""
    w = check_weights(w)
    _check_count("rank", rank, 1, min(w.shape), f"at most min{w.shape}")
    u, sigma, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    return LowRank(u[:, :rank].astype(np.float32), sigma[:rank].astype(np.float32),
                   vt[:rank].astype(np.float32))


def quantize(w, method: str, *, k: int | None = None, segment: int | None = None,
             axis: str = "x", stages: int | None = None, rank: int | None = None,
             seed: int = 0) -> QuantizedDense:
    """Quantize ``w`` with ``method`` (one of :data:`METHODS`) and the parameters it uses.

    Parameters a method needs and is not given raise :class:`VQError`; parameters it
    does not use are ignored.
    """
    def need(name, value):
        if value is None:
            raise VQError(f"method {method!r} needs --{name}")
        return value

    if method == "bin":
        return binarize(w)
    if method == "km":
        return kmeans(w, need("k", k), seed)
    if method == "pq":
        return product_quantize(w, need("k", k), need("segment", segment), axis, seed)
    if method == "rq":
        return residual_quantize(w, need("k", k), need("stages", stages), segment, seed)
    if method == "svd":
        return svd(w, need("rank", rank))
    raise VQError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def _dims(w: np.ndarray) -> str:
    return "x".join(str(d) for d in w.shape)


def quantize_layers(weights: dict[str, np.ndarray], method: str, params: dict,
                    seed: int = 0) -> dict[str, QuantizedDense]:
    """:func:`quantize` every matrix of ``weights`` with the same method and parameters.

    An error names the layer it comes from.
    """
    out = {}
    for name, w in weights.items():
        try:
            out[name] = quantize(w, method, seed=seed, **params)
        except VQError as e:
            raise VQError(f"layer {name}: {e}") from None
    return out
