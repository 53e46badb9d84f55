"""Post-training int8 quantization of a sequential CNN into a deployment package.

The integers of a package and the arithmetic the accelerator does with them are
defined once, in :mod:`velcro.sw.golden`; this module chooses the real scales that
those integers stand for:

- input: a pixel ``p`` is ``p / 255`` to the float model; its int8 value
  (:func:`velcro.sw.golden.quantize_input`) has the scale ``2 / 255``;
- weights: symmetric in ``[-127, 127]``, one scale per output channel
  (``max |W[o]| / 127``), except in the last layer, whose accumulators are the
  logits: there one scale for the whole layer keeps every logit on the same scale, so
  the integer argmax is the float argmax;
- activations: one scale per tensor, ``max / 127`` over the calibration images (the
  task's preprocessing split) with the VELCRO plan applied, as in the float model
  that is deployed;
- bias: at the accumulator scale ``s_in * s_w[o]``;
- requantization: the factors of ``M[o] = s_in * s_w[o] / s_out``
  (:func:`requant_params`);
- VELCRO: the plan's float means become int8 ``round(mean / s_out)`` at the masked
  elements of each conv layer's output, and the masks are bit-packed;
- dense layers are int8 as above, or codebook layers from :mod:`velcro.sw.vq.methods`
  (scalar k-means or x-axis PQ): int8 codebooks with one scale per layer
  (:func:`velcro.sw.export.codebooks.deploy`) and packed indices
  (:func:`velcro.sw.export.bits.pack_indices`);
  activation scales are then calibrated with the codebook weights.

Supported layers, in an ``nn.Sequential`` (nested ones are flattened): ``Conv2d`` 3x3
with padding 1, stride 1 or 2, followed by ``ReLU``; ``MaxPool2d(2)``; ``Flatten``;
``Linear`` with or without ``ReLU``, the last one without; ``Dropout`` and
``Identity`` are no-ops at inference.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import golden
from ..data import Task, to_float
from ..errors import ModelError, PlanError
from ..locality.plan import Plan
from .bits import pack_indices, pack_mask
from .package import Layer, Package, check

INPUT_SCALE = (1 << golden.INPUT_SHIFT) / 255
SUPPORTED = ("Conv2d 3x3 (padding 1, stride 1 or 2) + ReLU, MaxPool2d(2), Flatten, "
             "Linear (+ ReLU), Dropout, Identity")
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


@dataclass
class _Group:
    """One package layer and the torch modules it stands for."""

    op: str
    name: str
    module: nn.Module | None = None
    relu: bool = False


def _leaves(module: nn.Module, prefix: str = ""):
    for name, child in module.named_children():
        qualified = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, qualified + ".")
        else:
            yield qualified, child


def _unsupported(name: str, module: nn.Module, why: str) -> ModelError:
    return ModelError(f"layer {name!r} ({module!r}) is not supported: {why}; "
                      f"supported layers: {SUPPORTED}")


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, tuple | list) else (value, value)


def layer_groups(model: nn.Module) -> list[_Group]:
    """The package layers of a sequential model, checking that every layer is supported."""
    if not isinstance(model, nn.Sequential):
        raise ModelError(f"the model must be an nn.Sequential of supported layers, not "
                         f"{type(model).__name__} ({SUPPORTED})")
    leaves = [(n, m) for n, m in _leaves(model) if not isinstance(m, nn.Dropout | nn.Identity)]
    # Unknown layer types first: they are the cause of any structural error that follows.
    for name, m in leaves:
        if type(m) not in (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.Flatten, nn.ReLU):
            raise _unsupported(name, m, "unknown layer type")
    groups: list[_Group] = []
    flat = False
    i = 0
    while i < len(leaves):
        name, m = leaves[i]
        followed_by_relu = i + 1 < len(leaves) and type(leaves[i + 1][1]) is nn.ReLU
        if type(m) is nn.Conv2d:
            if flat:
                raise _unsupported(name, m, "a convolution after Flatten")
            if _pair(m.kernel_size) != (3, 3) or _pair(m.padding) != (1, 1):
                raise _unsupported(name, m, "convolutions must be 3x3 with padding 1")
            if _pair(m.stride) not in ((1, 1), (2, 2)):
                raise _unsupported(name, m, "stride must be 1 or 2")
            if _pair(m.dilation) != (1, 1) or m.groups != 1 or m.padding_mode != "zeros":
                raise _unsupported(name, m, "dilation, groups and non-zero padding modes "
                                   "are not")
            if not followed_by_relu:
                raise _unsupported(name, m, "a convolution must be followed by ReLU")
            groups.append(_Group("conv3x3", name, m, True))
            i += 2
            continue
        if type(m) is nn.Linear:
            if not flat:
                raise _unsupported(name, m, "Linear needs a flattened input (add nn.Flatten)")
            groups.append(_Group("dense", name, m, followed_by_relu))
            i += 2 if followed_by_relu else 1
            continue
        if type(m) is nn.MaxPool2d:
            if (_pair(m.kernel_size) != (2, 2) or _pair(m.stride) != (2, 2)
                    or _pair(m.padding) != (0, 0) or _pair(m.dilation) != (1, 1)
                    or m.ceil_mode or m.return_indices):
                raise _unsupported(name, m, "only MaxPool2d(2) (stride 2, no padding)")
            if flat:
                raise _unsupported(name, m, "pooling after Flatten")
            groups.append(_Group("maxpool2x2", name, m))
        elif type(m) is nn.Flatten:
            if m.start_dim != 1 or m.end_dim != -1 or flat:
                raise _unsupported(name, m, "only one Flatten(start_dim=1, end_dim=-1)")
            flat = True
            groups.append(_Group("flatten", name, m))
        else:
            raise _unsupported(name, m, "ReLU must follow a Conv2d or Linear")
        i += 1
    if not groups or groups[-1].op != "dense" or groups[-1].relu:
        raise ModelError("the model must end with a Linear layer without ReLU (the logits)")
    return groups


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


def _calibrate(groups: list[_Group], plan: Plan | None, images: np.ndarray,
               weights: dict[str, np.ndarray]) -> list[float]:
    """Largest |output| of every group over ``images``, with the plan applied and the
    dense layers named in ``weights`` using those weights."""
    plan_layers = iter(plan.layers) if plan is not None else None
    replacements = {}
    for g in groups:
        if g.op == "conv3x3" and plan_layers is not None:
            layer = next(plan_layers)
            replacements[g.name] = (torch.from_numpy(layer.mask), torch.from_numpy(layer.mean))
    amax = [0.0] * len(groups)
    with torch.inference_mode():
        for start in range(0, len(images), _BATCH):
            x = to_float(images[start:start + _BATCH])
            for k, g in enumerate(groups):
                if g.name in weights:
                    x = F.linear(x, torch.from_numpy(weights[g.name]).float(), g.module.bias)
                else:
                    x = g.module(x)
                if g.relu:
                    x = torch.relu(x)
                if g.name in replacements:
                    mask, mean = replacements[g.name]
                    x = torch.where(mask, mean, x)
                amax[k] = max(amax[k], float(x.abs().max()) if x.numel() else 0.0)
    return amax


def _check_plan(groups: list[_Group], plan: Plan | None) -> None:
    if plan is None:
        return
    convs = [g.name for g in groups if g.op == "conv3x3"]
    names = [layer.name for layer in plan.layers]
    if names != convs:
        raise PlanError(f"plan layers {names} do not match the model's convolutions {convs}")


def _deploy(groups: list[_Group], dense: dict) -> dict:
    """:func:`deploy` every quantized dense layer, checking it belongs to the model."""
    from .codebooks import deploy

    layers = {g.name: g.module for g in groups if g.op == "dense"}
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


def quantize(model: nn.Module, task: Task, plan: Plan | None = None,
             source: dict | None = None, dense: dict | None = None) -> Package:
    """Quantize ``model`` (float, eval mode) with the VELCRO ``plan`` into a package.

    Parameters
    ----------
    model
        An ``nn.Sequential`` of supported layers (see the module docstring).
    task
        Its preprocessing split calibrates the activation scales; its name, classes
        and class names go into the manifest.
    plan
        VELCRO masks and float means per conv layer, in order; None skips nothing.
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
    groups = layer_groups(model)
    _check_plan(groups, plan)
    deployed = _deploy(groups, dense or {})
    model.eval()
    images = task.split("preprocessing").images
    amax = _calibrate(groups, plan, images, {
        name: d.weight().astype(np.float64) * d.scale for name, d in deployed.items()})
    plan_layers = iter(plan.layers) if plan is not None else None
    shape = tuple(images.shape[1:])
    scale = INPUT_SCALE
    layers, thresholds = [], []
    for k, g in enumerate(groups):
        name, m = g.name, g.module
        if g.op in ("maxpool2x2", "flatten"):
            out_shape = ((shape[0], shape[1] // 2, shape[2] // 2) if g.op == "maxpool2x2"
                         else (math.prod(shape),))
            layers.append(Layer(name, g.op, shape, out_shape, scale))
            shape = out_shape
            continue
        w = m.weight.detach().double().numpy()
        b = (m.bias.detach().double().numpy() if m.bias is not None
             else np.zeros(len(w)))
        logits = k == len(groups) - 1
        d = deployed.get(name)
        if d is None:
            s_w = _weight_scales(w, per_channel=not logits)
            arrays = {"weight": _quantize_weights(w, s_w)}
        else:
            s_w = np.full(len(w), d.scale)
            arrays = {"codebooks": d.codebooks, "indices": pack_indices(d.indices, d.bits)}
        acc_scale = scale * s_w
        arrays["bias"] = _quantize_bias(name, b, acc_scale)
        if logits:
            out_scale = float(acc_scale[0])
        else:
            out_scale = (amax[k] if amax[k] > 0 else 1.0) / 127
            arrays["mult"], arrays["shift"] = requant_params(acc_scale / out_scale)
        if g.op == "conv3x3":
            stride = _pair(m.stride)[0]
            out_shape = (len(w), (shape[1] - 1) // stride + 1, (shape[2] - 1) // stride + 1)
            mask = np.zeros(out_shape, dtype=bool)
            mean = np.zeros(out_shape, dtype=np.int8)
            threshold = 0.0
            if plan_layers is not None:
                p = next(plan_layers)
                if p.mask.shape != out_shape:
                    raise PlanError(f"plan for {name} is {list(p.mask.shape)}, the layer "
                                    f"outputs {list(out_shape)}")
                mask, threshold = p.mask, p.threshold
                mean[mask] = np.clip(np.round(p.mean[mask] / out_scale), 0, 127)
            arrays["mask"], arrays["mean"] = pack_mask(mask), mean
            thresholds.append(float(threshold))
            attrs = {"stride": stride, "skipped": int(mask.sum())}
        else:
            out_shape = (len(w),)
            attrs = {"relu": g.relu, "output": "int32" if logits else "int8"}
            if d is not None:
                attrs.update(bits=d.bits, segment=d.segment,
                             shared=d.codebooks.shape[0] == 1, weight_scale=float(d.scale))
        op = "dense_codebook" if d is not None else g.op
        layers.append(Layer(name, op, shape, out_shape, out_scale, attrs, arrays))
        shape, scale = out_shape, out_scale
    n_conv = sum(math.prod(layer.out_shape) for layer in layers if layer.op == "conv3x3")
    skipped = sum(layer.attrs["skipped"] for layer in layers if layer.op == "conv3x3")
    source = {"model": None, "weights": None, "data": None, "image_size": None,
              **(source or {}), "parameters_sha256": parameters_sha256(model)}
    package = Package(
        input_shape=tuple(int(v) for v in images.shape[1:]), input_scale=INPUT_SCALE,
        layers=layers,
        task={"name": task.name, "classes": [int(c) for c in task.classes],
              "class_names": list(task.data.classes)},
        velcro={"criterion": plan.criterion if plan is not None else None,
                "thresholds": thresholds, "C": float(skipped / n_conv) if n_conv else 0.0},
        source=source)
    if layers[-1].out_shape[0] != len(task.data.classes):
        raise ModelError(f"the model has {layers[-1].out_shape[0]} outputs but the task's "
                         f"data has {len(task.data.classes)} classes")
    check(package)
    return package
