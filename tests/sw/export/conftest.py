"""Shared fixtures of the export tests: taking a package archive apart and putting it
back together, to corrupt it on purpose."""

import io
import json
import zipfile

import pytest

from velcro.sw.export.package import MANIFEST, MANIFEST_SHA256, manifest_seal


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _rezip(files: dict[str, bytes], reseal: bool = True) -> bytes:
    if reseal and MANIFEST in files and MANIFEST_SHA256 in files:
        files = {**files, MANIFEST_SHA256: manifest_seal(files[MANIFEST])}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def members():
    """``members(data)``: every member of the zip archive ``data``, by name."""
    return _members


@pytest.fixture(scope="session")
def rezip():
    """``rezip(files, reseal=True)``: a stored zip archive of ``files`` (name -> bytes), in
    that order; the manifest's checksum is made to match it unless ``reseal`` is false
    (so each test reaches the check it is about)."""
    return _rezip


@pytest.fixture(scope="session")
def with_manifest():
    """``with_manifest(data, edit)``: the archive ``data`` with ``edit`` applied to its
    parsed manifest."""
    def edited(data: bytes, edit) -> bytes:
        files = _members(data)
        manifest = json.loads(files[MANIFEST])
        edit(manifest)
        files[MANIFEST] = json.dumps(manifest).encode()
        return _rezip(files)

    return edited
