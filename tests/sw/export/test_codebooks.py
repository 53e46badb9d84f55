"""The int8 codebook form the dense engine runs (:mod:`velcro.sw.export.codebooks`)."""

import numpy as np
import pytest

from velcro.sw import golden
from velcro.sw.errors import VQError
from velcro.sw.export.bits import pack_indices, unpack_indices
from velcro.sw.export.codebooks import deploy
from velcro.sw.vq.methods import binarize, kmeans, product_quantize, residual_quantize, svd


@pytest.fixture
def w(rng):
    return rng.normal(0, 0.1, (64, 48)).astype(np.float32)


@pytest.mark.parametrize("make", [lambda w: kmeans(w, 16),
                                  lambda w: product_quantize(w, 8, 4, "x")])
def test_deployed_layer_matches_golden_codebook_dense(w, rng, make):
    q = make(w)
    d = deploy(q)
    assert d.codebooks.dtype == np.int8 and np.abs(d.codebooks).max() == 127
    np.testing.assert_allclose(d.scale * d.weight(), q.reconstruct(), atol=d.scale / 2 + 1e-7)
    x = rng.integers(-128, 128, (5, 48), dtype=np.int8)
    bias = rng.integers(-1000, 1000, 64).astype(np.int32)
    expected = x.astype(np.int64) @ d.weight().astype(np.int64).T + bias
    np.testing.assert_array_equal(golden.dense_codebook_acc(x, d.codebooks, d.indices, bias),
                                  expected)
    np.testing.assert_array_equal(golden.dense_acc(x, d.weight(), bias), expected)


def test_deployed_shapes_follow_the_contract(w):
    km = deploy(kmeans(w, 16))
    assert km.codebooks.shape == (1, 16, 1) and km.indices.shape == (64, 48) and km.bits == 4
    pq = deploy(product_quantize(w, 8, 4, "x"))
    assert pq.codebooks.shape == (12, 8, 4) and pq.indices.shape == (64, 12) and pq.bits == 3
    assert pq.indices.dtype == np.uint8


@pytest.mark.parametrize("make", [lambda w: product_quantize(w, 8, 4, "y"),
                                  lambda w: residual_quantize(w, 4, 2),
                                  binarize, lambda w: svd(w, 3)])
def test_layers_the_engine_cannot_run_refuse_to_deploy(w, make):
    with pytest.raises(VQError, match="plain int8 dense layer"):
        deploy(make(w))


def test_packed_deployed_indices_round_trip(w):
    d = deploy(product_quantize(w, 16, 4, "x"))
    packed = pack_indices(d.indices, d.bits)
    np.testing.assert_array_equal(unpack_indices(packed, d.bits, 64, 12), d.indices)
