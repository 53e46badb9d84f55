"""Clustering with faiss, seeded and on one thread, for the VQ methods and Deep Compression.

:func:`product_codes` trains faiss's ``ProductQuantizer`` (k-means per segment) and
:func:`kmeans_1d` its ``Kmeans`` on scalars from given centroids. Both are seeded and
run on one thread, so results do not depend on the machine. A weight matrix is small
next to the data faiss is tuned for, so every vector takes part in training (no
subsampling).
"""

from __future__ import annotations

from contextlib import contextmanager

import faiss
import numpy as np

from ..errors import VQError
from ..export.bits import index_dtype

K_MAX = 65536
KMEANS_ITERATIONS = 25


def index_bits(k) -> int:
    """``log2(k)`` for a number of codewords ``k``: a power of two in ``[2, 65536]``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= K_MAX \
            or k & (k - 1):
        raise VQError(f"k must be a power of two in [2, {K_MAX}], not {k!r}")
    return int(k).bit_length() - 1


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
    codes = faiss.unpack_bitstrings(packed, n_seg, bits).astype(index_dtype(bits))
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
