import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from velcro.sw import golden
from velcro.sw.export.bits import unpack_indices, unpack_mask
from velcro.sw.golden import (
    GoldenError,
    GoldenModel,
    apply_skip,
    conv3x3,
    conv3x3_acc,
    dense_acc,
    dense_codebook_acc,
    maxpool2x2,
    quantize_input,
    requant_params,
    requantize,
)


def int8(rng, shape):
    return rng.integers(-128, 127, shape, endpoint=True).astype(np.int8)


@settings(max_examples=40, deadline=None)
@given(c_in=st.integers(1, 70), c_out=st.integers(1, 8), h=st.integers(1, 64),
       w=st.integers(1, 64), stride=st.sampled_from([1, 2]), seed=st.integers(0, 2 ** 32 - 1))
@example(c_in=70, c_out=8, h=64, w=64, stride=1, seed=0)
@example(c_in=70, c_out=3, h=64, w=63, stride=2, seed=1)
@example(c_in=1, c_out=1, h=1, w=1, stride=2, seed=2)
def test_conv3x3_equals_torch_conv2d_on_int64(c_in, c_out, h, w, stride, seed):
    rng = np.random.default_rng(seed)
    x, wt = int8(rng, (2, c_in, h, w)), int8(rng, (c_out, c_in, 3, 3))
    bias = rng.integers(-(1 << 20), 1 << 20, c_out).astype(np.int32)
    expected = F.conv2d(torch.from_numpy(x).long(), torch.from_numpy(wt).long(),
                        torch.from_numpy(bias).long(), stride=stride, padding=1).numpy()
    acc = conv3x3_acc(x, wt, bias, stride)
    assert acc.dtype == np.int64 and acc.shape == expected.shape
    np.testing.assert_array_equal(acc, expected)
    np.testing.assert_array_equal(conv3x3_acc(x[1], wt, bias, stride), expected[1])


def test_products_beyond_float32_are_still_exact():
    # 1041 products of 127 * 127 plus two of 1: an odd sum above 2**24, which float32
    # cannot hold; the exactness bound must switch to float64.
    x = np.array([[127] * 1041 + [1, 1]], dtype=np.int8)
    w = x.copy()
    expected = 1041 * 127 * 127 + 2
    assert expected > 1 << 24 and expected % 2
    assert (x.astype(np.float32) @ w.T.astype(np.float32)).item() != expected
    assert dense_acc(x, w, np.zeros(1, np.int32)).tolist() == [[expected]]
    # The same through a convolution: 120 input channels of 9 taps.
    xc = np.full((1, 120, 3, 3), 127, np.int8)
    wc = np.full((1, 120, 3, 3), 127, np.int8)
    wc[0, 0, 0, 0] = 2
    expected = (120 * 9 - 1) * 127 * 127 + 2 * 127
    assert expected > 1 << 24 and expected % 2
    assert conv3x3_acc(xc, wc, np.zeros(1, np.int32))[0, 0, 1, 1] == expected


@pytest.mark.parametrize("acc, mult, shift, relu, expected", [
    (100, 1, 0, True, 100),           # shift 0: no rounding term
    (-128, 1, 0, False, -128),
    (127, 1, 0, False, 127),
    (-129, 1, 0, False, -128),        # clamps
    (200, 1, 0, True, 127),
    (5, 3, 1, True, 8),               # 15 / 2 = 7.5 rounds half up
    (-5, 3, 1, False, -7),            # -7.5 rounds half up to -7
    (-3, 1, 1, False, -1),            # -1.5 -> -1
    (-6, 1, 2, False, -1),            # -1.5 -> -1
    (-7, 1, 2, False, -2),            # -1.75 -> -2
    (-4, 1, 2, False, -1),            # exact
    (-7, 1, 2, True, 0),              # ReLU clamp
    (3 << 29, 1, 31, True, 1),        # 0.75 -> 1 at shift 31
    (1 << 29, 1, 31, True, 0),        # 0.25 -> 0
    (-(1 << 30), 1, 31, False, 0),    # -0.5 -> 0 (half up)
    (-(1 << 30) - 1, 1, 31, False, -1),
    (-(1 << 31), 65535, 31, False, -128),
    ((1 << 31) - 1, 65535, 31, True, 127),
    (1000, 65535, 23, True, 8),       # 65535000 / 2**23 = 7.81 -> 8
])
def test_requantize_hand_computed(acc, mult, shift, relu, expected):
    y = requantize(np.array([acc]), np.array([mult]), np.array([shift]), relu)
    assert y.dtype == np.int8 and y.tolist() == [expected]


def test_requantize_is_per_channel_along_the_axis():
    acc = np.array([[[10, -10]], [[10, -10]]])            # [C=2, 1, 2]
    y = requantize(acc, np.array([1, 3]), np.array([0, 2]), relu=False, channel_axis=0)
    assert y.tolist() == [[[10, -10]], [[8, -7]]]         # 30/4 = 7.5 -> 8, -7.5 -> -7


@pytest.mark.parametrize("acc, mult, shift, match", [
    (0, 1 << 16, 0, "mult out of range"),
    (0, 1, 32, "shift out of range"),
    (1 << 31, 1, 0, "accumulator out of range"),
    (0, -1, 0, "mult out of range"),
])
def test_requantize_rejects_operands_outside_the_contract(acc, mult, shift, match):
    with pytest.raises(GoldenError, match=match):
        requantize(np.array([acc]), np.array([mult]), np.array([shift]))


def test_requant_params_fit_the_scale_with_the_largest_shift(rng):
    scales = np.concatenate([2.0 ** rng.uniform(-15, 15, 2000), [1.0, 0.5, 2 ** -15, 65535.0]])
    mult, shift = requant_params(scales)
    assert mult.dtype == np.uint16 and shift.dtype == np.uint8
    assert np.max(np.abs(mult / 2.0 ** shift.astype(np.float64) / scales - 1)) <= 2.0 ** -16
    assert np.all((shift == 31) | (np.round(scales * 2.0 ** (shift + 1.0)) > 65535))
    # Exact powers of two, where log2 may round up, still fit 16 bits.
    mult, shift = requant_params(2.0 ** np.arange(-15, 16))
    assert mult.tolist() == [1 << 15] * 31 and shift.tolist() == list(range(30, -1, -1))


def test_requant_params_are_the_inverse_of_requantize(rng):
    scales = 2.0 ** rng.uniform(-12, -4, 6)
    mult, shift = requant_params(scales)
    acc = rng.integers(-(1 << 20), 1 << 20, (6, 50))
    y = requantize(acc, mult, shift, relu=False)
    want = np.clip(np.floor(acc * (mult / 2.0 ** shift.astype(np.float64))[:, None] + 0.5),
                   -128, 127)
    np.testing.assert_array_equal(y, want)
    assert np.max(np.abs(y - np.clip(acc * scales[:, None], -128, 127))) <= 1


@pytest.mark.parametrize("scale, match", [
    (0.0, "positive and finite"), (-1.0, "positive and finite"),
    (np.inf, "positive and finite"), (70000.0, "exceeds 65535"),
])
def test_requant_params_reject_scales_they_cannot_fit(scale, match):
    with pytest.raises(GoldenError, match=match):
        requant_params([1.0, scale])


def test_skipped_elements_equal_their_means_and_the_rest_is_unchanged(rng):
    x, w = int8(rng, (5, 9, 11)), int8(rng, (4, 5, 3, 3))
    bias = rng.integers(-1000, 1000, 4).astype(np.int32)
    mult = rng.integers(1 << 15, 1 << 16, 4)
    shift = np.full(4, 25)
    mask = rng.random((4, 9, 11)) < 0.4
    mean = rng.integers(0, 127, (4, 9, 11), endpoint=True).astype(np.int8)
    plain = conv3x3(x, w, bias, mult, shift)
    skipped = conv3x3(x, w, bias, mult, shift, mask=mask, mean=mean)
    assert len(np.unique(plain)) > 20                      # a non-degenerate layer
    np.testing.assert_array_equal(skipped[mask], mean[mask])
    np.testing.assert_array_equal(skipped[~mask], plain[~mask])
    with pytest.raises(GoldenError, match="mask must be bool"):
        apply_skip(plain, mask[:, :5], mean)


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 5, 7), (1, 1, 1, 2, 2)])
def test_maxpool_equals_torch(rng, shape):
    x = int8(rng, shape)
    expected = F.max_pool2d(torch.from_numpy(x).float().reshape(-1, *shape[-3:]), 2)
    np.testing.assert_array_equal(maxpool2x2(x).reshape(expected.shape), expected.numpy())


def test_dense_equals_torch(rng):
    x, w = int8(rng, (7, 300)), int8(rng, (20, 300))
    bias = rng.integers(-(1 << 24), 1 << 24, 20).astype(np.int32)
    expected = torch.from_numpy(x).long() @ torch.from_numpy(w).long().T + torch.from_numpy(
        bias).long()
    np.testing.assert_array_equal(dense_acc(x, w, bias), expected.numpy())


@pytest.mark.parametrize("n_seg_books, k, s", [(8, 16, 4), (1, 16, 1), (32, 4, 1), (1, 256, 2)])
def test_codebook_dense_equals_dense_with_the_decoded_weights(rng, n_seg_books, k, s):
    n_in, n_out = 32, 12
    n_seg = n_in // s
    codebooks = int8(rng, (n_seg_books, k, s))
    indices = rng.integers(0, k, (n_out, n_seg))
    books = np.broadcast_to(codebooks, (n_seg, k, s))
    # W[o, j*s:(j+1)*s] = codebook[j][idx[o, j]]
    w = books[np.arange(n_seg), indices].reshape(n_out, n_in)
    x = int8(rng, (5, n_in))
    bias = rng.integers(-1000, 1000, n_out).astype(np.int32)
    np.testing.assert_array_equal(dense_codebook_acc(x, codebooks, indices, bias),
                                  dense_acc(x, w, bias))


def test_input_quantization_drops_the_lowest_bit():
    pixels = np.array([0, 1, 2, 3, 127, 128, 254, 255], np.uint8)
    assert quantize_input(pixels).tolist() == [0, 0, 1, 1, 63, 64, 127, 127]
    assert quantize_input(pixels).dtype == np.int8
    with pytest.raises(GoldenError, match="uint8"):
        quantize_input(pixels.astype(np.int16))


def compose(package, images):
    """The package's network from the public per-op functions, layer by layer."""
    x = quantize_input(images)
    for layer in package.layers:
        a = layer.arrays
        if layer.op == "conv3x3":
            x = conv3x3(x, a["weight"], a["bias"], a["mult"], a["shift"],
                        layer.attrs["stride"], unpack_mask(a["mask"], layer.out_shape),
                        a["mean"])
        elif layer.op == "maxpool2x2":
            x = maxpool2x2(x)
        elif layer.op == "flatten":
            x = x.reshape(len(x), -1)
        else:
            if layer.op == "dense":
                acc = dense_acc(x, a["weight"], a["bias"])
            else:
                n_seg = layer.in_shape[0] // layer.attrs["segment"]
                indices = unpack_indices(a["indices"], layer.attrs["bits"], layer.out_shape[0],
                                         n_seg)
                acc = dense_codebook_acc(x, a["codebooks"], indices, a["bias"])
            x = (acc if layer.attrs["output"] == "int32" else
                 requantize(acc, a["mult"], a["shift"], layer.attrs["relu"], channel_axis=1))
    return x


def test_run_equals_the_ops_composed(tiny_package, rng):
    images = rng.integers(0, 256, (37, 1, 6, 6), dtype=np.uint8)
    logits = golden.run(tiny_package, images)
    assert logits.dtype == np.int32 and logits.shape == (37, 3)
    assert len(np.unique(logits)) > 30
    np.testing.assert_array_equal(logits, compose(tiny_package, images))


@pytest.mark.parametrize("batch_size, workers", [(1, 1), (5, 3), (64, 2)])
def test_run_does_not_depend_on_batching_or_threads(tiny_package, rng, batch_size, workers):
    images = rng.integers(0, 256, (23, 1, 6, 6), dtype=np.uint8)
    expected = GoldenModel(tiny_package, batch_size=1, workers=1).run(images)
    got = GoldenModel(tiny_package, batch_size=batch_size, workers=workers).run(images)
    np.testing.assert_array_equal(got, expected)


def test_macs_are_counted_per_layer(tiny_package, rng):
    model = GoldenModel(tiny_package)
    model.run(rng.integers(0, 256, (4, 1, 6, 6), dtype=np.uint8))
    model.run(rng.integers(0, 256, (3, 1, 6, 6), dtype=np.uint8))
    skipped = int(unpack_mask(tiny_package.layers[0].arrays["mask"], (2, 6, 6)).sum())
    assert 0 < skipped < 72
    counts = {c.name: (c.macs, c.skipped, c.lookups) for c in model.counts()}
    assert counts == {"conv": (7 * 9 * 1 * (72 - skipped), 7 * 9 * 1 * skipped, 0),
                      "pool": (0, 0, 0), "flat": (0, 0, 0),
                      "hidden": (7 * 18 * 6, 0, 0),
                      # LUTs: 3 segments x 8 codewords x 2 inputs; 4 outputs x 3 lookups
                      "books": (7 * 3 * 8 * 2, 0, 7 * 4 * 3),
                      "logits": (7 * 4 * 4 * 1, 0, 7 * 3 * 4)}


def test_run_rejects_images_of_another_shape(tiny_package):
    with pytest.raises(GoldenError, match=r"uint8 \[N, 1, 6, 6\]"):
        golden.run(tiny_package, np.zeros((2, 1, 6, 7), np.uint8))
    with pytest.raises(GoldenError, match="uint8"):
        golden.run(tiny_package, np.zeros((2, 1, 6, 6), np.int8))


def test_golden_and_package_import_neither_torch_nor_amaranth():
    code = ("import sys, velcro.sw.golden, velcro.sw.export.package; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'amaranth', 'velcro') and not m.startswith(('velcro.sw.golden', "
            "'velcro.sw.export.package', 'velcro.sw.export.schema', 'velcro.sw.export.bits', "
            "'velcro.sw.export.ops', 'velcro.sw.export.fields', 'velcro.sw.errors', "
            "'velcro.sw.files')) "
            "and m not in ('velcro', 'velcro.sw', 'velcro.sw.export')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
