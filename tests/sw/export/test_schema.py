"""The package schema (:mod:`velcro.sw.export.schema`): every manifest field and array
value outside the contract is named, and declared sizes are checked before anything is
allocated. The packages are checked as :func:`~velcro.sw.export.package.loads` and
:func:`~velcro.sw.export.package.check` check them."""

import tracemalloc

import numpy as np
import pytest

from velcro.sw.errors import PackageError
from velcro.sw.export.bits import unpack_mask
from velcro.sw.export.package import check, loads


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(schema_version=3), "manifest.schema_version"),
    (lambda m: m.update(schema_version=True), "manifest.schema_version"),
    (lambda m: m.update(format="velcro-plan"), "manifest.format"),
    (lambda m: m["layers"][0].update(stride=3), r"manifest.layers\[0\].stride"),
    (lambda m: m["layers"][0].update(skipped=0), r"manifest.layers\[0\].skipped"),
    (lambda m: m["layers"][3].pop("relu"), r"manifest.layers\[3\]: missing field 'relu'"),
    (lambda m: m["layers"][3].update(colour="red"), r"manifest.layers\[3\].colour"),
    (lambda m: m["layers"][1].update(out_shape=[2, 3, 4]), r"manifest.layers\[1\].out_shape"),
    (lambda m: m["layers"][5].update(output="int8"), r"manifest.layers\[5\].output"),
    (lambda m: m["layers"][4].update(segment=4), r"manifest.layers\[4\].segment: .*divide"),
    (lambda m: m["layers"][4].update(shared=True),
     r"manifest.layers\[4\].arrays.codebooks.shape"),
    (lambda m: m["layers"][4].update(bits=4), r"manifest.layers\[4\].arrays.codebooks.shape"),
    (lambda m: m["layers"][4].update(bits=17), r"manifest.layers\[4\].bits"),
    (lambda m: m["layers"][5].update(weight_scale=-1.0), r"manifest.layers\[5\].weight_scale"),
    (lambda m: m["layers"][3].update(output="int32"), r"manifest.layers\[3\]"),
    (lambda m: m["layers"][0]["arrays"]["weight"].update(dtype="int16"),
     r"manifest.layers\[0\].arrays.weight.dtype"),
    (lambda m: m["layers"][0]["arrays"]["bias"].update(shape=[3]),
     r"manifest.layers\[0\].arrays.bias.shape"),
    (lambda m: m["layers"][0]["arrays"]["bias"].update(sha256="0" * 64),
     r"manifest.layers\[0\].arrays.bias.sha256"),
    (lambda m: m["velcro"].update(C=0.5), "manifest.velcro.C"),
    (lambda m: m["velcro"].update(thresholds=[]), "manifest.velcro.thresholds"),
    (lambda m: m["task"].update(classes=[7]), r"manifest.task.classes\[0\]"),
    (lambda m: m["input"].update(scale=0), "manifest.input.scale"),
    (lambda m: m["input"].update(scale=10 ** 400), "manifest.input.scale"),
])
def test_bad_manifest_field_is_named(with_manifest, tiny_package_bytes, edit, field):
    with pytest.raises(PackageError, match=field):
        loads(with_manifest(tiny_package_bytes, edit))


def test_codebook_layer_indices_padding_must_be_zero(tiny_package):
    books = tiny_package.layers[4]
    assert books.op == "dense_codebook"
    check(tiny_package)
    # 4 outputs of 3 bits: 12 bits per segment run, 4 padding bits in its second byte.
    books.arrays["indices"] = books.arrays["indices"].copy()
    books.arrays["indices"][1] |= 0x80
    with pytest.raises(PackageError, match=r"layers\[4\].arrays.indices: padding"):
        check(tiny_package)


def test_values_outside_the_contract_are_rejected(tiny_package):
    conv = tiny_package.layers[0]
    conv.arrays["shift"] = np.array([22, 32], np.uint8)
    with pytest.raises(PackageError, match="shift 32 exceeds 31"):
        check(tiny_package)
    conv.arrays["shift"] = np.array([22, 24], np.uint8)
    mean = conv.arrays["mean"]
    mask = unpack_mask(conv.arrays["mask"], conv.out_shape)
    mean[~mask] = 1
    with pytest.raises(PackageError, match="mean"):
        check(tiny_package)
    mean[~mask] = 0
    check(tiny_package)
    conv.arrays["bias"] = np.array([(1 << 31) - 1, 0], np.int32)
    with pytest.raises(PackageError, match="beyond int32"):
        check(tiny_package)


def test_huge_declared_shapes_fail_before_allocating(with_manifest, tiny_package_bytes):
    def huge(m):
        m["input"]["shape"] = [65536, 65536, 65536]
        m["layers"][0]["in_shape"] = [65536, 65536, 65536]
        m["layers"][0]["out_shape"] = [2, 65536, 65536]
        arrays = m["layers"][0]["arrays"]
        arrays["weight"]["shape"] = [2, 65536, 3, 3]
        arrays["mask"]["shape"] = [2 * 65536 * 65536 // 8]
        arrays["mean"]["shape"] = [2, 65536, 65536]

    data = with_manifest(tiny_package_bytes, huge)
    tracemalloc.start()
    try:
        with pytest.raises(PackageError, match=r"layers\[0\].arrays.mean.shape: .* exceeds"):
            loads(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
