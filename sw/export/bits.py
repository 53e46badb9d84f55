"""Bit packing of the package's skip masks and codebook indices.

Both layouts are little-endian bit strings: bit ``b`` of a string is bit ``b % 8``
(LSB first) of byte ``b // 8``, and padding bits are zero.

- A skip mask: element ``f`` of the C-order flattening is bit ``f``
  (:func:`pack_mask`, :func:`unpack_mask`).
- Codebook indices ``idx [n_out, n_seg]`` of ``bits`` bits each, segment-major: for each
  segment ``j``, the indices ``idx[0, j], idx[1, j], ..., idx[n_out-1, j]`` follow each
  other (bit ``b`` of the ``r``-th index of the run is bit ``r*bits + b`` of the run),
  and each segment's run is padded to a whole byte, so segment ``j`` starts at byte
  ``j * ceil(n_out * bits / 8)`` (:func:`pack_indices`, :func:`unpack_indices`). The
  dense engine streams one segment's indices for many output rows at a time.

This module imports only NumPy and the standard library, so the package format, the
golden model and the host runtime use it without torch.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import VQError

__all__ = ["index_dtype", "index_run_bytes", "pack_indices", "pack_mask", "unpack_indices",
           "unpack_mask"]

MAX_INDEX_BITS = 16


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """Bit-pack a boolean skip mask: element ``f`` of the C-order flattening is bit
    ``f % 8`` (LSB first) of byte ``f // 8``."""
    return np.packbits(np.asarray(mask, dtype=bool).ravel(), bitorder="little")


def unpack_mask(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_mask`."""
    count = math.prod(shape)
    return np.unpackbits(packed, count=count, bitorder="little").astype(bool).reshape(shape)


def index_dtype(bits: int) -> type:
    """The dtype of unpacked ``bits``-bit indices: uint8 up to 8 bits, else uint16."""
    return np.uint8 if bits <= 8 else np.uint16


def index_run_bytes(n_out: int, bits: int) -> int:
    """Bytes of one segment's run of ``n_out`` packed ``bits``-bit indices."""
    return -(-n_out * bits // 8)


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) \
            or not 1 <= bits <= MAX_INDEX_BITS:
        raise VQError(f"bits must be an integer in [1, {MAX_INDEX_BITS}] (index width), "
                      f"not {bits!r}")
    return int(bits)


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``indices [n_out, n_seg]`` of ``bits`` bits each into bytes, segment-major
    (see the module's description of the layout)."""
    indices = np.asarray(indices)
    _check_bits(bits)
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
    """Inverse of :func:`pack_indices`: ``[n_out, n_seg]`` of :func:`index_dtype`."""
    _check_bits(bits)
    packed = np.asarray(packed)
    run_bytes = index_run_bytes(n_out, bits)
    if packed.dtype != np.uint8 or packed.shape != (n_seg * run_bytes,):
        raise VQError(f"packed indices for {n_seg} segments of {n_out} {bits}-bit indices "
                      f"must be {n_seg * run_bytes} uint8 bytes, not {packed.dtype} "
                      f"{list(packed.shape)}")
    flat = np.unpackbits(packed.reshape(n_seg, run_bytes), axis=1, count=n_out * bits,
                         bitorder="little")
    weights = np.left_shift(1, np.arange(bits, dtype=np.uint32))
    runs = flat.reshape(n_seg, n_out, bits).astype(np.uint32) @ weights
    return runs.T.astype(index_dtype(bits))
