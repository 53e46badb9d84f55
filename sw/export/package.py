"""The ``.velcro`` deployment package: one file holding the integer network.

A package is a zip archive whose members are *stored* (not compressed), written
atomically and read strictly: every manifest field is checked, every array is
checked against the manifest (dtype, shape, sha256) before and after it is read, and
anything wrong raises :class:`~velcro.sw.errors.PackageError` naming the field. This
module imports only NumPy and the standard library, so the golden model and the
host runtime can read packages without torch.

Members::

    manifest.json                 UTF-8 JSON object (:mod:`velcro.sw.export.schema`)
    manifest.sha256               hex sha256 of manifest.json's bytes, and a newline
    arrays/<layer>.<role>.npy     one NumPy .npy (format 1.0), C order, little-endian

The manifest is covered like the arrays: its sha256 is checked before it is parsed,
as every array's sha256 (in the manifest) is checked before the array is used. Members
may come in any order; the set of member names must be exactly the manifest, its
checksum and the arrays the layers declare. Limits checked before anything is read: 2**24 bytes
of manifest, 2**12 bytes of .npy header, and the array sizes of the schema.

The schema's :class:`Package`, :class:`Layer` and :func:`codebook_weight` are part of
this module's interface, beside :func:`load`, :func:`loads`, :func:`check` and
:func:`save`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from ..errors import PackageError
from ..files import atomic_write
from .schema import (
    ArraySpec,
    Layer,
    Package,
    array_member,
    check_values,
    codebook_weight,
    fail,
    parse_manifest,
    show,
)

__all__ = ["MANIFEST", "MANIFEST_SHA256", "Layer", "Package", "check", "codebook_weight",
           "load", "loads", "save"]

MANIFEST = "manifest.json"
MANIFEST_SHA256 = "manifest.sha256"
MAX_MANIFEST_BYTES = 1 << 24
MAX_NPY_HEADER = 1 << 12
# Zip timestamps are fixed so that the same package always yields the same bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)


# --- reading ---------------------------------------------------------------------------

@contextlib.contextmanager
def _reading(what: str):
    """Turn any failure of the zip, JSON or .npy parsers into a PackageError.

    Those parsers raise many exception types for malformed input (BadZipFile,
    EOFError, struct.error, UnicodeDecodeError, ValueError, zlib.error, ...).
    """
    try:
        yield
    except PackageError:
        raise
    except Exception as e:
        raise PackageError(f"{what}: {type(e).__name__}: {str(e)[:200]}") from None


def _json_object(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise PackageError(f"manifest.json: duplicate key {show(key)}")
        result[key] = value
    return result


def _reject_constant(name):
    raise PackageError(f"manifest.json: {name} is not a number")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        fail(info.filename, f"declares {info.file_size} bytes, more than the {limit} expected")
    with _reading(info.filename), zf.open(info) as f:
        data = f.read(limit + 1)
    if len(data) != info.file_size:
        fail(info.filename, f"holds {len(data)} bytes, the zip directory says {info.file_size}")
    return data


def _read_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, spec: ArraySpec) -> np.ndarray:
    raw = _read_member(zf, info, spec.nbytes + MAX_NPY_HEADER)
    with _reading(spec.member):
        f = io.BytesIO(raw)
        version = np.lib.format.read_magic(f)
        if version != (1, 0):
            fail(spec.member, f"expected .npy format 1.0, got {version}")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(
            f, max_header_size=MAX_NPY_HEADER)
        offset = f.tell()
    if dtype != spec.dtype:
        fail(f"{spec.path}.dtype", f"the .npy file holds {dtype}, the manifest says "
              f"{spec.dtype.name}")
    if tuple(shape) != spec.shape or fortran:
        fail(f"{spec.path}.shape", f"the .npy file holds {list(shape)}"
              f"{' in Fortran order' if fortran else ''}, the manifest says {list(spec.shape)}")
    if len(raw) != offset + spec.nbytes:
        fail(spec.member, f"holds {len(raw) - offset} data bytes, expected {spec.nbytes}")
    with _reading(spec.member):
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    if hashlib.sha256(raw[offset:]).hexdigest() != spec.sha256:
        fail(f"{spec.path}.sha256", "does not match the array data")
    return array


def loads(data: bytes) -> Package:
    """Read a package from bytes; see :func:`load`."""
    return _read(io.BytesIO(data))


def load(path: Path) -> Package:
    """Read and check a ``.velcro`` package.

    Raises
    ------
    PackageError
        For anything wrong with the file, naming the field; no other exception.
    """
    path = Path(path)
    if not path.is_file():
        raise PackageError(f"{path}: no such package file")
    try:
        with _reading(str(path)), open(path, "rb") as f:
            return _read(f)
    except PackageError as e:
        raise PackageError(f"{path}: {e}") from None


def _read(f) -> Package:
    with _reading("zip archive"):
        zf = zipfile.ZipFile(f)
    with zf:
        with _reading("zip archive"):
            infos = zf.infolist()
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            fail("zip archive", "duplicate member names")
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                fail(info.filename, "members must be stored, neither compressed nor encrypted")
        by_name = dict(zip(names, infos, strict=True))
        if MANIFEST not in by_name:
            fail("zip archive", f"no {MANIFEST}")
        raw = _read_member(zf, by_name[MANIFEST], MAX_MANIFEST_BYTES)
        if MANIFEST_SHA256 not in by_name:
            fail("zip archive", f"no {MANIFEST_SHA256} (a package from an earlier velcro: "
                 "export it again)")
        seal = _read_member(zf, by_name[MANIFEST_SHA256], 65)
        if seal != manifest_seal(raw):
            fail(MANIFEST_SHA256, f"does not match {MANIFEST} (the manifest was changed "
                 "after export)")
        with _reading(MANIFEST):
            manifest = json.loads(raw.decode("utf-8"), object_pairs_hook=_json_object,
                                  parse_constant=_reject_constant)
        package, specs = parse_manifest(manifest)
        expected = {MANIFEST, MANIFEST_SHA256} | {spec.member for spec in specs.values()}
        if set(names) != expected:
            odd = sorted(set(names) ^ expected)[0]
            fail(odd, "missing from the archive" if odd in expected else "unexpected member")
        for (i, role), spec in specs.items():
            package.layers[i].arrays[role] = _read_array(zf, by_name[spec.member], spec)
    check_values(package)
    return package


# --- writing ---------------------------------------------------------------------------

def check(package: Package) -> dict:
    """Check an in-memory package as :func:`load` would; return its manifest."""
    manifest = package.manifest()
    parsed, specs = parse_manifest(json.loads(json.dumps(manifest)))
    for (i, role), spec in specs.items():
        array = package.layers[i].arrays[role]
        if array.dtype != spec.dtype or array.shape != spec.shape:
            fail(spec.path, f"array is {array.dtype} {list(array.shape)}")
        parsed.layers[i].arrays[role] = array
    check_values(parsed)
    return manifest


def manifest_seal(raw: bytes) -> bytes:
    """The ``manifest.sha256`` member for the manifest bytes ``raw``."""
    return hashlib.sha256(raw).hexdigest().encode() + b"\n"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), version=(1, 0),
                              allow_pickle=False)
    return buffer.getvalue()


def save(package: Package, path: Path) -> None:
    """Check ``package`` and write it to ``path`` atomically (:mod:`velcro.sw.files`): on
    any failure, an interrupt included, a previous ``path`` stays as it was."""
    manifest = check(package)
    raw = json.dumps(manifest, indent=1, allow_nan=False).encode()
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(_zipinfo(MANIFEST), raw)
        zf.writestr(_zipinfo(MANIFEST_SHA256), manifest_seal(raw))
        for layer in package.layers:
            for role, array in layer.arrays.items():
                zf.writestr(_zipinfo(array_member(layer.name, role)), _npy(array))


def _zipinfo(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info
