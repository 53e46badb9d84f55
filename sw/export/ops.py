"""The ops of a package: their fields, the shapes they produce and the arrays they carry.

:mod:`velcro.sw.export.schema` checks a manifest layer by layer with this table; the
integer meaning of every op is :mod:`velcro.sw.golden`'s. This module imports only
NumPy and the standard library.

Ops with one input: ``conv3x3``, ``conv``, ``maxpool2x2``, ``maxpool``, ``avgpool``,
``flatten``, ``dense``, ``dense_codebook``; with two: ``add``; with two or more:
``concat``. ``conv3x3`` and ``maxpool2x2`` are the special cases the kernel runs
(3x3 convolution, padding 1, ReLU, always tapped; 2x2 pooling, stride 2); the
exporter writes them wherever a layer has that form.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from . import fields
from .bits import index_run_bytes
from .fields import MAX_ARRAY_BYTES, MAX_DIM, fail

INT8_MIN, INT8_MAX = -128, 127


class OpError(ValueError):
    """A field of a layer that its op does not allow: ``(field, message)``."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def pool_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output length of a pooling window along one axis (PyTorch's rule).

    ``(size + 2 p - k) / s + 1`` rounded down, or up with ``ceil_mode``; in ceil mode a
    last window that would start in the right padding is dropped.
    """
    span = size + 2 * padding - kernel
    if span < 0:
        raise OpError("kernel", f"a window of {kernel} does not fit {size} padded by "
                      f"{padding}")
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def conv_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis, ``(size + 2 p - k) // s + 1``."""
    span = size + 2 * padding - kernel
    if span < 0:
        raise OpError("kernel", f"a kernel of {kernel} does not fit {size} padded by "
                      f"{padding}")
    return span // stride + 1


# --- field checkers: each takes (value, path) and raises through ``fail`` ---------------

def _pair_of(lo: int, hi: int):
    def check(value, path):
        if not isinstance(value, list) or len(value) != 2:
            fail(path, f"expected a pair [a, b], got {fields.show(value)}")
        return tuple(fields.integer(v, f"{path}[{i}]", lo, hi) for i, v in enumerate(value))
    return check


def _int(lo: int, hi: int):
    return lambda value, path: fields.integer(value, path, lo, hi)


def _clamp(value, path):
    lo, hi = _pair_of(INT8_MIN, INT8_MAX)(value, path)
    if lo not in (INT8_MIN, 0) or hi < max(lo, 0):
        fail(path, f"expected [-128, 127] or [0, hi] with 0 <= hi <= 127, got {[lo, hi]}")
    return (lo, hi)


def _tap(value, path):
    return fields.string(value, path, fields.NAME, nullable=True)


def _choice(*options):
    return lambda value, path: fields.choice(value, path, options)


_SKIPPED = _int(0, MAX_ARRAY_BYTES * 8)
_POOL = {"kernel": _pair_of(1, MAX_DIM), "stride": _pair_of(1, MAX_DIM),
         "padding": _pair_of(0, MAX_DIM), "ceil_mode": fields.boolean}

#: Per op: the fields beyond the common ones, each with its checker ``(value, path)``.
ATTRS: dict[str, dict[str, Callable]] = {
    "conv3x3": {"stride": _choice(1, 2), "skipped": _SKIPPED},
    "conv": {"kernel": _pair_of(1, MAX_DIM), "stride": _pair_of(1, MAX_DIM),
             "padding": _pair_of(0, MAX_DIM), "groups": _int(1, MAX_DIM),
             "clamp": _clamp, "tap": _tap, "skipped": _SKIPPED},
    "add": {"clamp": _clamp, "tap": _tap, "skipped": _SKIPPED},
    "concat": {},
    "maxpool2x2": {},
    "maxpool": dict(_POOL),
    "avgpool": {**_POOL, "count_include_pad": fields.boolean},
    "flatten": {},
    "dense": {"relu": fields.boolean, "output": _choice("int8", "int32")},
    "dense_codebook": {"relu": fields.boolean, "output": _choice("int8", "int32"),
                       "bits": _int(1, 16), "segment": _int(1, MAX_DIM),
                       "shared": fields.boolean,
                       "weight_scale": lambda value, path: fields.number(value, path,
                                                                         lo_open=True)},
}
DENSE = ("dense", "dense_codebook")
#: Ops whose output scale is their input's.
SAME_SCALE = ("maxpool2x2", "maxpool", "avgpool", "flatten")
IN_NDIM = {op: 1 if op in DENSE else 3 for op in ATTRS}
OUT_NDIM = {op: 1 if op in DENSE + ("flatten",) else 3 for op in ATTRS}
#: How many inputs each op takes: (at least, at most).
ARITY = {op: (1, 1) for op in ATTRS} | {"add": (2, 2), "concat": (2, 64)}


def tapped(op: str, attrs: dict) -> bool:
    """Whether a layer's output is a VELCRO activation (it has a mask and means)."""
    return op == "conv3x3" or (op in ("conv", "add") and attrs.get("tap") is not None)


def clamp_of(op: str, attrs: dict) -> tuple[int, int]:
    """``(lo, hi)`` of a layer's int8 output."""
    if op == "conv3x3":
        return (0, INT8_MAX)
    return tuple(attrs.get("clamp", (INT8_MIN, INT8_MAX)))


def out_shape(op: str, in_shapes: list[tuple[int, ...]], attrs: dict,
              declared: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape an op produces from its inputs' shapes (dense: the declared one)."""
    first = in_shapes[0]
    if op == "conv3x3":
        stride = attrs["stride"]
        return (declared[0], (first[1] - 1) // stride + 1, (first[2] - 1) // stride + 1)
    if op == "conv":
        (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
        groups = attrs["groups"]
        if first[0] % groups or declared[0] % groups:
            raise OpError("groups", f"{groups} groups do not divide {first[0]} input and "
                          f"{declared[0]} output channels")
        return (declared[0], conv_size(first[1], kh, sh, ph), conv_size(first[2], kw, sw, pw))
    if op == "add":
        if in_shapes[1] != first:
            raise OpError("inputs", f"adds maps of different shapes {list(first)} and "
                          f"{list(in_shapes[1])}")
        return first
    if op == "concat":
        if any(s[1:] != first[1:] for s in in_shapes):
            raise OpError("inputs", f"concatenates maps of different sizes "
                          f"{[list(s) for s in in_shapes]}")
        return (sum(s[0] for s in in_shapes), *first[1:])
    if op == "maxpool2x2":
        if min(first[1:]) < 2:
            raise OpError("in_shape", f"2x2 pooling needs H, W >= 2, got {list(first)}")
        return (first[0], first[1] // 2, first[2] // 2)
    if op in ("maxpool", "avgpool"):
        (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
        if 2 * ph > kh or 2 * pw > kw:
            raise OpError("padding", f"padding {[ph, pw]} exceeds half the window "
                          f"{[kh, kw]}")
        ceil = attrs["ceil_mode"]
        return (first[0], pool_size(first[1], kh, sh, ph, ceil),
                pool_size(first[2], kw, sw, pw, ceil))
    if op == "flatten":
        if math.prod(first) > MAX_DIM:
            raise OpError("in_shape", f"flattens to {math.prod(first)} elements, more than "
                          f"{MAX_DIM}")
        return (math.prod(first),)
    return declared


def expected_arrays(op: str, in_shape, out_shape, attrs: dict,
                    n_inputs: int = 1) -> dict[str, tuple]:
    """``role -> (dtype name, shape)`` of the arrays an op carries."""
    arrays: dict[str, tuple] = {}
    if op in ("conv3x3", "conv"):
        c_out = out_shape[0]
        kernel = (3, 3) if op == "conv3x3" else attrs["kernel"]
        groups = 1 if op == "conv3x3" else attrs["groups"]
        arrays = {"weight": ("int8", (c_out, in_shape[0] // groups, *kernel)),
                  "bias": ("int32", (c_out,)), "mult": ("uint16", (c_out,)),
                  "shift": ("uint8", (c_out,))}
    elif op == "add":
        arrays = {"mult": ("uint16", (2,)), "shift": ("uint8", (1,))}
    elif op == "concat":
        arrays = {"mult": ("uint16", (n_inputs,)), "shift": ("uint8", (n_inputs,))}
    elif op in DENSE:
        n_out = out_shape[0]
        if op == "dense":
            arrays = {"weight": ("int8", (n_out, in_shape[0]))}
        else:
            bits, segment = attrs["bits"], attrs["segment"]
            n_seg = in_shape[0] // segment
            arrays = {"codebooks": ("int8", (1 if attrs["shared"] else n_seg, 1 << bits,
                                             segment)),
                      "indices": ("uint8", (n_seg * index_run_bytes(n_out, bits),))}
        arrays["bias"] = ("int32", (n_out,))
        if attrs["output"] == "int8":
            arrays.update(mult=("uint16", (n_out,)), shift=("uint8", (n_out,)))
    if tapped(op, attrs):
        arrays.update(mask=("uint8", (-(-math.prod(out_shape) // 8),)),
                      mean=("int8", tuple(out_shape)))
    return arrays
