"""Vector quantization of dense layers (Gong et al. 2014) and its deployment form.

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

Clustering is faiss's (``ProductQuantizer``, ``Kmeans``), seeded and run on one thread
so results do not depend on the machine. A weight matrix is small next to the data
faiss is tuned for, so every vector takes part in training (no subsampling).

The second half of the module applies the methods to the dense layers of a trained
``nn.Sequential`` model and measures accuracy (:class:`DenseHead`, :func:`sweep`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import faiss
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .errors import ModelError, VelcroError

FLOAT_BITS = 32
K_MAX = 65536
METHODS = ("bin", "km", "pq", "rq", "svd")
AXES = ("x", "y")
KMEANS_ITERATIONS = 25


class VQError(VelcroError):
    """Bad vector-quantization input: a weight matrix or method parameter out of range."""


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


def index_bits(k) -> int:
    """``log2(k)`` for a number of codewords ``k``: a power of two in ``[2, 65536]``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= K_MAX \
            or k & (k - 1):
        raise VQError(f"k must be a power of two in [2, {K_MAX}], not {k!r}")
    return int(k).bit_length() - 1


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


def _index_dtype(bits: int) -> type:
    return np.uint8 if bits <= 8 else np.uint16


# --------------------------------------------------------------------------- faiss

@contextmanager
def _faiss_single_thread():
    """One faiss thread, and faiss's BLAS distance kernel for every batch size.

    On the tiny sub-problems of PQ (thousands of 1- to 16-dimensional vectors) the
    OpenMP start-up of each call costs more than the work: on two cores PQ training
    of a 4096x4096 matrix takes ~95 s with two threads and ~8 s with one. faiss only
    uses its BLAS kernel from 128000 queries on, and the per-pair kernel it uses below
    that is ten times slower for such low dimensions. Both settings are global, so
    they are restored afterwards.
    """
    threads = faiss.omp_get_max_threads()
    threshold = faiss.cvar.distance_compute_blas_threshold
    faiss.omp_set_num_threads(1)
    faiss.cvar.distance_compute_blas_threshold = 20
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)
        faiss.cvar.distance_compute_blas_threshold = threshold


def _clustering_parameters(cp, n: int, k: int, seed: int) -> None:
    cp.niter = KMEANS_ITERATIONS
    cp.seed = int(seed)
    cp.min_points_per_centroid = 1              # small layers are legitimate: no warning
    cp.max_points_per_centroid = -(-n // k)     # train on every vector
    cp.verbose = False


def product_codes(vectors: np.ndarray, k: int, segment: int,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train faiss PQ on ``vectors [n, d]`` with segments of ``segment``; return the
    codebooks ``float32 [d/segment, k, segment]`` and codes ``[n, d/segment]``."""
    n, d = vectors.shape
    bits = index_bits(k)
    n_seg = d // segment
    pq = faiss.ProductQuantizer(d, n_seg, bits)
    _clustering_parameters(pq.cp, n, k, seed)
    with _faiss_single_thread():
        pq.train(vectors)
        packed = pq.compute_codes(vectors)
    codebooks = faiss.vector_to_array(pq.centroids).reshape(n_seg, k, segment)
    codes = faiss.unpack_bitstrings(packed, n_seg, bits).astype(_index_dtype(bits))
    return codebooks.astype(np.float32), codes


def kmeans_1d(values: np.ndarray, init: np.ndarray,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scalar k-means (faiss) of ``values`` started from the centroids ``init``; returns
    the trained centroids (in the order of ``init``) and each value's nearest one."""
    x = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, 1)
    km = faiss.Kmeans(1, len(init), niter=KMEANS_ITERATIONS, seed=int(seed),
                      min_points_per_centroid=1,
                      max_points_per_centroid=-(-len(x) // len(init)))
    with _faiss_single_thread():
        km.train(x, init_centroids=np.asarray(init, dtype=np.float32).reshape(-1, 1))
        _, assignment = km.assign(x)
    return km.centroids.ravel().copy(), assignment.astype(np.int64)


def _decode(codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``[n, n_seg * s]`` rows from ``codebooks [n_seg or 1, k, s]`` and ``codes [n, n_seg]``."""
    n, n_seg = codes.shape
    books = np.broadcast_to(codebooks, (n_seg,) + codebooks.shape[1:])
    return books[np.arange(n_seg), codes].reshape(n, -1)


def _torch_lookup(n_books: int, codes: np.ndarray):
    """Differentiable :func:`_decode`: ``codebooks -> [n, n_seg * s]`` for fixed ``codes``.

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


@dataclass(frozen=True, eq=False)
class ScalarKMeans(QuantizedDense):
    """``W[o, i] = codebook[indices[o, i]]``."""

    codebook: np.ndarray
    indices: np.ndarray
    method: ClassVar[str] = "km"

    @property
    def shape(self):
        return self.indices.shape

    @property
    def k(self) -> int:
        return len(self.codebook)

    @property
    def codebooks(self) -> np.ndarray:
        """The codebook as ``[1, k, 1]``: one scalar codebook shared by every input."""
        return self.codebook.reshape(1, -1, 1)

    def reconstruct(self):
        return self.codebook[self.indices]

    @property
    def storage_bits(self):
        return self.indices.size * index_bits(self.k) + FLOAT_BITS * self.k

    @property
    def params(self):
        return {"k": self.k}

    def trainable(self):
        return {"codebook": self.codebook}

    def torch_decoder(self):
        codes = torch.from_numpy(self.indices.astype(np.int64))
        return lambda p: p["codebook"][codes]


@dataclass(frozen=True, eq=False)
class ProductQuantized(QuantizedDense):
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
    def k(self) -> int:
        return self.codebooks.shape[1]

    @property
    def segment(self) -> int:
        return self.codebooks.shape[2]

    @property
    def shape(self):
        rows, cols = self.indices.shape[0], self.indices.shape[1] * self.segment
        return (rows, cols) if self.axis == "x" else (cols, rows)

    def reconstruct(self):
        w = _decode(self.codebooks, self.indices)
        return w if self.axis == "x" else np.ascontiguousarray(w.T)

    @property
    def storage_bits(self):
        return self.indices.size * index_bits(self.k) + FLOAT_BITS * self.codebooks.size

    @property
    def params(self):
        return {"k": self.k, "segment": self.segment, "axis": self.axis}

    def trainable(self):
        return {"codebooks": self.codebooks}

    def torch_decoder(self):
        decode = _torch_lookup(self.codebooks.shape[0], self.indices)
        if self.axis == "x":
            return lambda p: decode(p["codebooks"])
        return lambda p: decode(p["codebooks"]).T


@dataclass(frozen=True, eq=False)
class ResidualQuantized(QuantizedDense):
    """``t`` stages of x-axis PQ, each quantizing what the previous stages left.

    ``codebooks [t, n_in/s, k, s]``, ``indices [t, n_out, n_in/s]``; the weights are
    the sum of the stages' decoded rows.
    """

    codebooks: np.ndarray
    indices: np.ndarray
    method: ClassVar[str] = "rq"

    @property
    def k(self) -> int:
        return self.codebooks.shape[2]

    @property
    def stages(self) -> int:
        return self.codebooks.shape[0]

    @property
    def segment(self) -> int:
        return self.codebooks.shape[3]

    @property
    def shape(self):
        return self.indices.shape[1], self.indices.shape[2] * self.segment

    def reconstruct(self):
        return sum(_decode(c, i) for c, i in zip(self.codebooks, self.indices, strict=True))

    @property
    def storage_bits(self):
        return self.indices.size * index_bits(self.k) + FLOAT_BITS * self.codebooks.size

    @property
    def params(self):
        return {"k": self.k, "stages": self.stages, "segment": self.segment}

    def trainable(self):
        return {"codebooks": self.codebooks}

    def torch_decoder(self):
        stages = [_torch_lookup(self.codebooks.shape[1], i) for i in self.indices]
        return lambda p: sum(decode(c) for decode, c in zip(stages, p["codebooks"], strict=True))


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
        residual -= _decode(c, i)
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


# --------------------------------------------------------------------------- deployment

@dataclass
class DeployedDense:
    """Int8 codebook form of a dense layer for the hardware dense engine.

    ``W[o, j*s:(j+1)*s] = scale * codebooks[j][indices[o, j]]`` (DESIGN.md section 3);
    with ``codebooks [1, k, s]`` one codebook serves every segment (scalar k-means is
    ``s = 1``). One scale per layer keeps every lookup-table sum in one scale.
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
        return _decode(self.codebooks, self.indices)


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
    return DeployedDense(books, scale, q.indices.astype(_index_dtype(bits)), bits)


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``indices [n_out, n_seg]`` of ``bits`` bits each into bytes, segment-major.

    Layout: for each segment ``j``, the indices ``idx[0, j], idx[1, j], ...,
    idx[n_out-1, j]`` follow each other as a little-endian bit string (bit ``b`` of the
    ``r``-th index of the run is bit ``(r*bits + b) % 8`` of byte ``(r*bits + b) // 8``
    of the run); each segment's run is padded with zero bits to a byte boundary, so
    segment ``j`` starts at byte ``j * ceil(n_out * bits / 8)``. The dense engine
    streams one segment's indices for many output rows at a time.
    """
    indices = np.asarray(indices)
    _check_count("bits", bits, 1, 16, "index width")
    if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
        raise VQError(f"indices must be an integer matrix [n_out, n_seg], not "
                      f"{indices.dtype} {list(indices.shape)}")
    if indices.size and (indices.min() < 0 or indices.max() >= 1 << bits):
        raise VQError(f"indices must lie in [0, {(1 << bits) - 1}] for {bits} bits, "
                      f"not [{int(indices.min())}, {int(indices.max())}]")
    runs = indices.T.astype(np.uint32)                         # [n_seg, n_out]
    bit_planes = (runs[..., None] >> np.arange(bits, dtype=np.uint32)) & 1
    flat = bit_planes.astype(np.uint8).reshape(len(runs), -1)
    return np.packbits(flat, axis=1, bitorder="little").ravel()


def unpack_indices(packed: np.ndarray, bits: int, n_out: int, n_seg: int) -> np.ndarray:
    """Inverse of :func:`pack_indices`: ``[n_out, n_seg]`` uint8 (bits <= 8) or uint16."""
    _check_count("bits", bits, 1, 16, "index width")
    packed = np.asarray(packed)
    run_bytes = -(-n_out * bits // 8)
    if packed.dtype != np.uint8 or packed.shape != (n_seg * run_bytes,):
        raise VQError(f"packed indices for {n_seg} segments of {n_out} {bits}-bit indices "
                      f"must be {n_seg * run_bytes} uint8 bytes, not {packed.dtype} "
                      f"{list(packed.shape)}")
    flat = np.unpackbits(packed.reshape(n_seg, run_bytes), axis=1, count=n_out * bits,
                         bitorder="little")
    weights = np.left_shift(1, np.arange(bits, dtype=np.uint32))
    runs = flat.reshape(n_seg, n_out, bits).astype(np.uint32) @ weights
    return runs.T.astype(_index_dtype(bits))


# --------------------------------------------------------------------------- models

class DenseHead:
    """Accuracy of a ``nn.Sequential`` model with its dense layers' weights replaced.

    Everything before the first dense layer runs once, on construction; each
    :meth:`accuracy` call then runs only the layers from the first dense layer on.
    """

    def __init__(self, model: nn.Module, images: np.ndarray, labels: np.ndarray,
                 batch_size: int = 500):
        from .data import to_float

        if not isinstance(model, nn.Sequential):
            raise ModelError(f"vector quantization needs an nn.Sequential model, not "
                             f"{type(model).__name__}")
        children = list(model.children())
        first = next((i for i, m in enumerate(children) if isinstance(m, nn.Linear)), None)
        if first is None:
            raise ModelError("the model has no dense (nn.Linear) layer")
        names = [name for name, _ in model.named_children()]
        self.layers = {names[i]: m for i, m in enumerate(children) if isinstance(m, nn.Linear)}
        self.head = model[first:].eval()
        self.labels = np.asarray(labels)
        model.eval()
        prefix = model[:first]
        with torch.inference_mode():
            self.features = torch.cat([prefix(to_float(images[i:i + batch_size]))
                                       for i in range(0, len(images), batch_size)])

    def accuracy(self, weights: dict[str, np.ndarray] | None = None) -> float:
        """Top-1 accuracy in [0, 1] with ``weights`` (by layer name) replacing the trained ones."""
        head = self.head
        if weights:
            head = copy.deepcopy(self.head)
            layers = dict(head.named_children())
            for name, w in weights.items():
                layers[name].weight.data = torch.as_tensor(w, dtype=torch.float32)
        with torch.inference_mode():
            predicted = head(self.features).argmax(1).numpy()
        return float((predicted == self.labels).mean())


def dense_weights(model: nn.Module, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Float32 weights of the named ``nn.Linear`` layers (raises for other names)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    weights = {}
    for name in names:
        if name not in layers:
            raise VQError(f"no dense layer {name!r}; the dense layers are {', '.join(layers)}")
        weights[name] = layers[name].weight.detach().float().numpy()
    return weights


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


@dataclass(frozen=True)
class Tuning:
    """Fine-tuning of the quantized layers' float parameters on training features.

    Only the codebooks (scale, SVD factors) change; indices, the other layers and the
    storage stay as they are. Each codeword's gradient is the sum of the gradients of
    the weights that share it, as Deep Compression fine-tunes its centroids; the
    plain methods of Gong et al. have no such step.
    """

    head: DenseHead
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 256
    seed: int = 0


def finetune(tuning: Tuning, quantized: dict[str, QuantizedDense],
             progress: bool = False) -> dict[str, QuantizedDense]:
    """Fine-tuned copies of the quantized layers (Adam, cosine schedule, cross-entropy)."""
    head, features = tuning.head.head, tuning.head.features
    labels = torch.from_numpy(tuning.head.labels)
    fixed = {name: p.detach() for name, p in head.named_parameters()}
    params = {name: {key: nn.Parameter(torch.tensor(a, dtype=torch.float32))
                     for key, a in q.trainable().items()} for name, q in quantized.items()}
    decoders = {name: q.torch_decoder() for name, q in quantized.items()}
    optimizer = torch.optim.Adam([p for group in params.values() for p in group.values()],
                                 lr=tuning.lr)
    batches = -(-len(features) // tuning.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, tuning.epochs * batches)
    generator = torch.Generator().manual_seed(tuning.seed)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(tuning.epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in tqdm(range(0, len(features), tuning.batch_size), leave=False,
                          desc=f"fine-tune {epoch + 1}/{tuning.epochs}", disable=not progress):
            batch = order[start:start + tuning.batch_size]
            weights = dict(fixed)
            weights.update({f"{name}.weight": decoders[name](params[name]) for name in params})
            loss = loss_fn(torch.func.functional_call(head, weights, (features[batch],)),
                           labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return {name: q.replaced({key: p.detach().numpy().copy() for key, p in params[name].items()})
            for name, q in quantized.items()}


def record(head: DenseHead, quantized: dict[str, QuantizedDense], method: str, params: dict,
           finetune_epochs: int = 0) -> dict:
    """Compression rate and accuracy of the model with the quantized layers in place.

    The compression rate covers the weight matrices of *all* dense layers: layers not
    quantized stay float32 and count 32 bits per weight. Biases are not counted, as in
    the paper.
    """
    layers, stored, original = [], 0, 0
    for name, layer in head.layers.items():
        n_weights = layer.weight.numel()
        q = quantized.get(name)
        bits = q.storage_bits if q is not None else FLOAT_BITS * n_weights
        layers.append({"name": name, "shape": list(layer.weight.shape),
                       "method": q.describe() if q is not None else "float32",
                       "storage_bits": int(bits), "float32_bits": FLOAT_BITS * n_weights})
        stored += bits
        original += FLOAT_BITS * n_weights
    return {
        "method": method,
        "params": next(iter(quantized.values())).params if quantized else {},
        "finetune_epochs": finetune_epochs,
        "compression_rate": original / stored,
        "accuracy": head.accuracy({name: q.reconstruct() for name, q in quantized.items()}),
        "layers": layers,
    }


def evaluate(head: DenseHead, quantized: dict[str, QuantizedDense], method: str,
             params: dict, tuning: Tuning | None = None, progress: bool = False) -> list[dict]:
    """The record of the plain quantized layers, then of the fine-tuned ones when
    ``tuning`` is given (see :func:`record`)."""
    records = [record(head, quantized, method, params)]
    if tuning is not None and tuning.epochs > 0:
        records.append(record(head, finetune(tuning, quantized, progress), method, params,
                              tuning.epochs))
    return records


def sweep_configs(shape: tuple[int, int]) -> list[tuple[str, dict]]:
    """The sweep of the paper's Figures 1-2 for one ``[n_out, n_in]`` matrix.

    Configurations whose segment does not divide the axis or whose ``k`` exceeds the
    number of vectors to cluster are left out.
    """
    n_out, n_in = shape
    configs = [("bin", {})]
    configs += [("km", {"k": k}) for k in (2, 4, 8, 16, 32, 64, 256) if k <= n_out * n_in]
    for axis, length, vectors in (("x", n_in, n_out), ("y", n_out, n_in)):
        configs += [("pq", {"k": k, "segment": s, "axis": axis})
                    for k in (2, 4, 8, 16) for s in (1, 2, 4, 8, 16)
                    if length % s == 0 and k <= vectors]
    configs += [("rq", {"k": k, "stages": t}) for k in (2, 4, 8, 16) for t in (2, 3)
                if k <= n_out]
    configs += [("svd", {"rank": r}) for r in (1, 2, 4, 8, 16, 32, 64) if r <= min(shape)]
    return configs


def sweep(head: DenseHead, weights: dict[str, np.ndarray], configs: list[tuple[str, dict]],
          seed: int = 0, tuning: Tuning | None = None, progress: bool = True) -> list[dict]:
    """:func:`evaluate` every configuration on the layers of ``weights`` (plain, and
    fine-tuned with ``tuning``)."""
    records = []
    for method, params in tqdm(configs, desc="vq sweep", unit="config", disable=not progress):
        records += evaluate(head, quantize_layers(weights, method, params, seed), method,
                            params, tuning)
    return records


def series_name(record: dict) -> str:
    """Legend label: the method, and for PQ and RQ its k (one curve over s or t)."""
    p = record["params"]
    if record["method"] == "pq":
        return f"PQ k={p['k']}"
    if record["method"] == "rq":
        return f"RQ k={p['k']}"
    return {"bin": "binarization", "km": "KM", "svd": "SVD"}[record["method"]]


def _series_style(name: str) -> dict:
    """One look per series: PQ curves solid and coloured by k, the others fixed."""
    fixed = {"binarization": dict(color="black", marker="*", ms=11, ls="none"),
             "KM": dict(color="tab:orange", marker="s", ls="--"),
             "SVD": dict(color="tab:blue", marker="D", ls="--")}
    if name in fixed:
        return fixed[name]
    k = int(name.split("=")[1])
    shade = {2: 0, 4: 1, 8: 2, 16: 3}.get(k, 3)
    if name.startswith("PQ"):
        return dict(color=("tab:green", "tab:red", "tab:purple", "tab:brown")[shade],
                    marker="o", ls="-")
    return dict(color=("0.75", "0.6", "0.45", "0.3")[shade], marker="x", ls=":")


def best_record(records: list[dict], method: str, rate: float) -> dict | None:
    """The most accurate record of ``method`` among those compressing at least ``rate`` times."""
    fits = [r for r in records if r["method"] == method and r["compression_rate"] >= rate]
    return max(fits, key=lambda r: (r["accuracy"], r["compression_rate"])) if fits else None


def ordering(records: list[dict], rates=(2, 4, 8, 16, 20, 24, 32, 48)) -> list[dict]:
    """Whether the paper's PQ >= KM > SVD holds at each compression rate.

    Each method is represented by its best accuracy among the points that compress at
    least that much (its accuracy-versus-rate envelope; PQ takes the better axis).
    ``holds`` is left out where a method has no point at that rate.
    """
    rows = []
    for rate in rates:
        best = {m: best_record(records, m, rate) for m in ("pq", "km", "svd")}
        row = {"rate": rate, **{m: r and r["accuracy"] for m, r in best.items()}}
        if None not in (row["pq"], row["km"], row["svd"]):
            row["holds"] = bool(row["pq"] >= row["km"] > row["svd"])
        rows.append(row)
    return rows


def plot_sweep(records: list[dict], baseline: float, path: Path) -> None:
    """Accuracy versus compression rate like the paper's Figures 1-2.

    Columns: PQ segments along the inputs (x-axis) and along the outputs (y-axis);
    the other methods appear in both. Rows: the plain methods and, when the records
    hold them, the fine-tuned ones.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tunings = sorted({r["finetune_epochs"] for r in records})
    fig, grid = plt.subplots(len(tunings), 2, figsize=(13, 4.8 * len(tunings)),
                             sharey=True, squeeze=False)
    lo = min(100 * r["accuracy"] for r in records)
    for row, epochs in zip(grid, tunings, strict=True):
        for axis, ax in zip(AXES, row, strict=True):
            series: dict[str, list[dict]] = {}
            for r in records:
                if r["finetune_epochs"] == epochs and (r["method"] != "pq"
                                                       or r["params"]["axis"] == axis):
                    series.setdefault(series_name(r), []).append(r)
            for name, points in series.items():
                points.sort(key=lambda r: r["compression_rate"])
                style = {"ms": 4, **_series_style(name)}
                ax.plot([r["compression_rate"] for r in points],
                        [100 * r["accuracy"] for r in points], label=name, **style)
            ax.axhline(100 * baseline, color="k", lw=0.8, ls=":", label="float32")
            ax.set_xscale("log", base=2)
            ax.set_ylim(max(lo - 1, 100 * baseline - 12), 100 * baseline + 1)
            ax.set_xlabel("compression rate of the dense layers (codebooks included)")
            where = "inputs (x-axis)" if axis == "x" else "outputs (y-axis)"
            how = f"fine-tuned {epochs} epoch(s)" if epochs else "plain"
            ax.set_title(f"PQ segments along the {where}; {how}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
        row[0].set_ylabel("top-1 accuracy (%)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
