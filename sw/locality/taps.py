"""Finding the activation outputs that follow convolutions, and tapping them.

VELCRO works on "every activation-function output that follows a conv layer". Module
forward hooks alone cannot find those in general: torchvision's GoogLeNet applies
``F.relu`` inside ``BasicConv2d``, and ResNet's ``BasicBlock`` reuses one ``nn.ReLU``
both after a convolution and after the residual add. So the model is traced with
``torch.fx`` and a :class:`Tap` module (an identity) is inserted after each such
activation; profiling and compression then attach ordinary, removable forward hooks to
the taps.

An activation follows a convolution when its input reaches a ``Conv2d`` through
batch-norm, identity/dropout or residual additions.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import ModelError

_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6)
_ACTIVATION_FUNCTIONS = {F.relu, F.relu6, torch.relu, torch.relu_}
_ACTIVATION_METHODS = {"relu", "relu_"}
_PASS_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Identity, nn.Dropout)
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}


class Tap(nn.Identity):
    """Marks one conv-activation output; VELCRO hooks attach here."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def extra_repr(self):
        return repr(self.name)


@dataclass
class Tapped:
    """A traced model with one :class:`Tap` after every conv-activation, in execution order."""

    module: fx.GraphModule
    taps: list[Tap]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.taps]

    def __call__(self, x):
        return self.module(x)

    def tail(self, index: int) -> fx.GraphModule | None:
        """The part of the model from tap ``index`` on, as a module of the tap's input.

        Calling it with the raw activation that reaches tap ``index`` gives the model's
        output (hooks on this and later taps apply). None when later parts of the graph
        also read values computed before the tap (a residual connection across it), so
        the tap's input alone does not determine the output.
        """
        graph = self.module.graph
        nodes = list(graph.nodes)
        tap_node = next(n for n in nodes if n.op == "call_module"
                        and self.module.get_submodule(n.target) is self.taps[index])
        (source,) = tap_node.all_input_nodes
        rest = nodes[nodes.index(tap_node):]
        inside = set(rest)
        for node in rest:
            for arg in node.all_input_nodes:
                if arg not in inside and arg is not source and arg.op != "get_attr":
                    return None
        tail = fx.Graph()
        env = {source: tail.placeholder("activation")}
        for node in rest:
            if node.op == "get_attr":
                continue
            env[node] = tail.node_copy(node, lambda n: env[n] if n in env else
                                       tail.get_attr(n.target))
        return fx.GraphModule(self.module, tail)


def _is_activation(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in _ACTIVATION_FUNCTIONS
    if node.op == "call_method":
        return node.target in _ACTIVATION_METHODS
    return False


def _conv_source(gm: fx.GraphModule, node) -> str | None:
    """Qualified name of the convolution feeding ``node``, or None."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.Conv2d):
            return node.target
        if isinstance(module, _PASS_MODULES):
            return _conv_source(gm, node.args[0])
        return None
    is_add = ((node.op == "call_function" and node.target in _ADD_FUNCTIONS)
              or (node.op == "call_method" and node.target in _ADD_METHODS))
    if is_add:
        for arg in node.args:
            source = _conv_source(gm, arg)
            if source is not None:
                return source
    return None


def tap(model: nn.Module, require: bool = True) -> Tapped:
    """Trace ``model`` and insert a :class:`Tap` after every activation that follows a conv.

    The original model is not modified; the returned graph module shares its parameters.
    Taps are named after the convolution that feeds them (``"conv1"``, ``"layer1.0.conv2"``).
    A model without any is an error unless ``require`` is false.
    """
    if isinstance(model, Tapped):
        return model
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # tracing failures come as many exception types
        raise ModelError(f"cannot trace the model with torch.fx ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); VELCRO needs a "
                         "traceable model") from None
    taps, used = [], set()
    for node in list(gm.graph.nodes):
        if not _is_activation(gm, node):
            continue
        source = _conv_source(gm, node.args[0] if node.args else None)
        if source is None:
            continue
        name = source
        suffix = 1
        while name in used:
            suffix += 1
            name = f"{source}#{suffix}"
        used.add(name)
        module = Tap(name)
        attr = f"velcro_tap_{len(taps)}"
        gm.add_submodule(attr, module)
        with gm.graph.inserting_after(node):
            tap_node = gm.graph.call_module(attr, (node,))
        node.replace_all_uses_with(tap_node, delete_user_cb=lambda user, t=tap_node: user is not t)
        taps.append(module)
    if not taps and require:
        raise ModelError("the model has no convolution followed by a ReLU/ReLU6 activation; "
                         "VELCRO has nothing to compress")
    gm.recompile()
    gm.eval()
    return Tapped(gm, taps)
