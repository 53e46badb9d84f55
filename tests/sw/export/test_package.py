import errno
import hashlib
import io
import json
import os
import pickle
import struct
import tempfile
import tracemalloc
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from velcro.sw.errors import PackageError
from velcro.sw.export.package import (
    MANIFEST,
    MANIFEST_SHA256,
    load,
    loads,
    save,
)

FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def npy(array, allow_pickle=False, version=(1, 0)) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version, allow_pickle=allow_pickle)
    return buffer.getvalue()


def test_save_then_load_gives_back_the_package(tiny_package, tmp_path):
    save(tiny_package, tmp_path / "p.velcro")
    loaded = load(tmp_path / "p.velcro")
    assert loaded.manifest() == tiny_package.manifest()
    for a, b in zip(loaded.layers, tiny_package.layers, strict=True):
        assert a.arrays.keys() == b.arrays.keys()
        for role in a.arrays:
            np.testing.assert_array_equal(a.arrays[role], b.arrays[role])
            assert a.arrays[role].dtype == b.arrays[role].dtype


def test_manifest_hashes_are_sha256_of_the_array_bytes(members, tiny_package_bytes):
    import hashlib

    files = members(tiny_package_bytes)
    manifest = json.loads(files[MANIFEST])
    weight = manifest["layers"][0]["arrays"]["weight"]
    array = np.load(io.BytesIO(files[weight["file"]]))
    assert weight["sha256"] == hashlib.sha256(array.tobytes()).hexdigest()
    assert weight["dtype"] == "int8" and weight["shape"] == [2, 1, 3, 3]


def test_the_same_package_is_written_byte_for_byte_the_same(tiny_package, tmp_path):
    save(tiny_package, tmp_path / "a.velcro")
    save(tiny_package, tmp_path / "b.velcro")
    assert (tmp_path / "a.velcro").read_bytes() == (tmp_path / "b.velcro").read_bytes()


def test_missing_file_is_a_package_error(tmp_path):
    with pytest.raises(PackageError, match="no such package file"):
        load(tmp_path / "nothing.velcro")


def test_duplicate_manifest_keys_and_nan_are_rejected(members, rezip, tiny_package_bytes):
    files = members(tiny_package_bytes)
    text = files[MANIFEST].decode()
    files[MANIFEST] = text.replace('"format"', '"format": 1, "format"', 1).encode()
    with pytest.raises(PackageError, match="duplicate key 'format'"):
        loads(rezip(files))
    files[MANIFEST] = text.replace('"scale": 0.00784313725490196', '"scale": NaN').encode()
    assert b"NaN" in files[MANIFEST]
    with pytest.raises(PackageError, match="NaN"):
        loads(rezip(files))


@pytest.mark.parametrize("role, replacement, field", [
    ("weight", np.zeros((2, 1, 3, 3), np.int16), "weight.dtype"),
    ("weight", np.zeros((2, 9), np.int8), "weight.shape"),
    ("weight", np.asfortranarray(np.zeros((2, 1, 3, 3), np.int8)), "weight.shape"),
    ("bias", np.zeros(2, ">i4"), "bias.dtype"),
])
def test_array_not_matching_the_manifest_is_named(members, rezip, tiny_package_bytes, role,
                                                  replacement, field):
    files = members(tiny_package_bytes)
    files[f"arrays/conv.{role}.npy"] = npy(replacement)
    with pytest.raises(PackageError, match=field):
        loads(rezip(files))


class Trap:
    """Unpickling this sets a flag: loading a package must never unpickle."""

    sprung = False

    def __reduce__(self):
        return (Trap._spring, ())

    @staticmethod
    def _spring():
        Trap.sprung = True


def test_object_arrays_are_rejected_without_unpickling(members, rezip, tiny_package_bytes):
    files = members(tiny_package_bytes)
    trap = np.empty((2, 1, 3, 3), dtype=object)
    trap[...] = Trap()
    files["arrays/conv.weight.npy"] = npy(trap, allow_pickle=True)
    Trap.sprung = False
    with pytest.raises(PackageError, match="weight.dtype"):
        loads(rezip(files))
    assert not Trap.sprung
    pickle.loads(pickle.dumps(Trap()))
    assert Trap.sprung   # the trap works: loads() really did not unpickle


def test_members_must_be_stored_and_complete(members, rezip, tiny_package_bytes):
    files = members(tiny_package_bytes)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    with pytest.raises(PackageError, match="stored"):
        loads(buffer.getvalue())
    extra = dict(files, **{"arrays/extra.npy": npy(np.zeros(1, np.int8))})
    with pytest.raises(PackageError, match="arrays/extra.npy: unexpected member"):
        loads(rezip(extra))
    del files["arrays/logits.bias.npy"]
    with pytest.raises(PackageError, match="arrays/logits.bias.npy: missing"):
        loads(rezip(files))


def patch_sizes(data: bytes, member: str, size: int) -> bytes:
    """Overwrite a member's uncompressed size in its zip headers (no other change)."""
    data = bytearray(data)
    name = member.encode()
    for signature, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            name_at = start + (46 if signature == b"PK\x01\x02" else 30)
            if data[name_at:name_at + len(name)] == name:
                struct.pack_into("<I", data, start + offset, size)
            start += 4
    return bytes(data)


@pytest.mark.parametrize("member", [MANIFEST, "arrays/hidden.weight.npy"])
def test_huge_declared_member_sizes_fail_before_reading(tiny_package_bytes, member):
    data = patch_sizes(tiny_package_bytes, member, 0xFFFFFFF0)
    tracemalloc.start()
    try:
        with pytest.raises(PackageError, match="declares 4294967280 bytes"):
            loads(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_huge_shape_in_npy_header_is_rejected(members, rezip, tiny_package_bytes):
    files = members(tiny_package_bytes)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|i1", "fortran_order": False, "shape": (1 << 40,)})
    files["arrays/conv.weight.npy"] = header.getvalue() + bytes(18)
    with pytest.raises(PackageError, match="weight.shape"):
        loads(rezip(files))


# --- fuzzing: nothing but PackageError, whatever the bytes ------------------------------

@FUZZ
@given(data=st.data())
def test_truncated_package_is_a_package_error(tiny_package_bytes, data):
    n = data.draw(st.integers(0, len(tiny_package_bytes) - 1))
    with pytest.raises(PackageError):
        loads(tiny_package_bytes[:n])


@FUZZ
@given(data=st.data())
def test_flipped_bytes_are_detected_or_harmless(tiny_package_bytes, data):
    corrupt = bytearray(tiny_package_bytes)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(corrupt) - 1))
        corrupt[at] ^= data.draw(st.integers(1, 255))
    try:
        package = loads(bytes(corrupt))
    except PackageError:
        return
    # Only bytes nobody reads (timestamps, attributes) may change without an error.
    assert package.manifest() == loads(tiny_package_bytes).manifest()


def json_values():
    return st.recursive(
        st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
        | st.sampled_from([0, 1, 2, 31, 32, 65536, 1 << 31, -1, 10 ** 300])
        | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
        | st.sampled_from(["int8", "int32", "conv3x3", "dense", "0" * 64]),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6), children, max_size=3),
        max_leaves=8)


def locations(value, path=()):
    """Every (container path, key) in a JSON value."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield path, key
            yield from locations(child, path + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield path, i
            yield from locations(child, path + (i,))


@FUZZ
@given(data=st.data())
def test_mutated_manifest_is_rejected_or_read_as_written(members, rezip, tiny_package_bytes, data):
    files = members(tiny_package_bytes)
    manifest = json.loads(files[MANIFEST])
    path, key = data.draw(st.sampled_from(list(locations(manifest))))
    container = manifest
    for step in path:
        container = container[step]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        container[key] = data.draw(json_values())
    elif action == "delete":
        del container[key]
    elif isinstance(container, dict):
        container[data.draw(st.text(max_size=6))] = data.draw(json_values())
    else:
        container.append(data.draw(json_values()))
    files[MANIFEST] = json.dumps(manifest).encode()
    try:
        package = loads(rezip(files))
    except PackageError:
        return
    assert package.manifest() == manifest


NPY_DTYPES = ["i1", "u1", "<i2", "<u2", "<i4", ">i4", "<i8", "<f4", "<f8", "?", "O"]


@FUZZ
@given(data=st.data())
def test_replaced_array_files_are_rejected_unless_identical(members, rezip, tiny_package_bytes,
                                                            data):
    files = members(tiny_package_bytes)
    member = data.draw(st.sampled_from(sorted(n for n in files if n.endswith(".npy"))))
    original = np.load(io.BytesIO(files[member]))
    dtype = np.dtype(data.draw(st.sampled_from(NPY_DTYPES + [original.dtype.str] * 3)))
    shape = data.draw(st.sampled_from([original.shape, (original.size,), (1,) + original.shape,
                                       (0,), ()]))
    values = data.draw(st.sampled_from(["same", "zeros", "ones"]))
    if values == "same" and dtype.kind in "iu":
        array = original.reshape(-1)[:int(np.prod(shape))].astype(dtype)
        array = np.resize(array, shape)
    else:
        array = (np.ones if values == "ones" else np.zeros)(shape, dtype=dtype)
    version = data.draw(st.sampled_from([(1, 0), (1, 0), (2, 0)]))
    files[member] = npy(array, allow_pickle=dtype.kind == "O", version=version)
    try:
        package = loads(rezip(files))
    except PackageError:
        return
    assert package.manifest() == loads(tiny_package_bytes).manifest()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_interrupted_save_leaves_the_previous_file_and_no_other(members, tiny_package_bytes, data):
    from velcro.sw import files as writer  # the writer that package.save uses

    package = loads(tiny_package_bytes)
    n_members = len(members(tiny_package_bytes))
    # Fail at the k-th member written, at the flush to disk, or at the rename.
    stage = data.draw(st.integers(0, n_members + 1))
    exc = data.draw(st.sampled_from([OSError(errno.ENOSPC, "No space left on device"),
                                     KeyboardInterrupt()]))
    real_writestr = zipfile.ZipFile.writestr
    calls = []

    def failing_writestr(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > stage:
            raise exc
        return real_writestr(self, *args, **kwargs)

    if stage < n_members:
        patcher = mock.patch.object(zipfile.ZipFile, "writestr", failing_writestr)
    elif stage == n_members:
        patcher = mock.patch.object(writer.os, "fsync", side_effect=exc)
    else:
        patcher = mock.patch.object(writer.os, "replace", side_effect=exc)
    old = b"the previous package"
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "net.velcro"
        target.write_bytes(old)
        with patcher, pytest.raises(type(exc)):
            save(package, target)
        assert os.listdir(folder) == ["net.velcro"]
        assert target.read_bytes() == old


def test_the_manifest_is_sealed_by_its_sha256(members, rezip, tiny_package_bytes):
    files = members(tiny_package_bytes)
    assert files[MANIFEST_SHA256] == hashlib.sha256(files[MANIFEST]).hexdigest().encode() + b"\n"
    edited = {**files, MANIFEST: files[MANIFEST].replace(b'"tiny"', b'"tinx"')}
    with pytest.raises(PackageError, match="manifest.sha256: does not match manifest.json"):
        loads(rezip(edited, reseal=False))
    assert loads(rezip(edited)).task["name"] == "tinx"
    unsealed = {k: v for k, v in files.items() if k != MANIFEST_SHA256}
    with pytest.raises(PackageError, match="no manifest.sha256 .*export it again"):
        loads(rezip(unsealed))
