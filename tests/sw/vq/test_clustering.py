"""Seeded, single-threaded faiss clustering (:mod:`velcro.sw.vq.clustering`)."""

import faiss
import numpy as np

from velcro.sw.vq.clustering import kmeans_1d, product_codes
from velcro.sw.vq.methods import product_quantize


def test_clustering_is_deterministic_for_a_seed(w):
    a, b = product_quantize(w, 16, 2, "x", seed=3), product_quantize(w, 16, 2, "x", seed=3)
    np.testing.assert_array_equal(a.codebooks, b.codebooks)
    np.testing.assert_array_equal(a.indices, b.indices)


def test_product_codes_shapes_and_the_global_faiss_settings_restored(w):
    threads = faiss.omp_get_max_threads()
    threshold = faiss.cvar.distance_compute_blas_threshold
    codebooks, codes = product_codes(w, 16, 4, seed=1)
    assert codebooks.shape == (12, 16, 4) and codebooks.dtype == np.float32
    assert codes.shape == (64, 12) and codes.dtype == np.uint8 and codes.max() < 16
    centroids, assignment = kmeans_1d(w.ravel(), np.array([-0.1, 0.0, 0.1]), seed=1)
    assert centroids[0] < centroids[1] < centroids[2]
    nearest = np.abs(w.ravel()[:, None] - centroids[None]).argmin(1)
    # faiss's float32 distances may break a near-tie otherwise than this one does
    assert (assignment == nearest).mean() > 0.999
    assert faiss.omp_get_max_threads() == threads
    assert faiss.cvar.distance_compute_blas_threshold == threshold
