"""The ``.velcro`` deployment package: one file holding the integer network.

A package is a zip archive whose members are *stored* (not compressed), written
atomically and read strictly: every manifest field is checked, every array is
checked against the manifest (dtype, shape, sha256) before and after it is read, and
anything wrong raises :class:`~velcro.sw.errors.PackageError` naming the field. This
module imports only NumPy and the standard library, so the golden model and the
host runtime can read packages without torch.

Schema version 1
----------------
Members::

    manifest.json                 UTF-8 JSON object (below)
    arrays/<layer>.<role>.npy     one NumPy .npy (format 1.0), C order, little-endian

``manifest.json``::

    format          "velcro-package"
    schema_version  1
    input           {"shape": [C, H, W], "dtype": "uint8", "scale": float}
                    pixels are uint8; the network input is int8 ``pixel >> 1``
                    (golden.quantize_input), worth ``scale`` each
    task            {"name": str, "classes": [int], "class_names": [str]}
                    classes: labels of the specialized task (indices into class_names,
                    the model's output classes)
    velcro          {"criterion": str | null, "thresholds": [float] (one per conv3x3),
                     "C": float}  C = skipped / total conv3x3 output elements
    source          {"model": str | null, "weights": str | null, "data": str | null,
                     "image_size": [H, W] | null, "parameters_sha256": str}
                    how to rebuild the float model and task the package came from
                    (null: the shipped reference model / Fashion-MNIST);
                    parameters_sha256: quantize.parameters_sha256 of the float model
    layers          [layer, ...] in execution order

Every layer has ``name`` (``[A-Za-z0-9_.#-]+``, unique), ``op``, ``in_shape``,
``out_shape``, ``out_scale`` (real value of one output unit) and ``arrays``: a map
``role -> {"file": "arrays/<name>.<role>.npy", "dtype": str, "shape": [int],
"sha256": hex of the array's C-order data bytes}``. The ops:

``conv3x3``  (+ ``stride`` 1 or 2, ``skipped`` int) -- 3x3 convolution, zero padding
    1, bias, requantization, ReLU, VELCRO skip. ``in_shape [C_in, H, W]``, ``out_shape
    [C_out, (H-1)//stride+1, (W-1)//stride+1]``. Arrays: ``weight`` int8 ``[C_out, C_in,
    3, 3]``, ``bias`` int32 ``[C_out]``, ``mult`` uint16 ``[C_out]``, ``shift`` uint8
    ``[C_out]`` (<= 31), ``mask`` uint8 ``[ceil(C_out*H_out*W_out / 8)]``: the skip mask
    bit-packed, element ``(c, y, x)`` is bit ``f % 8`` (LSB first) of byte ``f // 8``
    with ``f = (c*H_out + y)*W_out + x``, padding bits zero, ``skipped`` bits set;
    ``mean`` int8 ``[C_out, H_out, W_out]`` in ``[0, 127]``, zero where not skipped.
``maxpool2x2`` -- ``[C, H, W] -> [C, H//2, W//2]``, no arrays, ``out_scale`` unchanged.
``flatten`` -- ``[C, H, W] -> [C*H*W]`` in C order, no arrays, ``out_scale`` unchanged.
``dense`` (+ ``relu`` bool, ``output`` "int8" | "int32") -- ``[n_in] -> [n_out]``.
    Arrays: ``weight`` int8 ``[n_out, n_in]``, ``bias`` int32 ``[n_out]``, and for int8
    output ``mult``, ``shift`` as for conv3x3. An int32 output is left unrequantized
    (logits); only the last layer has one, and the last layer must have one.
``dense_codebook`` (+ ``relu``, ``output`` as for dense; ``bits`` 1..16, ``segment`` s,
    ``shared`` bool, ``weight_scale`` float) -- a dense layer whose int8 weights are
    codewords, ``W[o, j*s:(j+1)*s] = codebooks[j][idx[o, j]]`` (codebook 0 for every
    segment ``j`` when shared; scalar k-means is ``s = 1`` shared), ``n_seg = n_in / s``.
    Arrays: ``codebooks`` int8 ``[1 if shared else n_seg, 2**bits, s]``, ``indices``
    uint8 ``[n_seg * ceil(n_out*bits / 8)]`` packed segment-major (:func:`unpack_indices`;
    padding bits zero), ``bias`` and, for int8 output, ``mult`` and ``shift``.
    ``weight_scale`` is the real value of one codebook unit (float weights are
    ``weight_scale * W``).

Shapes chain from ``input.shape`` through every layer; ``velcro.C`` must equal the
set mask bits over all conv3x3 output elements. For every layer with weights, the
accumulator bound ``128 * sum_k |weight[o, k]| + |bias[o]|`` must fit int32, so no
int8 input can overflow an accumulator. Limits checked before anything is allocated:
at most 2**30 bytes per array, 2**16 per dimension, 4096 layers, 2**24 bytes of
manifest. Members may come in any order; the set of member names must be exactly the
manifest and the arrays the layers declare.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PackageError

FORMAT = "velcro-package"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

MAX_ARRAY_BYTES = 1 << 30
MAX_DIM = 1 << 16
MAX_LAYERS = 4096
MAX_MANIFEST_BYTES = 1 << 24
MAX_NPY_HEADER = 1 << 12

ACC_MAX = (1 << 31) - 1
_NAME = re.compile(r"[A-Za-z0-9_.#-]{1,128}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in
           ("int8", "uint8", "uint16", "int32")}
# Zip timestamps are fixed so that the same package always yields the same bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass
class Layer:
    """One layer of the integer network.

    ``attrs`` holds the op's own fields (``stride``, ``skipped``, ``relu``,
    ``output``); ``arrays`` maps each role of the op to its array.
    """

    name: str
    op: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    out_scale: float
    attrs: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Package:
    """An integer network ready for deployment, with where it came from."""

    input_shape: tuple[int, int, int]
    input_scale: float
    layers: list[Layer]
    task: dict
    velcro: dict
    source: dict

    @property
    def C(self) -> float:
        return self.velcro["C"]

    def manifest(self) -> dict:
        """The JSON manifest (array hashes computed from the arrays)."""
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "input": {"shape": list(self.input_shape), "dtype": "uint8",
                      "scale": self.input_scale},
            "task": self.task,
            "velcro": self.velcro,
            "source": self.source,
            "layers": [{
                "name": layer.name, "op": layer.op, "in_shape": list(layer.in_shape),
                "out_shape": list(layer.out_shape), "out_scale": layer.out_scale,
                **layer.attrs,
                "arrays": {role: {"file": _member(layer.name, role),
                                  "dtype": array.dtype.name, "shape": list(array.shape),
                                  "sha256": _sha256(array)}
                           for role, array in layer.arrays.items()},
            } for layer in self.layers],
        }


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """Bit-pack a boolean skip mask: element ``f`` of the C-order flattening is bit
    ``f % 8`` (LSB first) of byte ``f // 8``."""
    return np.packbits(np.asarray(mask, dtype=bool).ravel(), bitorder="little")


def unpack_mask(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_mask`."""
    count = math.prod(shape)
    return np.unpackbits(packed, count=count, bitorder="little").astype(bool).reshape(shape)


def _member(name: str, role: str) -> str:
    return f"arrays/{name}.{role}.npy"


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# --- manifest checking -----------------------------------------------------------------

def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(path: str, message: str):
    raise PackageError(f"{path}: {message}")


def _keys(value, path: str, required: set[str]) -> dict:
    if not isinstance(value, dict):
        _fail(path, f"expected an object, got {type(value).__name__}")
    missing = sorted(required - value.keys())
    extra = sorted(value.keys() - required)
    if missing:
        _fail(path, f"missing field {_show(missing[0])}")
    if extra:
        _fail(f"{path}.{extra[0][:40]}", "unknown field")
    return value


def _int(value, path: str, lo: int, hi: int) -> int:
    if type(value) is not int:
        _fail(path, f"expected an integer, got {_show(value)}")
    if not lo <= value <= hi:
        _fail(path, f"expected an integer in [{lo}, {hi}], got {value}")
    return value


def _bool(value, path: str) -> bool:
    if type(value) is not bool:
        _fail(path, f"expected true or false, got {_show(value)}")
    return value


def _float(value, path: str, lo: float = 0.0, hi: float = math.inf,
           lo_open: bool = False) -> float:
    number = value
    if type(value) is int:
        # Python ints are unbounded; float() of a huge one raises OverflowError.
        number = float(value) if abs(value) < 1 << 1000 else math.inf
    if type(value) not in (int, float) or not math.isfinite(number):
        _fail(path, f"expected a finite number, got {_show(value)}")
    if number < lo or number > hi or (lo_open and number == lo):
        bracket = "(" if lo_open else "["
        _fail(path, f"expected a number in {bracket}{lo}, {hi}], got {_show(value)}")
    return number


def _str(value, path: str, pattern: re.Pattern | None = None, nullable: bool = False):
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        _fail(path, f"expected a string, got {_show(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        _fail(path, f"expected a string matching {pattern.pattern}, got {_show(value)}")
    return value


def _list(value, path: str, max_len: int) -> list:
    if not isinstance(value, list):
        _fail(path, f"expected a list, got {type(value).__name__}")
    if len(value) > max_len:
        _fail(path, f"expected at most {max_len} entries, got {len(value)}")
    return value


def _shape(value, path: str, ndim: int) -> tuple[int, ...]:
    value = _list(value, path, ndim)
    if len(value) != ndim:
        _fail(path, f"expected {ndim} dimensions, got {len(value)}")
    return tuple(_int(v, f"{path}[{i}]", 1, MAX_DIM) for i, v in enumerate(value))


def _choice(value, path: str, options: tuple):
    if not any(value == o and type(value) is type(o) for o in options):
        _fail(path, f"expected one of {', '.join(map(repr, options))}, got {_show(value)}")
    return value


def _expect(value, path: str, expected):
    if value != expected or type(value) is not type(expected):
        _fail(path, f"expected {expected!r}, got {_show(value)}")
    return value


# Per op: the fields beyond the common ones, each with its checker.
_ATTRS: dict[str, dict[str, Callable]] = {
    "conv3x3": {"stride": lambda v, p: _choice(v, p, (1, 2)),
                "skipped": lambda v, p: _int(v, p, 0, MAX_ARRAY_BYTES * 8)},
    "maxpool2x2": {},
    "flatten": {},
    "dense": {"relu": _bool,
              "output": lambda v, p: _choice(v, p, ("int8", "int32"))},
    "dense_codebook": {"relu": _bool,
                       "output": lambda v, p: _choice(v, p, ("int8", "int32")),
                       "bits": lambda v, p: _int(v, p, 1, 16),
                       "segment": lambda v, p: _int(v, p, 1, MAX_DIM),
                       "shared": _bool,
                       "weight_scale": lambda v, p: _float(v, p, lo_open=True)},
}
_DENSE = ("dense", "dense_codebook")
_IN_NDIM = {"conv3x3": 3, "maxpool2x2": 3, "flatten": 3, "dense": 1, "dense_codebook": 1}
_OUT_NDIM = {"conv3x3": 3, "maxpool2x2": 3, "flatten": 1, "dense": 1, "dense_codebook": 1}


def _out_shape(op: str, in_shape: tuple[int, ...], attrs: dict, declared: tuple[int, ...]):
    """The output shape an op produces from ``in_shape`` (dense: the declared one)."""
    if op == "conv3x3":
        stride = attrs["stride"]
        return (declared[0], (in_shape[1] - 1) // stride + 1, (in_shape[2] - 1) // stride + 1)
    if op == "maxpool2x2":
        return (in_shape[0], in_shape[1] // 2, in_shape[2] // 2)
    if op == "flatten":
        return (math.prod(in_shape),)
    return declared


def expected_arrays(op: str, in_shape, out_shape, attrs: dict) -> dict[str, tuple]:
    """``role -> (dtype name, shape)`` of the arrays an op carries."""
    if op == "conv3x3":
        c_out = out_shape[0]
        return {"weight": ("int8", (c_out, in_shape[0], 3, 3)), "bias": ("int32", (c_out,)),
                "mult": ("uint16", (c_out,)), "shift": ("uint8", (c_out,)),
                "mask": ("uint8", (-(-math.prod(out_shape) // 8),)),
                "mean": ("int8", tuple(out_shape))}
    if op in _DENSE:
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
        return arrays
    return {}


def index_run_bytes(n_out: int, bits: int) -> int:
    """Bytes of one segment's run of ``n_out`` packed ``bits``-bit indices."""
    return -(-n_out * bits // 8)


def unpack_indices(packed: np.ndarray, bits: int, n_out: int, n_seg: int) -> np.ndarray:
    """Codebook indices ``[n_out, n_seg]`` (int64) from the package's packed stream.

    Segment-major: segment ``j``'s indices ``idx[0, j] .. idx[n_out-1, j]`` form a
    little-endian bit string (bit ``b`` of the ``r``-th index is bit ``(r*bits + b) % 8``
    of byte ``(r*bits + b) // 8`` of the run), zero-padded to a whole byte; segment
    ``j`` starts at byte ``j * ceil(n_out * bits / 8)``. This is the layout of
    :func:`velcro.sw.vq.pack_indices`, read here without that module's torch and faiss.
    """
    run = index_run_bytes(n_out, bits)
    flat = np.unpackbits(np.asarray(packed, np.uint8).reshape(n_seg, run), axis=1,
                         count=n_out * bits, bitorder="little")
    weights = np.left_shift(1, np.arange(bits, dtype=np.int64))
    return (flat.reshape(n_seg, n_out, bits).astype(np.int64) @ weights).T


def codebook_weight(layer: Layer) -> np.ndarray:
    """The int8 ``[n_out, n_in]`` weights of a ``dense_codebook`` layer:
    ``W[o, j*s:(j+1)*s] = codebooks[j][idx[o, j]]`` (codebook 0 for every ``j`` if shared)."""
    n_out, n_in = layer.out_shape[0], layer.in_shape[0]
    n_seg = n_in // layer.attrs["segment"]
    indices = unpack_indices(layer.arrays["indices"], layer.attrs["bits"], n_out, n_seg)
    books = np.broadcast_to(layer.arrays["codebooks"],
                            (n_seg,) + layer.arrays["codebooks"].shape[1:])
    return books[np.arange(n_seg), indices].reshape(n_out, n_in)


@dataclass
class _ArraySpec:
    path: str
    member: str
    dtype: np.dtype
    shape: tuple[int, ...]
    sha256: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _parse_manifest(manifest) -> tuple[Package, dict[tuple[int, str], _ArraySpec]]:
    """Check every manifest field; a package without arrays and the specs of its arrays."""
    m = _keys(manifest, "manifest", {"format", "schema_version", "input", "task", "velcro",
                                     "source", "layers"})
    _expect(m["format"], "manifest.format", FORMAT)
    if type(m["schema_version"]) is not int or m["schema_version"] != SCHEMA_VERSION:
        _fail("manifest.schema_version", f"version {_show(m['schema_version'])} is not supported "
              f"(this velcro reads {SCHEMA_VERSION})")
    inp = _keys(m["input"], "manifest.input", {"shape", "dtype", "scale"})
    input_shape = _shape(inp["shape"], "manifest.input.shape", 3)
    _expect(inp["dtype"], "manifest.input.dtype", "uint8")
    input_scale = _float(inp["scale"], "manifest.input.scale", lo_open=True)

    task = _keys(m["task"], "manifest.task", {"name", "classes", "class_names"})
    _str(task["name"], "manifest.task.name")
    names = _list(task["class_names"], "manifest.task.class_names", MAX_DIM)
    for i, n in enumerate(names):
        _str(n, f"manifest.task.class_names[{i}]")
    classes = _list(task["classes"], "manifest.task.classes", MAX_DIM)
    for i, c in enumerate(classes):
        _int(c, f"manifest.task.classes[{i}]", 0, max(len(names) - 1, 0))

    velcro = _keys(m["velcro"], "manifest.velcro", {"criterion", "thresholds", "C"})
    _str(velcro["criterion"], "manifest.velcro.criterion", nullable=True)
    thresholds = _list(velcro["thresholds"], "manifest.velcro.thresholds", MAX_LAYERS)
    for i, t in enumerate(thresholds):
        _float(t, f"manifest.velcro.thresholds[{i}]", 0.0, 100.0)
    _float(velcro["C"], "manifest.velcro.C", 0.0, 1.0)

    source = _keys(m["source"], "manifest.source", {"model", "weights", "data", "image_size",
                                                    "parameters_sha256"})
    for key in ("model", "weights", "data"):
        _str(source[key], f"manifest.source.{key}", nullable=True)
    if source["image_size"] is not None:
        _shape(source["image_size"], "manifest.source.image_size", 2)
    _str(source["parameters_sha256"], "manifest.source.parameters_sha256", _SHA256)

    entries = _list(m["layers"], "manifest.layers", MAX_LAYERS)
    if not entries:
        _fail("manifest.layers", "expected at least one layer")
    layers, specs, seen = [], {}, set()
    shape, scale = input_shape, input_scale
    for i, entry in enumerate(entries):
        path = f"manifest.layers[{i}]"
        if not isinstance(entry, dict):
            _fail(path, f"expected an object, got {type(entry).__name__}")
        op = _choice(entry.get("op"), f"{path}.op", tuple(_ATTRS))
        _keys(entry, path, {"name", "op", "in_shape", "out_shape", "out_scale", "arrays"}
              | _ATTRS[op].keys())
        name = _str(entry["name"], f"{path}.name", _NAME)
        if name in seen:
            _fail(f"{path}.name", f"duplicate layer name {name!r}")
        seen.add(name)
        in_shape = _shape(entry["in_shape"], f"{path}.in_shape", _IN_NDIM[op])
        if in_shape != shape:
            _fail(f"{path}.in_shape", f"expected {list(shape)} (the previous output), "
                  f"got {list(in_shape)}")
        attrs = {key: check(entry[key], f"{path}.{key}") for key, check in _ATTRS[op].items()}
        declared = _shape(entry["out_shape"], f"{path}.out_shape", _OUT_NDIM[op])
        if op == "flatten" and math.prod(in_shape) > MAX_DIM:
            _fail(f"{path}.in_shape", f"flattens to {math.prod(in_shape)} elements, "
                  f"more than {MAX_DIM}")
        out_shape = _out_shape(op, in_shape, attrs, declared)
        if declared != out_shape:
            _fail(f"{path}.out_shape", f"expected {list(out_shape)}, got {list(declared)}")
        if op == "maxpool2x2" and min(in_shape[1:]) < 2:
            _fail(f"{path}.in_shape", f"2x2 pooling needs H, W >= 2, got {list(in_shape)}")
        out_scale = _float(entry["out_scale"], f"{path}.out_scale", lo_open=True)
        if op in ("maxpool2x2", "flatten") and out_scale != scale:
            _fail(f"{path}.out_scale", f"expected {scale!r} (unchanged by {op}), "
                  f"got {out_scale!r}")
        if op == "dense_codebook" and in_shape[0] % attrs["segment"]:
            _fail(f"{path}.segment", f"segment length {attrs['segment']} does not divide the "
                  f"{in_shape[0]} inputs")
        if op in _DENSE and attrs["output"] == "int32":
            if attrs["relu"]:
                _fail(f"{path}.relu", "an int32 (logits) output has no ReLU")
            if i != len(entries) - 1:
                _fail(f"{path}.output", "only the last layer may output int32 logits")
        elif i == len(entries) - 1:
            if op not in _DENSE:
                _fail(f"{path}.op", f"the last layer must be dense (the logits), got {op}")
            _fail(f"{path}.output", "the last layer must output int32 logits")
        expected = expected_arrays(op, in_shape, out_shape, attrs)
        arrays = _keys(entry["arrays"], f"{path}.arrays", set(expected))
        for role, (dtype, ashape) in expected.items():
            apath = f"{path}.arrays.{role}"
            a = _keys(arrays[role], apath, {"file", "dtype", "shape", "sha256"})
            _expect(a["file"], f"{apath}.file", _member(name, role))
            _expect(a["dtype"], f"{apath}.dtype", dtype)
            _expect(a["shape"], f"{apath}.shape", list(ashape))
            spec = _ArraySpec(apath, a["file"], _DTYPES[dtype], ashape,
                              _str(a["sha256"], f"{apath}.sha256", _SHA256))
            if spec.nbytes > MAX_ARRAY_BYTES:
                _fail(f"{apath}.shape", f"{spec.nbytes} bytes exceeds the limit of "
                      f"{MAX_ARRAY_BYTES}")
            specs[(i, role)] = spec
        layers.append(Layer(name, op, in_shape, out_shape, out_scale, attrs))
        shape, scale = out_shape, out_scale
    n_conv = sum(layer.op == "conv3x3" for layer in layers)
    if len(thresholds) != n_conv:
        _fail("manifest.velcro.thresholds", f"expected one threshold per conv3x3 layer "
              f"({n_conv}), got {len(thresholds)}")
    n_out = layers[-1].out_shape[0]
    if len(names) != n_out:
        _fail("manifest.task.class_names", f"expected one name per output ({n_out}), "
              f"got {len(names)}")
    package = Package(input_shape, input_scale, layers, task, velcro, source)
    return package, specs


def _check_values(package: Package) -> None:
    """Checks on array contents: mask padding and counts, means, shifts, accumulator range."""
    total = skipped = 0
    for i, layer in enumerate(package.layers):
        path = f"manifest.layers[{i}]"
        a = layer.arrays
        if "shift" in a and a["shift"].size and int(a["shift"].max()) > 31:
            _fail(f"{path}.arrays.shift", f"shift {int(a['shift'].max())} exceeds 31")
        if layer.op == "dense_codebook":
            n_out, bits = layer.out_shape[0], layer.attrs["bits"]
            run_bits = np.unpackbits(a["indices"].reshape(-1, index_run_bytes(n_out, bits)),
                                     axis=1, bitorder="little")
            if run_bits[:, n_out * bits:].any():
                _fail(f"{path}.arrays.indices", "padding bits after a segment's last index "
                      "are set")
        weight = (codebook_weight(layer) if layer.op == "dense_codebook"
                  else a.get("weight"))
        if weight is not None:
            # |x| <= 128 for int8 inputs: the accumulator bound of every output.
            l1 = np.abs(weight.astype(np.int64)).reshape(len(weight), -1).sum(1)
            worst = int((128 * l1 + np.abs(a["bias"].astype(np.int64))).max())
            if worst > ACC_MAX:
                _fail(f"{path}.arrays.{'weight' if 'weight' in a else 'codebooks'}",
                      f"accumulators may reach {worst}, beyond int32")
        if layer.op != "conv3x3":
            continue
        count = math.prod(layer.out_shape)
        bits = np.unpackbits(a["mask"], bitorder="little")
        if bits[count:].any():
            _fail(f"{path}.arrays.mask", "padding bits after the last element are set")
        mask = bits[:count].astype(bool).reshape(layer.out_shape)
        if int(mask.sum()) != layer.attrs["skipped"]:
            _fail(f"{path}.skipped", f"expected {int(mask.sum())} (set bits of the mask), "
                  f"got {layer.attrs['skipped']}")
        mean = a["mean"]
        if mean.size and (mean.min() < 0 or (mean[~mask] != 0).any()):
            _fail(f"{path}.arrays.mean", "means must lie in [0, 127] where skipped and be 0 "
                  "elsewhere")
        total += count
        skipped += int(mask.sum())
    C = skipped / total if total else 0.0
    if not math.isclose(C, package.velcro["C"], rel_tol=1e-9, abs_tol=1e-12):
        _fail("manifest.velcro.C", f"expected {C!r} (skipped / total conv outputs), "
              f"got {package.velcro['C']!r}")


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
            raise PackageError(f"manifest.json: duplicate key {_show(key)}")
        result[key] = value
    return result


def _reject_constant(name):
    raise PackageError(f"manifest.json: {name} is not a number")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        _fail(info.filename, f"declares {info.file_size} bytes, more than the {limit} expected")
    with _reading(info.filename), zf.open(info) as f:
        data = f.read(limit + 1)
    if len(data) != info.file_size:
        _fail(info.filename, f"holds {len(data)} bytes, the zip directory says {info.file_size}")
    return data


def _read_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, spec: _ArraySpec) -> np.ndarray:
    raw = _read_member(zf, info, spec.nbytes + MAX_NPY_HEADER)
    with _reading(spec.member):
        f = io.BytesIO(raw)
        version = np.lib.format.read_magic(f)
        if version != (1, 0):
            _fail(spec.member, f"expected .npy format 1.0, got {version}")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(
            f, max_header_size=MAX_NPY_HEADER)
        offset = f.tell()
    if dtype != spec.dtype:
        _fail(f"{spec.path}.dtype", f"the .npy file holds {dtype}, the manifest says "
              f"{spec.dtype.name}")
    if tuple(shape) != spec.shape or fortran:
        _fail(f"{spec.path}.shape", f"the .npy file holds {list(shape)}"
              f"{' in Fortran order' if fortran else ''}, the manifest says {list(spec.shape)}")
    if len(raw) != offset + spec.nbytes:
        _fail(spec.member, f"holds {len(raw) - offset} data bytes, expected {spec.nbytes}")
    with _reading(spec.member):
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    if hashlib.sha256(raw[offset:]).hexdigest() != spec.sha256:
        _fail(f"{spec.path}.sha256", "does not match the array data")
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
            _fail("zip archive", "duplicate member names")
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                _fail(info.filename, "members must be stored, neither compressed nor encrypted")
        by_name = dict(zip(names, infos, strict=True))
        if MANIFEST not in by_name:
            _fail("zip archive", f"no {MANIFEST}")
        raw = _read_member(zf, by_name[MANIFEST], MAX_MANIFEST_BYTES)
        with _reading(MANIFEST):
            manifest = json.loads(raw.decode("utf-8"), object_pairs_hook=_json_object,
                                  parse_constant=_reject_constant)
        package, specs = _parse_manifest(manifest)
        expected = {MANIFEST} | {spec.member for spec in specs.values()}
        if set(names) != expected:
            odd = sorted(set(names) ^ expected)[0]
            _fail(odd, "missing from the archive" if odd in expected else "unexpected member")
        for (i, role), spec in specs.items():
            package.layers[i].arrays[role] = _read_array(zf, by_name[spec.member], spec)
    _check_values(package)
    return package


# --- writing ---------------------------------------------------------------------------

def check(package: Package) -> dict:
    """Check an in-memory package as :func:`load` would; return its manifest."""
    manifest = package.manifest()
    parsed, specs = _parse_manifest(json.loads(json.dumps(manifest)))
    for (i, role), spec in specs.items():
        array = package.layers[i].arrays[role]
        if array.dtype != spec.dtype or array.shape != spec.shape:
            _fail(spec.path, f"array is {array.dtype} {list(array.shape)}")
        parsed.layers[i].arrays[role] = array
    _check_values(parsed)
    return manifest


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), version=(1, 0),
                              allow_pickle=False)
    return buffer.getvalue()


def save(package: Package, path: Path) -> None:
    """Check ``package`` and write it to ``path`` atomically.

    The archive goes to a temporary file in the same folder, is flushed to disk and
    renamed over ``path``; on any failure (including an interrupt) the temporary file
    is removed and a previous ``path`` stays as it was.
    """
    manifest = check(package)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
                zf.writestr(_zipinfo(MANIFEST),
                            json.dumps(manifest, indent=1, allow_nan=False).encode())
                for layer in package.layers:
                    for role, array in layer.arrays.items():
                        zf.writestr(_zipinfo(_member(layer.name, role)), _npy(array))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _zipinfo(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info
