"""The five methods (:mod:`velcro.sw.vq.methods`): storage, reconstruction, bad input
and the differentiable decoders fine-tuning uses."""

import numpy as np
import pytest
import torch

from velcro.sw.errors import VQError
from velcro.sw.vq.methods import (
    binarize,
    kmeans,
    product_quantize,
    quantize,
    residual_quantize,
    svd,
)

# ----------------------------------------------------------------- storage formulas

def test_kmeans_storage_of_1000x1000_with_16_centers(rng):
    q = kmeans(rng.normal(size=(1000, 1000)).astype(np.float32), 16)
    assert q.storage_bits == 1_000_000 * 4 + 16 * 32
    assert q.compression_rate == pytest.approx(32e6 / (4e6 + 512))
    assert q.codebook.shape == (16,) and q.indices.shape == (1000, 1000)


def test_storage_formulas_on_a_64x48_matrix(w):
    assert binarize(w).storage_bits == 64 * 48 + 32
    # x-axis PQ, k=8, s=4: 64 rows x 12 segments x 3 bits + 12 codebooks x 8 x 4 floats
    assert product_quantize(w, 8, 4, "x").storage_bits == 64 * 12 * 3 + 32 * 12 * 8 * 4
    # y-axis: 48 columns x 16 segments x 3 bits + 16 codebooks x 8 x 4 floats
    assert product_quantize(w, 8, 4, "y").storage_bits == 48 * 16 * 3 + 32 * 16 * 8 * 4
    # RQ, whole rows: 3 stages x (64 indices x 2 bits + 4 codewords x 48 floats)
    assert residual_quantize(w, 4, 3).storage_bits == 3 * (64 * 2 + 32 * 4 * 48)
    assert residual_quantize(w, 4, 3, segment=12).storage_bits == 3 * (64 * 4 * 2
                                                                       + 32 * 4 * 4 * 12)
    assert svd(w, 5).storage_bits == 32 * 5 * (64 + 48 + 1)
    assert svd(w, 5).compression_rate == pytest.approx(64 * 48 / (5 * 113))


# ----------------------------------------------------------------- reconstruction

def test_kmeans_reconstruction_is_the_codebook_lookup(w):
    q = kmeans(w, 8)
    rec = q.reconstruct()
    for o, i in np.ndindex(*w.shape):
        assert rec[o, i] == q.codebook[q.indices[o, i]]
    assert len(np.unique(rec)) <= 8


def test_pq_x_axis_shapes_and_lookup(w):
    q = product_quantize(w, 8, 4, "x")
    assert q.codebooks.shape == (12, 8, 4) and q.indices.shape == (64, 12)
    rec = q.reconstruct()
    assert rec.shape == w.shape
    for o, j in np.ndindex(64, 12):
        np.testing.assert_array_equal(rec[o, 4 * j:4 * j + 4], q.codebooks[j, q.indices[o, j]])


def test_pq_y_axis_shapes_and_lookup(w):
    q = product_quantize(w, 8, 4, "y")
    assert q.codebooks.shape == (16, 8, 4) and q.indices.shape == (48, 16)
    rec = q.reconstruct()
    assert rec.shape == w.shape
    for i, j in np.ndindex(48, 16):
        np.testing.assert_array_equal(rec[4 * j:4 * j + 4, i], q.codebooks[j, q.indices[i, j]])


def test_rq_reconstruction_sums_the_stage_lookups(w):
    q = residual_quantize(w, 4, 3, segment=12)
    assert q.codebooks.shape == (3, 4, 4, 12) and q.indices.shape == (3, 64, 4)
    expected = np.zeros_like(w)
    for t, o, j in np.ndindex(3, 64, 4):
        expected[o, 12 * j:12 * j + 12] += q.codebooks[t, j, q.indices[t, o, j]]
    np.testing.assert_allclose(q.reconstruct(), expected, rtol=1e-6, atol=1e-7)


def test_rq_stages_reduce_the_error(w):
    errors = [np.linalg.norm(residual_quantize(w, 8, t).reconstruct() - w) for t in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]


def test_binarization_uses_signs_and_mean_magnitude(w):
    q = binarize(w)
    assert q.scale == pytest.approx(np.abs(w).mean())
    np.testing.assert_array_equal(q.reconstruct(), np.where(w >= 0, q.scale, -q.scale))


def test_pq_with_one_codeword_per_vector_is_exact(w):
    np.testing.assert_allclose(product_quantize(w, 64, 4, "x").reconstruct(), w, atol=1e-6)
    np.testing.assert_allclose(product_quantize(w[:, :32], 32, 4, "y").reconstruct(),
                               w[:, :32], atol=1e-6)


def test_full_rank_svd_is_exact_and_low_rank_is_the_best_approximation(w):
    np.testing.assert_allclose(svd(w, 48).reconstruct(), w, atol=1e-5)
    sigma = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    err = np.linalg.norm(svd(w, 10).reconstruct() - w)
    assert err == pytest.approx(np.sqrt((sigma[10:] ** 2).sum()), rel=1e-4)


def test_more_centers_give_smaller_error(w):
    errors = [np.linalg.norm(kmeans(w, k).reconstruct() - w) for k in (2, 4, 16, 64)]
    assert errors == sorted(errors, reverse=True)


def test_index_dtype_follows_the_bits(rng):
    x = rng.normal(size=(100, 100)).astype(np.float32)
    assert kmeans(x, 256).indices.dtype == np.uint8
    assert kmeans(x, 512).indices.dtype == np.uint16


# ----------------------------------------------------------------- bad input

@pytest.mark.parametrize("k", [0, 1, 3, 100, 131072, 2.0])
def test_k_must_be_a_power_of_two_up_to_65536(w, k):
    with pytest.raises(VQError, match=f"k must be a power of two in \\[2, 65536\\], not {k}"):
        kmeans(w, k)


@pytest.mark.parametrize("axis, segment, length", [("x", 5, 48), ("y", 5, 64)])
def test_segment_must_divide_the_axis(w, axis, segment, length):
    with pytest.raises(VQError, match=f"segment length {segment} does not divide the {length}"):
        product_quantize(w, 4, segment, axis)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_rejected(w, bad):
    w[3, 7] = bad
    for method, params in [("km", {"k": 4}), ("pq", {"k": 4, "segment": 4}), ("bin", {}),
                           ("svd", {"rank": 2}), ("rq", {"k": 4, "stages": 2})]:
        with pytest.raises(VQError, match=f"non-finite values \\(first: {bad} at \\[3, 7\\]\\)"):
            quantize(w, method, **params)


def test_rank_above_min_dimension_is_rejected(w):
    with pytest.raises(VQError, match="rank must be an integer in \\[1, 48\\].*not 49"):
        svd(w, 49)


def test_other_bad_parameters_name_the_value(w):
    with pytest.raises(VQError, match="axis must be 'x'.*not 'z'"):
        product_quantize(w, 4, 4, "z")
    with pytest.raises(VQError, match="k=128 exceeds the 64 sub-vectors"):
        product_quantize(w, 128, 4, "x")
    with pytest.raises(VQError, match="unknown method 'lsh'"):
        quantize(w, "lsh")
    with pytest.raises(VQError, match="method 'pq' needs --segment"):
        quantize(w, "pq", k=4)
    with pytest.raises(VQError, match="2-D"):
        kmeans(np.zeros(10, dtype=np.float32), 2)


# ----------------------------------------------------------------- torch decoders

def test_codeword_gradient_is_the_sum_of_member_gradients(w, rng):
    q = product_quantize(w, 8, 4, "x")
    books = torch.tensor(q.codebooks, requires_grad=True)
    upstream = rng.normal(size=w.shape).astype(np.float32)
    (q.torch_decoder()({"codebooks": books}) * torch.from_numpy(upstream)).sum().backward()
    expected = np.zeros_like(q.codebooks)
    for o, j in np.ndindex(*q.indices.shape):
        expected[j, q.indices[o, j]] += upstream[o, 4 * j:4 * j + 4]
    np.testing.assert_allclose(books.grad.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, params", [("bin", {}), ("km", {"k": 4}),
                                            ("pq", {"k": 4, "segment": 2, "axis": "y"}),
                                            ("rq", {"k": 4, "stages": 2}), ("svd", {"rank": 2})])
def test_torch_decoder_reproduces_reconstruct(w, method, params):
    q = quantize(w, method, **params)
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in q.trainable().items()}
    np.testing.assert_allclose(q.torch_decoder()(tensors).numpy(), q.reconstruct(),
                               rtol=1e-5, atol=1e-6)
