"""The front end: a float model traced with ``torch.fx`` into the graph a package holds.

:func:`trace` takes any ``nn.Module`` that ``torch.fx`` can trace (and that
:func:`~velcro.sw.locality.taps.tap` can tap) and gives a list of :class:`Node`, one per
package layer, in execution order. On the way:

- BatchNorm after a convolution is folded into its weights and bias;
- ReLU and ReLU6 fold into the convolution, residual add or Linear they follow;
- Dropout and Identity are no-ops, and so are the size queries of a ``view``;
- ``flatten``, ``view(N, -1)`` and ``reshape(N, -1)`` of a map become flatten;
- adaptive average pooling to an output size that divides the map becomes an
  average pooling with ``kernel = stride = H / H_out``;
- the mean over both spatial axes (``x.mean((2, 3))``, how ONNX's GlobalAveragePool
  arrives) is a global average pooling, followed by flatten unless ``keepdim``;
- every VELCRO tap marks the node whose output it is (:attr:`Node.tap`).

Anything else (a dilated or transposed convolution, ``torch.sort``, an activation that
follows no convolution, add or Linear, ...) raises a
:class:`~velcro.sw.errors.ModelError` naming the graph node, its op and what is
supported. :func:`onnx_model` turns an ONNX file into such a module (``[onnx]``
extra).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ModelError
from ..locality.taps import Tap, Tapped, tap
from .schema import layer_name

SUPPORTED = ("Conv2d (any kernel, stride, zero padding, groups; no dilation), BatchNorm2d "
             "after a Conv2d, ReLU/ReLU6 after a Conv2d, add or Linear, residual add, "
             "torch.cat on channels, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d to a size "
             "dividing the map, flatten/view/reshape to [N, -1], Linear, Dropout, Identity")

_ADD = {operator.add, operator.iadd, torch.add}
_CAT = {torch.cat, torch.concat}
_FLATTEN_FUNCTIONS = {torch.flatten}
_RELU_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6"}
_RELU_METHODS = {"relu": "relu", "relu_": "relu"}
_NOOP_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity, Tap)
_NOOP_FUNCTIONS = {F.dropout, F.dropout2d}
_SIZE_METHODS = {"size", "dim"}


@dataclass
class Node:
    """One package layer: its op, inputs (node names or ``"input"``) and float parameters.

    ``output`` is the fx node whose value (in the tapped model) is this node's output,
    after any folded BatchNorm, activation and VELCRO replacement; calibration reads
    activation ranges there.
    """

    name: str
    op: str
    inputs: list[str]
    shape: tuple[int, ...]
    output: fx.Node
    attrs: dict = field(default_factory=dict)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    activation: str = "none"
    tap: str | None = None
    module: str | None = None

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one image (convolutions and Linear layers)."""
        if self.op == "conv":
            return math.prod(self.shape) * int(np.prod(self.weight.shape[1:]))
        if self.op == "linear":
            return int(self.weight.size)
        return 0


@dataclass
class Graph:
    """A traced model: its tapped module, input shape and nodes in execution order."""

    tapped: Tapped
    input_shape: tuple[int, int, int]
    nodes: list[Node]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def _unsupported(node: fx.Node, what: str, why: str) -> ModelError:
    name = node.target if node.op == "call_module" else node.name
    return ModelError(f"graph node {name!r} ({what}) is not supported: {why}; "
                      f"supported: {SUPPORTED}")


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_function":
        return getattr(node.target, "__qualname__", None) or str(node.target)
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return node.op


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, tuple | list) else (value, value)


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise ModelError(f"graph node {node.name!r} does not give one tensor")
    return tuple(int(v) for v in meta.shape[1:])


def _arguments(gm: fx.GraphModule, node: fx.Node) -> dict:
    """A function node's arguments by name (PyTorch's normalization of the call)."""
    normalized = node.normalized_arguments(gm, normalize_to_only_use_kwargs=True)
    if normalized is None:
        raise _unsupported(node, _describe(gm, node), "its arguments cannot be read")
    return dict(normalized.kwargs)


class _Builder:
    def __init__(self, tapped: Tapped):
        self.gm = tapped.module
        self.nodes: list[Node] = []
        self.alias: dict[fx.Node, Node | str] = {}
        self.users = {n: len(n.users) for n in self.gm.graph.nodes}
        self.names = {"input"}

    def source(self, arg, node: fx.Node) -> Node | str:
        if not isinstance(arg, fx.Node) or arg not in self.alias:
            raise _unsupported(node, _describe(self.gm, node), "its input is not a tensor "
                               "of the network")
        value = self.alias[arg]
        if value == "size":
            raise _unsupported(node, _describe(self.gm, node), "it computes with tensor sizes")
        return value

    def name_of(self, value: Node | str) -> str:
        return value if isinstance(value, str) else value.name

    def unique(self, base: str) -> str:
        base = layer_name(base)
        name, suffix = base, 1
        while name in self.names:
            suffix += 1
            name = f"{base}#{suffix}"
        self.names.add(name)
        return name

    def add(self, node: fx.Node, op: str, inputs: list, **kwargs) -> Node:
        # Modules are named by their qualified name, functions by their graph node.
        name = kwargs.pop("name", None) or self.unique(
            node.target if node.op == "call_module" else node.name)
        new = Node(name, op, [self.name_of(v) for v in inputs], _shape(node), node, **kwargs)
        self.nodes.append(new)
        self.alias[node] = new
        return new

    def fusable(self, node: fx.Node, value, ops: tuple[str, ...]) -> bool:
        """Whether ``value`` (a node of ``ops``) may absorb ``node``, its only reader."""
        return (isinstance(value, Node) and value.op in ops and value.output is node.args[0]
                and self.users[node.args[0]] == 1)

    def module(self, node: fx.Node) -> None:
        m = self.gm.get_submodule(node.target)
        what = _describe(self.gm, node)
        if isinstance(m, _NOOP_MODULES):
            value = self.source(node.args[0], node)
            if isinstance(m, Tap):
                if not isinstance(value, Node) or value.op not in ("conv", "add", "linear"):
                    raise _unsupported(node, what, "a tapped activation must follow a "
                                       "convolution or a residual add")
                value.tap, value.output = layer_name(m.name), node
            self.alias[node] = value
        elif type(m) is nn.Conv2d:
            self.conv(node, m, what)
        elif isinstance(m, nn.BatchNorm2d):
            self.batchnorm(node, m, what)
        elif isinstance(m, nn.ReLU | nn.ReLU6):
            self.activation(node, "relu6" if isinstance(m, nn.ReLU6) else "relu", what)
        elif type(m) is nn.Linear:
            value = self.source(node.args[0], node)
            if len(_shape(node.args[0])) != 1:
                raise _unsupported(node, what, "Linear needs a flattened input")
            self.add(node, "linear", [value], module=node.target,
                     weight=m.weight.detach().double().numpy().copy(),
                     bias=(m.bias.detach().double().numpy().copy() if m.bias is not None
                           else np.zeros(m.out_features)))
        elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
            self.pool(node, "maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool",
                      {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                       "ceil_mode": m.ceil_mode,
                       "dilation": getattr(m, "dilation", 1),
                       "count_include_pad": getattr(m, "count_include_pad", True),
                       "divisor_override": getattr(m, "divisor_override", None),
                       "return_indices": getattr(m, "return_indices", False)}, what)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self.adaptive(node, m.output_size, what)

        elif type(m) is nn.Flatten:
            if m.start_dim != 1 or m.end_dim != -1:
                raise _unsupported(node, what, "only Flatten(start_dim=1, end_dim=-1)")
            self.flatten(node, what)
        else:
            raise _unsupported(node, what, "unknown module type")

    def conv(self, node: fx.Node, m: nn.Conv2d, what: str) -> None:
        value = self.source(node.args[0], node)
        if _pair(m.dilation) != (1, 1):
            raise _unsupported(node, what, "a dilated convolution")
        if m.padding_mode != "zeros":
            raise _unsupported(node, what, f"padding mode {m.padding_mode!r} (only zeros)")
        if isinstance(m.padding, str):
            if m.padding == "valid":
                padding = (0, 0)
            elif all(k % 2 for k in _pair(m.kernel_size)):
                padding = tuple(k // 2 for k in _pair(m.kernel_size))
            else:
                raise _unsupported(node, what, "padding 'same' with an even kernel")
        else:
            padding = _pair(m.padding)
        self.add(node, "conv", [value], module=node.target,
                 weight=m.weight.detach().double().numpy().copy(),
                 bias=(m.bias.detach().double().numpy().copy() if m.bias is not None
                       else np.zeros(m.out_channels)),
                 attrs={"kernel": _pair(m.kernel_size), "stride": _pair(m.stride),
                        "padding": padding, "groups": m.groups})

    def batchnorm(self, node: fx.Node, m: nn.BatchNorm2d, what: str) -> None:
        value = self.source(node.args[0], node)
        if not self.fusable(node, value, ("conv",)) or value.activation != "none":
            raise _unsupported(node, what, "BatchNorm2d must directly follow a Conv2d whose "
                               "output nothing else reads")
        if m.running_mean is None:
            raise _unsupported(node, what, "BatchNorm2d without running statistics")
        gamma = (m.weight.detach().double().numpy() if m.weight is not None
                 else np.ones(m.num_features))
        beta = (m.bias.detach().double().numpy() if m.bias is not None
                else np.zeros(m.num_features))
        scale = gamma / np.sqrt(m.running_var.detach().double().numpy() + m.eps)
        value.weight = value.weight * scale[:, None, None, None]
        value.bias = (value.bias - m.running_mean.detach().double().numpy()) * scale + beta
        value.output = node
        self.alias[node] = value

    def activation(self, node: fx.Node, kind: str, what: str) -> None:
        value = self.source(node.args[0], node)
        allowed = ("conv", "add") if kind == "relu6" else ("conv", "add", "linear")
        if not self.fusable(node, value, allowed) or value.activation != "none":
            raise _unsupported(node, what, f"{kind} must follow a convolution, a residual "
                               "add" + (" or a Linear layer" if kind == "relu" else "")
                               + " that nothing else reads")
        value.activation, value.output = kind, node
        self.alias[node] = value

    def pool(self, node: fx.Node, op: str, args: dict, what: str) -> None:
        value = self.source(args.get("input", node.args[0]), node)
        kernel = _pair(args["kernel_size"])
        stride = _pair(args["stride"] if args.get("stride") not in (None, [], ()) else kernel)
        if _pair(args.get("dilation", 1)) != (1, 1) or args.get("return_indices"):
            raise _unsupported(node, what, "pooling with dilation or indices")
        if args.get("divisor_override") is not None:
            raise _unsupported(node, what, "average pooling with a divisor override")
        attrs = {"kernel": kernel, "stride": stride, "padding": _pair(args.get("padding", 0)),
                 "ceil_mode": bool(args.get("ceil_mode", False))}
        if op == "avgpool":
            attrs["count_include_pad"] = bool(args.get("count_include_pad", True))
        self.add(node, op, [value], attrs=attrs)

    def adaptive(self, node: fx.Node, output_size, what: str) -> None:
        value = self.source(node.args[0], node)
        _, h, w = _shape(node.args[0])
        out = tuple(s if s is not None else d for s, d in zip(_pair(output_size), (h, w),
                                                             strict=True))
        if h % out[0] or w % out[1]:
            raise _unsupported(node, what, f"adaptive pooling of {h}x{w} to {out[0]}x{out[1]}, "
                               "which does not divide it")
        kernel = (h // out[0], w // out[1])
        self.add(node, "avgpool", [value], attrs={"kernel": kernel, "stride": kernel,
                                                   "padding": (0, 0), "ceil_mode": False,
                                                   "count_include_pad": True})

    def mean(self, node: fx.Node, args: dict, what: str) -> None:
        """The mean over both spatial axes of a map: global average pooling."""
        value = self.source(args["input"], node)
        shape = _shape(args["input"])
        dims = args.get("dim")
        dims = sorted(d % 4 for d in (dims if isinstance(dims, list | tuple) else [dims])) \
            if dims is not None else None
        if len(shape) != 3 or dims != [2, 3] or args.get("dtype") is not None:
            raise _unsupported(node, what, "only the mean of a map over both spatial axes")
        pooled = Node(self.unique(node.name), "avgpool", [self.name_of(value)],
                      (shape[0], 1, 1), node,
                      attrs={"kernel": shape[1:], "stride": shape[1:], "padding": (0, 0),
                             "ceil_mode": False, "count_include_pad": True})
        self.nodes.append(pooled)
        self.alias[node] = pooled
        if not args.get("keepdim", False):
            self.add(node, "flatten", [pooled], name=self.unique(node.name + "_flat"))

    def flatten(self, node: fx.Node, what: str) -> None:
        value = self.source(node.args[0], node)
        if len(_shape(node.args[0])) == 1:
            self.alias[node] = value
            return
        if len(_shape(node.args[0])) != 3 or len(_shape(node)) != 1:
            raise _unsupported(node, what, "only flattening a map to [N, -1]")
        self.add(node, "flatten", [value])

    def function(self, node: fx.Node) -> None:
        target, what = node.target, _describe(self.gm, node)
        if target in _NOOP_FUNCTIONS:
            self.alias[node] = self.source(node.args[0], node)
        elif target in _RELU_FUNCTIONS:
            self.activation(node, _RELU_FUNCTIONS[target], what)
        elif target in _ADD:
            self.residual(node, node.args, node.kwargs, what)
        elif target in _CAT:
            args = _arguments(self.gm, node)
            if args.get("dim", 0) not in (1, -3):
                raise _unsupported(node, what, "concatenation along channels only (dim=1)")
            tensors = args.get("tensors")
            if not isinstance(tensors, list | tuple) or len(tensors) < 2:
                raise _unsupported(node, what, "it concatenates fewer than two tensors")
            self.add(node, "concat", [self.source(t, node) for t in tensors])
        elif target in _FLATTEN_FUNCTIONS:
            args = _arguments(self.gm, node)
            if args.get("start_dim", 0) != 1 or args.get("end_dim", -1) != -1:
                raise _unsupported(node, what, "only torch.flatten(x, 1)")
            self.flatten(node, what)
        elif target is F.max_pool2d or target is F.avg_pool2d:
            args = _arguments(self.gm, node)
            self.pool(node, "maxpool" if target is F.max_pool2d else "avgpool", args, what)
        elif target is F.adaptive_avg_pool2d:
            self.adaptive(node, _arguments(self.gm, node)["output_size"], what)
        elif target is torch.mean:
            self.mean(node, _arguments(self.gm, node), what)
        elif target is getattr and isinstance(node.args[0], fx.Node):
            self.alias[node] = "size"
        else:
            raise _unsupported(node, what, "unknown function")

    def residual(self, node: fx.Node, args, kwargs, what: str) -> None:
        if len(args) != 2 or kwargs.get("alpha", 1) != 1:
            raise _unsupported(node, what, "only the sum of two tensors")
        a, b = (self.source(arg, node) for arg in args)
        if _shape(args[0]) != _shape(args[1]) or len(_shape(node)) != 3:
            raise _unsupported(node, what, "only the sum of two maps of one shape")
        self.add(node, "add", [a, b])

    def method(self, node: fx.Node) -> None:
        target, what = node.target, _describe(self.gm, node)
        if target in _RELU_METHODS:
            self.activation(node, _RELU_METHODS[target], what)
        elif target in ("add", "add_"):
            self.residual(node, node.args, node.kwargs, what)
        elif target in _SIZE_METHODS:
            self.alias[node] = "size"
        elif target in ("view", "reshape", "flatten"):
            self.flatten(node, what)
        elif target == "mean":
            args = dict(zip(("dim", "keepdim"), node.args[1:], strict=False)) | node.kwargs
            self.mean(node, {"input": node.args[0], **args}, what)
        elif target in ("contiguous",):
            self.alias[node] = self.source(node.args[0], node)
        else:
            raise _unsupported(node, what, "unknown tensor method")


def trace(model: nn.Module | Tapped, input_shape: tuple[int, int, int]) -> Graph:
    """The graph of ``model`` (eval mode) for inputs ``[N, *input_shape]``."""
    tapped = tap(model, require=False)
    gm = tapped.module
    gm.eval()
    try:
        ShapeProp(gm).propagate(torch.zeros((1, *input_shape)))
    except Exception as e:  # a model's forward raises any type
        raise ModelError(f"the model does not run on inputs of shape {list(input_shape)}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         ) from None
    builder = _Builder(tapped)
    result = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if builder.alias:
                raise _unsupported(node, "a second input", "one input tensor only")
            builder.alias[node] = "input"
        elif node.op == "get_attr":
            builder.alias[node] = "size"
        elif node.op == "call_module":
            builder.module(node)
        elif node.op == "call_function":
            builder.function(node)
        elif node.op == "call_method":
            builder.method(node)
        elif node.op == "output":
            result = builder.source(node.args[0], node)
    if not isinstance(result, Node) or result.op != "linear" or result.activation != "none":
        raise ModelError("the model must end with a Linear layer without activation "
                         "(the logits)")
    return Graph(tapped, tuple(input_shape), _reachable(builder.nodes, result))


def _reachable(nodes: list[Node], result: Node) -> list[Node]:
    """The nodes the output depends on, in order, the output last."""
    by_name = {n.name: n for n in nodes}
    needed, stack = set(), [result.name]
    while stack:
        name = stack.pop()
        if name in needed or name not in by_name:
            continue
        needed.add(name)
        stack.extend(by_name[name].inputs)
    kept = [n for n in nodes if n.name in needed]
    if kept[-1] is not result:
        raise ModelError("the logits must be the last value the model computes")
    return kept


def onnx_model(path: Path) -> nn.Module:
    """An ONNX file as an ``nn.Module`` (onnx2torch, the ``[onnx]`` extra).

    The file is parsed as a protobuf graph, never executed as code; operators
    onnx2torch cannot convert raise a :class:`~velcro.sw.errors.ModelError`.
    """
    from ..models import declare_torchvision_ops

    declare_torchvision_ops()          # onnx2torch imports torchvision
    try:
        import onnx
        from onnx2torch import convert
    except ImportError:
        raise ModelError("ONNX models need the onnx extra: pip install 'velcro[onnx]'") from None
    try:
        proto = onnx.load(str(path))
        _inline_identities(proto.graph)
        return convert(proto).eval()
    except Exception as e:  # parser and converter raise many types
        raise ModelError(f"{path}: cannot convert the ONNX model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _inline_identities(graph) -> None:
    """Drop ``Identity`` nodes of the ONNX graph, reading their input wherever their
    output was read (PyTorch's exporter writes them for shared constants, which
    onnx2torch cannot convert)."""
    rename = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and len(node.input) == 1 and len(node.output) == 1:
            rename[node.output[0]] = rename.get(node.input[0], node.input[0])
        else:
            kept.append(node)
    if not rename:
        return
    outputs = {o.name for o in graph.output}
    if outputs & rename.keys():
        return
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
