"""Post-training int8 quantization of a traced CNN into a deployment package.

The integers of a package and the arithmetic the accelerator does with them are
defined once, in :mod:`velcro.sw.golden`; this module chooses the real scales that
those integers stand for, node by node of the graph :func:`velcro.sw.export.graph.trace`
gives (BatchNorm folded, activations fused):

- input: a pixel ``p`` is ``p / 255`` to the float model; its int8 value
  (:func:`velcro.sw.golden.quantize_input`) has the scale ``2 / 255``;
- weights: symmetric in ``[-127, 127]``, one scale per output channel
  (``max |W[o]| / 127``), except in the last layer, whose accumulators are the
  logits: there one scale for the whole layer keeps every logit on the same scale, so
  the integer argmax is the float argmax;
- activations: one scale per tensor, ``max |x| / 127`` over the calibration images
  (the task's preprocessing split) with the VELCRO plan applied, as in the float model
  that is deployed; pooling and flatten keep their input's scale;
- bias: at the accumulator scale ``s_in * s_w[o]``;
- requantization: the factors of ``M[o] = s_in * s_w[o] / s_out``
  (:func:`requant_params`); a residual add's two operands share one shift, the
  largest that keeps both multipliers within 16 bits; each operand of a concat has
  its own factors;
- VELCRO: the plan's float means become int8 ``round(mean / s_out)`` (clamped to the
  activation's range) at the masked elements of each tapped layer's output, and the
  masks are bit-packed;
- dense layers are int8 as above, or codebook layers from :mod:`velcro.sw.vq.methods`
  (scalar k-means or x-axis PQ): int8 codebooks with one scale per layer
  (:func:`velcro.sw.export.codebooks.deploy`) and packed indices
  (:func:`velcro.sw.export.bits.pack_indices`);
  activation scales are then calibrated with the codebook weights.

Convolutions of the form the kernel runs (3x3, padding 1, stride 1 or 2, one group,
ReLU) become ``conv3x3`` layers and 2x2 max-pooling ``maxpool2x2``; the rest keep the
general ops (:mod:`velcro.sw.export.ops`).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import golden
from ..data import Task, to_float
from ..errors import ModelError, PlanError
from ..locality.plan import Plan, applied
from .bits import pack_indices, pack_mask
from .graph import SUPPORTED, Graph, Node, trace
from .package import Layer, Package, check
from .schema import layer_name

__all__ = ["INPUT_SCALE", "SUPPORTED", "parameters_sha256", "quantize", "requant_params"]

INPUT_SCALE = (1 << golden.INPUT_SHIFT) / 255
_BATCH = 256


def requant_params(scale) -> tuple[np.ndarray, np.ndarray]:
    """The requantization factors of ``scale`` (:func:`velcro.sw.golden.requant_params`).

    Raises
    ------
    PlanError
        A scale the factors cannot express.
    """
    try:
        return golden.requant_params(scale)
    except golden.GoldenError as e:
        raise PlanError(str(e)) from None


def parameters_sha256(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and values of a model's state dict."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{key}:{value.dtype}:{list(value.shape)};".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def _weight_scales(w: np.ndarray, per_channel: bool) -> np.ndarray:
    amax = np.abs(w).reshape(len(w), -1).max(axis=1)
    if not per_channel:
        amax = np.full_like(amax, amax.max())
    # An all-zero channel quantizes to zeros at any scale; 1/127 keeps its bias finite.
    return np.where(amax > 0, amax, 1.0) / 127


def _quantize_weights(w: np.ndarray, scales: np.ndarray) -> np.ndarray:
    view = (-1,) + (1,) * (w.ndim - 1)
    return np.clip(np.round(w / scales.reshape(view)), -127, 127).astype(np.int8)


def _quantize_bias(name: str, b: np.ndarray, acc_scale: np.ndarray) -> np.ndarray:
    q = np.round(b / acc_scale)
    if np.abs(q).max(initial=0) > (1 << 31) - 1:
        raise ModelError(f"layer {name!r}: bias {b[np.argmax(np.abs(q))]:g} does not fit int32 "
                         f"at accumulator scale {acc_scale[np.argmax(np.abs(q))]:g}")
    return q.astype(np.int32)


class _Ranges(fx.Interpreter):
    """Runs the tapped model, recording the largest ``|x|`` of the watched fx nodes;
    Linear layers named in ``weights`` use those weights."""

    def __init__(self, gm: fx.GraphModule, watch: dict, weights: dict):
        super().__init__(gm)
        self.watch, self.weights = watch, weights
        self.amax = [0.0] * (max(watch.values(), default=-1) + 1)

    def run_node(self, n):
        out = super().run_node(n)
        k = self.watch.get(n)
        if k is not None and out.numel():
            self.amax[k] = max(self.amax[k], float(out.abs().max()))
        return out

    def call_module(self, target, args, kwargs):
        if target in self.weights:
            module = self.fetch_attr(target)
            return F.linear(args[0], self.weights[target], module.bias)
        return super().call_module(target, args, kwargs)


def _calibrate(graph: Graph, plan: Plan | None, images: np.ndarray,
               weights: dict[str, np.ndarray]) -> list[float]:
    """Largest |output| of every node over ``images``, with the plan applied and the
    Linear layers named in ``weights`` using those weights."""
    ranges = _Ranges(graph.tapped.module, {n.output: k for k, n in enumerate(graph.nodes)},
                     {name: torch.from_numpy(w).float() for name, w in weights.items()})
    with applied(graph.tapped, plan), torch.inference_mode():
        for start in range(0, len(images), _BATCH):
            ranges.run(to_float(images[start:start + _BATCH]))
    return ranges.amax


def _check_plan(graph: Graph, plan: Plan | None) -> None:
    if plan is None:
        return
    taps = [n.tap for n in graph.nodes if n.tap is not None]
    names = [layer_name(layer.name) for layer in plan.layers]
    if names != taps:
        raise PlanError(f"plan layers {names} do not match the model's conv-activations {taps}")


def _deploy(graph: Graph, dense: dict) -> dict:
    """:func:`deploy` every quantized dense layer, checking it belongs to the model."""
    from .codebooks import deploy

    layers = {n.module: n for n in graph.nodes if n.op == "linear"}
    deployed = {}
    for name, q in dense.items():
        if name not in layers:
            raise ModelError(f"no dense layer {name!r} to deploy with codebooks; the dense "
                             f"layers are {', '.join(layers)}")
        expected = tuple(layers[name].weight.shape)
        if tuple(q.shape) != expected:
            raise ModelError(f"quantized layer {name!r} is {list(q.shape)}, the model's "
                             f"weights are {list(expected)}")
        deployed[name] = deploy(q)
    return deployed


def _shared_shift(ratios: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Multipliers of ``ratios`` with one shift, the largest that fits them all."""
    _, shifts = requant_params(np.asarray(ratios))
    shift = int(shifts.min())
    mult = np.round(np.asarray(ratios) * 2.0 ** shift)
    return mult.astype(np.uint16), np.array([shift], np.uint8)


def _is_conv3x3(node: Node) -> bool:
    a = node.attrs
    return (a["kernel"] == (3, 3) and a["padding"] == (1, 1) and a["groups"] == 1
            and a["stride"] in ((1, 1), (2, 2)) and node.activation == "relu"
            and node.tap is not None)


class _Layers:
    """Package layers built node by node, with each node's output scale."""

    def __init__(self, graph: Graph, plan: Plan | None, amax: list[float], deployed: dict):
        self.graph, self.amax, self.deployed = graph, amax, deployed
        self.plan = iter(plan.layers) if plan is not None else None
        self.scale = {"input": INPUT_SCALE}
        self.shape = {"input": graph.input_shape}
        self.layers: list[Layer] = []
        self.thresholds: list[float] = []

    def out_scale(self, k: int) -> float:
        return (self.amax[k] if self.amax[k] > 0 else 1.0) / 127

    def skip(self, node: Node, out_shape, out_scale, lo, hi, arrays, attrs) -> None:
        """Mask and means of a tapped node (plan layers are taken in order)."""
        mask = np.zeros(out_shape, dtype=bool)
        mean = np.zeros(out_shape, dtype=np.int8)
        threshold = 0.0
        if self.plan is not None:
            p = next(self.plan)
            if p.mask.shape != tuple(out_shape):
                raise PlanError(f"plan for {node.tap} is {list(p.mask.shape)}, the layer "
                                f"outputs {list(out_shape)}")
            mask, threshold = p.mask, p.threshold
            mean[mask] = np.clip(np.round(p.mean[mask] / out_scale), lo, hi)
        arrays["mask"], arrays["mean"] = pack_mask(mask), mean
        self.thresholds.append(float(threshold))
        attrs["skipped"] = int(mask.sum())

    def weighted(self, k: int, node: Node, last: bool) -> tuple[str, dict, dict, float]:
        s_in = self.scale[node.inputs[0]]
        w, b = node.weight, node.bias
        d = self.deployed.get(node.module) if node.op == "linear" else None
        if d is None:
            s_w = _weight_scales(w, per_channel=not last)
            arrays = {"weight": _quantize_weights(w, s_w)}
        else:
            s_w = np.full(len(w), d.scale)
            arrays = {"codebooks": d.codebooks, "indices": pack_indices(d.indices, d.bits)}
        acc_scale = s_in * s_w
        arrays["bias"] = _quantize_bias(node.name, b, acc_scale)
        if last:
            out_scale = float(acc_scale[0])
        else:
            out_scale = self.out_scale(k)
            arrays["mult"], arrays["shift"] = requant_params(acc_scale / out_scale)
        if node.op == "linear":
            attrs = {"relu": node.activation == "relu", "output": "int32" if last else "int8"}
            if d is not None:
                attrs.update(bits=d.bits, segment=d.segment,
                             shared=d.codebooks.shape[0] == 1, weight_scale=float(d.scale))
            return ("dense_codebook" if d is not None else "dense"), attrs, arrays, out_scale
        lo, hi = golden.clamp_bounds(node.activation, out_scale)
        if _is_conv3x3(node):
            op, attrs = "conv3x3", {"stride": node.attrs["stride"][0]}
        else:
            op = "conv"
            attrs = {key: node.attrs[key] for key in ("kernel", "stride", "padding", "groups")}
            attrs.update(clamp=(lo, hi), tap=node.tap, skipped=0)
        if node.tap is not None:
            self.skip(node, node.shape, out_scale, lo, hi, arrays, attrs)
        return op, attrs, arrays, out_scale

    def build(self, k: int, node: Node) -> None:
        last = k == len(self.graph.nodes) - 1
        arrays, attrs = {}, {}
        s_in = self.scale[node.inputs[0]]
        out_scale = s_in
        op = node.op
        if node.op in ("conv", "linear"):
            op, attrs, arrays, out_scale = self.weighted(k, node, last)
        elif node.op == "add":
            out_scale = self.out_scale(k)
            arrays["mult"], arrays["shift"] = _shared_shift(
                [self.scale[i] / out_scale for i in node.inputs])
            lo, hi = golden.clamp_bounds(node.activation, out_scale)
            attrs = {"clamp": (lo, hi), "tap": node.tap, "skipped": 0}
            if node.tap is not None:
                self.skip(node, node.shape, out_scale, lo, hi, arrays, attrs)
        elif node.op == "concat":
            out_scale = self.out_scale(k)
            arrays["mult"], arrays["shift"] = requant_params(
                np.array([self.scale[i] / out_scale for i in node.inputs]))
        elif node.op in ("maxpool", "avgpool"):
            attrs = dict(node.attrs)
            if (op == "maxpool" and attrs["kernel"] == (2, 2) and attrs["stride"] == (2, 2)
                    and attrs["padding"] == (0, 0) and not attrs["ceil_mode"]):
                op, attrs = "maxpool2x2", {}
        in_shape = self.shape[node.inputs[0]]
        out_shape = node.shape
        if op in ("dense", "dense_codebook"):
            out_shape = (len(node.weight),)
        self.layers.append(Layer(node.name, op, in_shape, tuple(out_shape), out_scale, attrs,
                                 arrays, inputs=tuple(node.inputs)))
        self.scale[node.name], self.shape[node.name] = out_scale, tuple(out_shape)


def quantize(model: nn.Module, task: Task, plan: Plan | None = None,
             source: dict | None = None, dense: dict | None = None) -> Package:
    """Quantize ``model`` (float, eval mode) with the VELCRO ``plan`` into a package.

    Parameters
    ----------
    model
        A traceable model of the ops :func:`velcro.sw.export.graph.trace` supports
        (:data:`SUPPORTED`), ending in the Linear layer of the logits.
    task
        Its preprocessing split calibrates the activation scales; its name, classes
        and class names go into the manifest.
    plan
        VELCRO masks and float means per conv-activation, in order; None skips nothing.
    source
        What the package records of the float model it came from (``model``,
        ``weights``, ``data``, ``image_size``: names for people, never followed); the
        parameters' sha256 is added here.
    dense
        ``layer name -> quantized layer`` (:mod:`velcro.sw.vq.methods` scalar k-means or x-axis
        PQ) for the dense layers that become codebook layers
        (:func:`velcro.sw.export.codebooks.deploy`: int8 codebooks, one scale per layer); the
        other dense layers are int8.
    """
    model.eval()
    images = task.split("preprocessing").images
    graph = trace(model, tuple(int(v) for v in images.shape[1:]))
    _check_plan(graph, plan)
    deployed = _deploy(graph, dense or {})
    amax = _calibrate(graph, plan, images, {
        name: d.weight().astype(np.float64) * d.scale for name, d in deployed.items()})
    built = _Layers(graph, plan, amax, deployed)
    for k, node in enumerate(graph.nodes):
        built.build(k, node)
    layers = built.layers
    tapped = [layer for layer in layers if "mask" in layer.arrays]
    total = sum(math.prod(layer.out_shape) for layer in tapped)
    skipped = sum(layer.attrs["skipped"] for layer in tapped)
    source = {"model": None, "weights": None, "data": None, "image_size": None,
              **(source or {}), "parameters_sha256": parameters_sha256(model)}
    package = Package(
        input_shape=tuple(int(v) for v in images.shape[1:]), input_scale=INPUT_SCALE,
        layers=layers,
        task={"name": task.name, "classes": [int(c) for c in task.classes],
              "class_names": list(task.data.classes)},
        velcro={"criterion": plan.criterion if plan is not None else None,
                "thresholds": built.thresholds, "C": float(skipped / total) if total else 0.0},
        source=source)
    if layers[-1].out_shape[0] != len(task.data.classes):
        raise ModelError(f"the model has {layers[-1].out_shape[0]} outputs but the task's "
                         f"data has {len(task.data.classes)} classes")
    check(package)
    return package
