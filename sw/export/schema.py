"""The schema of a ``.velcro`` package (version 2): the integer network and its checks.

:class:`Package` and :class:`Layer` hold the network in memory and
:meth:`Package.manifest` gives its ``manifest.json``. :func:`parse_manifest` checks every
manifest field and :func:`check_values` every array's contents; anything wrong raises
:class:`~velcro.sw.errors.PackageError` naming the field. The file that holds a package,
and the reading and writing that run these checks, are :mod:`velcro.sw.export.package`.
This module imports only NumPy and the standard library.

Schema version 1
----------------
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
                    what the package came from, for people: names, never paths of
                    the exporting machine (null: the shipped reference model /
                    Fashion-MNIST); nothing here is ever imported, called or opened;
                    parameters_sha256: quantize.parameters_sha256 of the float model,
                    against which ``velcro run --weights`` checks a float model
    layers          [layer, ...] in execution order (a topological order of the graph)

Every layer has ``name`` (``[A-Za-z0-9_.#-]+``, unique, not ``input``), ``op``,
``inputs`` (the names of the earlier layers it reads, or ``"input"``, the network
input), ``in_shape`` (of its first input), ``out_shape``, ``out_scale`` (real value of
one output unit) and ``arrays``: a map
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
``conv`` (+ ``kernel`` [kh, kw], ``stride`` [sh, sw], ``padding`` [ph, pw], ``groups``,
    ``clamp`` [lo, hi], ``tap`` str | null, ``skipped``) -- any 2-D convolution with zero
    padding (:func:`velcro.sw.golden.conv`): ``out_shape [C_out, (H + 2 ph - kh) // sh +
    1, ...]``; ``clamp`` is the activation: [-128, 127] none, [0, 127] ReLU, [0, hi]
    ReLU6. Arrays ``weight`` int8 ``[C_out, C_in / groups, kh, kw]``, ``bias``, ``mult``,
    ``shift`` as for conv3x3, and, when ``tap`` names the VELCRO activation the output is,
    ``mask`` and ``mean`` as for conv3x3 (means in ``[lo, hi]``); ``skipped`` is 0 untapped.
``add`` (+ ``clamp``, ``tap``, ``skipped``) -- two inputs of one shape,
    ``clamp((a * mult[0] + b * mult[1] + round) >> shift, lo, hi)``
    (:func:`velcro.sw.golden.add`). Arrays ``mult`` uint16 ``[2]``, ``shift`` uint8 ``[1]``,
    ``mask`` and ``mean`` when tapped.
``concat`` -- two or more maps of one size, along channels, each operand requantized
    to the output scale (:func:`velcro.sw.golden.concat`). Arrays ``mult`` uint16 ``[n]``,
    ``shift`` uint8 ``[n]``.
``maxpool`` / ``avgpool`` (+ ``kernel``, ``stride``, ``padding``, ``ceil_mode``;
    avgpool also ``count_include_pad``) -- PyTorch's pooling windows
    (:func:`velcro.sw.export.ops.pool_size`), no arrays, ``out_scale`` unchanged; the
    average rounds half up (:func:`velcro.sw.golden.avgpool`).
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
    uint8 ``[n_seg * ceil(n_out*bits / 8)]`` packed segment-major (:mod:`velcro.sw.export.bits`;
    padding bits zero), ``bias`` and, for int8 output, ``mult`` and ``shift``.
    ``weight_scale`` is the real value of one codebook unit (float weights are
    ``weight_scale * W``).

Shapes follow the inputs from ``input.shape``; every layer's output is read by a later
layer except the last one's, the network's output. The *tapped* layers (every
conv3x3, and conv and add layers with a ``tap``) are the VELCRO activations:
``velcro.thresholds`` has one entry per tapped layer, in order, and ``velcro.C`` must
equal the set mask bits over all their output elements. For every layer with weights, the
accumulator bound ``128 * sum_k |weight[o, k]| + |bias[o]|`` must fit int32, so no
int8 input can overflow an accumulator. Limits checked before anything is allocated:
at most 2**30 bytes per array, 2**16 per dimension, 4096 layers.

Version 1 files (a chain, no ``inputs`` fields, the ops conv3x3, maxpool2x2, flatten,
dense and dense_codebook) are read as the chain they describe.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

import numpy as np

from . import ops
from .bits import index_run_bytes, unpack_indices
from .fields import MAX_ARRAY_BYTES, MAX_DIM, fail, show
from .fields import NAME as _NAME
from .fields import choice as _choice
from .fields import expect as _expect
from .fields import integer as _int
from .fields import items as _list
from .fields import keys as _keys
from .fields import number as _float
from .fields import shape as _shape
from .fields import string as _str
from .ops import DENSE, OpError, expected_arrays, tapped

FORMAT = "velcro-package"
SCHEMA_VERSION = 2
READS = (1, 2)
INPUT = "input"
V1_OPS = ("conv3x3", "maxpool2x2", "flatten", "dense", "dense_codebook")

MAX_LAYERS = 4096

ACC_MAX = (1 << 31) - 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in
           ("int8", "uint8", "uint16", "int32")}


@dataclass
class Layer:
    """One layer of the integer network.

    ``attrs`` holds the op's own fields (``stride``, ``skipped``, ``relu``,
    ``output``, ...); ``arrays`` maps each role of the op to its array; ``inputs`` names
    the layers it reads (empty: the previous layer, or the network input for the first).
    """

    name: str
    op: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    out_scale: float
    attrs: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()


def layer_name(text: str) -> str:
    """``text`` as a valid layer name: characters outside ``[A-Za-z0-9_.#-]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.#-]", "_", text)[:128] or "_"


def layer_inputs(layers: list[Layer]) -> list[tuple[str, ...]]:
    """The inputs of every layer, the previous layer where a layer names none."""
    result, previous = [], INPUT
    for layer in layers:
        result.append(tuple(layer.inputs) or (previous,))
        previous = layer.name
    return result


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

    @property
    def tapped(self) -> list[Layer]:
        """The layers whose outputs are VELCRO activations (they carry masks), in order."""
        return [layer for layer in self.layers if tapped(layer.op, layer.attrs)]

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
                "name": layer.name, "op": layer.op, "inputs": list(inputs),
                "in_shape": list(layer.in_shape),
                "out_shape": list(layer.out_shape), "out_scale": layer.out_scale,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in layer.attrs.items()},
                "arrays": {role: {"file": array_member(layer.name, role),
                                  "dtype": array.dtype.name, "shape": list(array.shape),
                                  "sha256": _sha256(array)}
                           for role, array in layer.arrays.items()},
            } for layer, inputs in zip(self.layers, layer_inputs(self.layers), strict=True)],
        }


def array_member(name: str, role: str) -> str:
    """The archive member that holds the array ``role`` of layer ``name``."""
    return f"arrays/{name}.{role}.npy"


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()



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
class ArraySpec:
    """What the manifest says of one array: its field ``path``, archive member, dtype,
    shape and sha256."""

    path: str
    member: str
    dtype: np.dtype
    shape: tuple[int, ...]
    sha256: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def parse_manifest(manifest) -> tuple[Package, dict[tuple[int, str], ArraySpec]]:
    """Check every manifest field; a package without arrays and the specs of its arrays."""
    m = _keys(manifest, "manifest", {"format", "schema_version", "input", "task", "velcro",
                                     "source", "layers"})
    _expect(m["format"], "manifest.format", FORMAT)
    version = m["schema_version"]
    if type(version) is not int or version not in READS:
        fail("manifest.schema_version", f"version {show(version)} is not supported "
              f"(this velcro reads {' and '.join(map(str, READS))}; re-export the model with "
              "this velcro's 'velcro export')")
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
        fail("manifest.layers", "expected at least one layer")
    layers, specs = [], {}
    shapes: dict[str, tuple[int, ...]] = {INPUT: input_shape}
    scales: dict[str, float] = {INPUT: input_scale}
    unread: set[str] = set()
    allowed = tuple(ops.ATTRS) if version >= 2 else V1_OPS
    previous = INPUT
    for i, entry in enumerate(entries):
        path = f"manifest.layers[{i}]"
        if not isinstance(entry, dict):
            fail(path, f"expected an object, got {type(entry).__name__}")
        op = _choice(entry.get("op"), f"{path}.op", allowed)
        common = {"name", "op", "in_shape", "out_shape", "out_scale", "arrays"}
        _keys(entry, path, common | ({"inputs"} if version >= 2 else set())
              | ops.ATTRS[op].keys())
        name = _str(entry["name"], f"{path}.name", _NAME)
        if name in shapes:
            fail(f"{path}.name", f"duplicate layer name {name!r}" if name != INPUT
                 else f"{INPUT!r} names the network input")
        if version >= 2:
            lo, hi = ops.ARITY[op]
            inputs = _list(entry["inputs"], f"{path}.inputs", hi)
            if len(inputs) < lo:
                fail(f"{path}.inputs", f"{op} takes {lo} inputs or more, got {len(inputs)}")
            for k, reads in enumerate(inputs):
                _str(reads, f"{path}.inputs[{k}]", _NAME)
                if reads not in shapes:
                    fail(f"{path}.inputs[{k}]", f"{reads!r} is not an earlier layer")
            inputs = tuple(inputs)
        else:
            inputs = (previous,)
        in_shapes = [shapes[reads] for reads in inputs]
        for k, reads in enumerate(inputs):
            if len(in_shapes[k]) != ops.IN_NDIM[op]:
                fail(f"{path}.inputs[{k}]", f"{op} needs a {ops.IN_NDIM[op]}-d input, "
                      f"{reads!r} is {list(in_shapes[k])}")
        in_shape = _shape(entry["in_shape"], f"{path}.in_shape", ops.IN_NDIM[op])
        if in_shape != in_shapes[0]:
            fail(f"{path}.in_shape", f"expected {list(in_shapes[0])} (the output of "
                  f"{inputs[0]!r}), got {list(in_shape)}")
        attrs = {key: check(entry[key], f"{path}.{key}")
                 for key, check in ops.ATTRS[op].items()}
        declared = _shape(entry["out_shape"], f"{path}.out_shape", ops.OUT_NDIM[op])
        try:
            out_shape = ops.out_shape(op, in_shapes, attrs, declared)
        except OpError as e:
            fail(f"{path}.{e.field}", str(e))
        if declared != out_shape:
            fail(f"{path}.out_shape", f"expected {list(out_shape)}, got {list(declared)}")
        out_scale = _float(entry["out_scale"], f"{path}.out_scale", lo_open=True)
        if op in ops.SAME_SCALE and out_scale != scales[inputs[0]]:
            fail(f"{path}.out_scale", f"expected {scales[inputs[0]]!r} (unchanged by {op}), "
                  f"got {out_scale!r}")
        if op in ("conv", "add") and attrs["tap"] is None and attrs["skipped"]:
            fail(f"{path}.skipped", "an untapped layer skips nothing")
        if op == "dense_codebook" and in_shape[0] % attrs["segment"]:
            fail(f"{path}.segment", f"segment length {attrs['segment']} does not divide the "
                  f"{in_shape[0]} inputs")
        if op in DENSE and attrs["output"] == "int32":
            if attrs["relu"]:
                fail(f"{path}.relu", "an int32 (logits) output has no ReLU")
            if i != len(entries) - 1:
                fail(f"{path}.output", "only the last layer may output int32 logits")
        elif i == len(entries) - 1:
            if op not in DENSE:
                fail(f"{path}.op", f"the last layer must be dense (the logits), got {op}")
            fail(f"{path}.output", "the last layer must output int32 logits")
        expected = expected_arrays(op, in_shape, out_shape, attrs, len(inputs))
        arrays = _keys(entry["arrays"], f"{path}.arrays", set(expected))
        for role, (dtype, ashape) in expected.items():
            apath = f"{path}.arrays.{role}"
            a = _keys(arrays[role], apath, {"file", "dtype", "shape", "sha256"})
            _expect(a["file"], f"{apath}.file", array_member(name, role))
            _expect(a["dtype"], f"{apath}.dtype", dtype)
            _expect(a["shape"], f"{apath}.shape", list(ashape))
            spec = ArraySpec(apath, a["file"], _DTYPES[dtype], ashape,
                              _str(a["sha256"], f"{apath}.sha256", _SHA256))
            if spec.nbytes > MAX_ARRAY_BYTES:
                fail(f"{apath}.shape", f"{spec.nbytes} bytes exceeds the limit of "
                      f"{MAX_ARRAY_BYTES}")
            specs[(i, role)] = spec
        unread.difference_update(inputs)
        unread.add(name)
        layers.append(Layer(name, op, in_shape, out_shape, out_scale, attrs,
                            inputs=inputs if version >= 2 else ()))
        shapes[name], scales[name], previous = out_shape, out_scale, name
    unread.discard(layers[-1].name)
    if unread:
        first = next(i for i, layer in enumerate(layers) if layer.name in unread)
        fail(f"manifest.layers[{first}]", f"the output of {layers[first].name!r} is never read")
    n_tapped = sum(tapped(layer.op, layer.attrs) for layer in layers)
    if len(thresholds) != n_tapped:
        fail("manifest.velcro.thresholds", f"expected one threshold per tapped layer "
              f"({n_tapped}), got {len(thresholds)}")
    n_out = layers[-1].out_shape[0]
    if len(names) != n_out:
        fail("manifest.task.class_names", f"expected one name per output ({n_out}), "
              f"got {len(names)}")
    package = Package(input_shape, input_scale, layers, task, velcro, source)
    return package, specs


def check_values(package: Package) -> None:
    """Checks on array contents: mask padding and counts, means, shifts, accumulator range."""
    total = skipped = 0
    for i, layer in enumerate(package.layers):
        path = f"manifest.layers[{i}]"
        a = layer.arrays
        if "shift" in a and a["shift"].size and int(a["shift"].max()) > 31:
            fail(f"{path}.arrays.shift", f"shift {int(a['shift'].max())} exceeds 31")
        if layer.op == "dense_codebook":
            n_out, bits = layer.out_shape[0], layer.attrs["bits"]
            run_bits = np.unpackbits(a["indices"].reshape(-1, index_run_bytes(n_out, bits)),
                                     axis=1, bitorder="little")
            if run_bits[:, n_out * bits:].any():
                fail(f"{path}.arrays.indices", "padding bits after a segment's last index "
                      "are set")
        weight = (codebook_weight(layer) if layer.op == "dense_codebook"
                  else a.get("weight"))
        if weight is not None:
            # |x| <= 128 for int8 inputs: the accumulator bound of every output.
            l1 = np.abs(weight.astype(np.int64)).reshape(len(weight), -1).sum(1)
            worst = int((128 * l1 + np.abs(a["bias"].astype(np.int64))).max())
            if worst > ACC_MAX:
                fail(f"{path}.arrays.{'weight' if 'weight' in a else 'codebooks'}",
                      f"accumulators may reach {worst}, beyond int32")
        if not tapped(layer.op, layer.attrs):
            continue
        count = math.prod(layer.out_shape)
        bits = np.unpackbits(a["mask"], bitorder="little")
        if bits[count:].any():
            fail(f"{path}.arrays.mask", "padding bits after the last element are set")
        mask = bits[:count].astype(bool).reshape(layer.out_shape)
        if int(mask.sum()) != layer.attrs["skipped"]:
            fail(f"{path}.skipped", f"expected {int(mask.sum())} (set bits of the mask), "
                  f"got {layer.attrs['skipped']}")
        mean = a["mean"]
        lo, hi = ops.clamp_of(layer.op, layer.attrs)
        inside = mean[mask]
        if (inside < lo).any() or (inside > hi).any() or (mean[~mask] != 0).any():
            fail(f"{path}.arrays.mean", f"means must lie in [{lo}, {hi}] where skipped and be "
                  "0 elsewhere")
        total += count
        skipped += int(mask.sum())
    C = skipped / total if total else 0.0
    if not math.isclose(C, package.velcro["C"], rel_tol=1e-9, abs_tol=1e-12):
        fail("manifest.velcro.C", f"expected {C!r} (skipped / total tapped outputs), "
              f"got {package.velcro['C']!r}")
