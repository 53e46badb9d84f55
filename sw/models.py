"""The shipped networks, torchvision's, and loading of user models.

The reference model is made only of what the kernel runs: 3x3 convolutions with
padding 1 (stride 1 or 2) followed by ReLU, 2x2 max-pooling, flatten and dense
layers. The small ResNet and the small inverted-residual network have the shapes of
ResNet's and MobileNet V2's blocks (BatchNorm, 1x1 projections, depthwise
convolutions, ReLU6, residual adds, global average pooling). Their trained weights
ship with the package (float16 safetensors) together with the test accuracy measured
after loading them back.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .errors import ModelError
from .files import write_bytes

#: The shipped weights; velcro never writes here.
WEIGHTS_DIR = Path(__file__).parent / "weights"
REFERENCE_WEIGHTS = WEIGHTS_DIR / "reference.safetensors"
REFERENCE_RECORD = WEIGHTS_DIR / "reference.json"


def reference_cnn(num_classes: int = 10) -> nn.Sequential:
    """Four conv3x3+ReLU layers (28x28 -> 4x4x64), then dense 1024 -> 256 -> classes."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 16, 3, padding=1)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(32, 32, 3, padding=1)),
        ("relu3", nn.ReLU()),
        ("pool3", nn.MaxPool2d(2)),
        ("conv4", nn.Conv2d(32, 64, 3, stride=2, padding=1)),
        ("relu4", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(64 * 4 * 4, 256)),
        ("relu5", nn.ReLU()),
        ("fc2", nn.Linear(256, num_classes)),
    ]))


def lenet_300_100(num_classes: int = 10) -> nn.Sequential:
    """LeNet-300-100, the fully connected network of the Deep Compression paper."""
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(28 * 28, 300)),
        ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(300, 100)),
        ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(100, num_classes)),
    ]))


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv+BN, the input added back (through a 1x1
    conv+BN projection when the shape changes), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.project = None
        if stride != 1 or c_in != c_out:
            self.project = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                         nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.project is None else self.project(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def small_resnet(num_classes: int = 10) -> nn.Module:
    """A small ResNet for 28x28 inputs: a 3x3 stem (16), basic blocks 16 -> 32 (stride 2,
    1x1 projection) -> 32, global average pooling, a linear classifier."""
    return nn.Sequential(OrderedDict([
        ("stem", nn.Conv2d(1, 16, 3, padding=1, bias=False)),
        ("stem_bn", nn.BatchNorm2d(16)),
        ("stem_relu", nn.ReLU()),
        ("block1", BasicBlock(16, 16)),
        ("block2", BasicBlock(16, 32, stride=2)),
        ("block3", BasicBlock(32, 32)),
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(32, num_classes)),
    ]))


class InvertedResidual(nn.Module):
    """MobileNet V2's block: 1x1 expansion + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear
    projection, the input added back when the shape allows."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.residual = stride == 1 and c_in == c_out
        self.block = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


def small_inverted_residual(num_classes: int = 10) -> nn.Module:
    """A small MobileNet-V2-style network for 28x28 inputs: a 3x3 stem (16, ReLU6),
    inverted residual blocks 16 -> 16 -> 24 (stride 2) -> 24, a 1x1 conv to 64,
    global average pooling, a linear classifier."""
    return nn.Sequential(OrderedDict([
        ("stem", nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                               nn.ReLU6())),
        ("block1", InvertedResidual(16, 16, 1, 2)),
        ("block2", InvertedResidual(16, 24, 2, 4)),
        ("block3", InvertedResidual(24, 24, 1, 4)),
        ("head", nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU6())),
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("drop", nn.Dropout(0.1)),
        ("fc", nn.Linear(64, num_classes)),
    ]))


#: Networks ``velcro train --model NAME`` trains, by name.
ARCHITECTURES = {"reference": reference_cnn, "small_resnet": small_resnet,
                 "small_inverted_residual": small_inverted_residual}

#: torchvision networks with one input channel, by name (:func:`torchvision_model`).
TORCHVISION = ("resnet18", "mobilenet_v2", "googlenet")


def torchvision_model(name: str, num_classes: int = 10) -> nn.Module:
    """torchvision's ``resnet18``, ``mobilenet_v2`` or ``googlenet`` for single-channel
    images, with random weights.

    The adaptation: the first convolution is rebuilt with one input channel and
    otherwise the same shape (kernel, stride, padding, output channels), so grayscale
    images enter where RGB ones would; everything else is torchvision's definition
    with ``num_classes`` outputs. GoogLeNet is built without its auxiliary
    classifiers (they only run in training) and without input transform. At 64x64
    inputs every network keeps its strides; their last feature maps are 2x2.
    """
    if name not in TORCHVISION:
        raise ModelError(f"unknown torchvision network {name!r}; choose one of "
                         f"{', '.join(TORCHVISION)}")
    declare_torchvision_ops()
    import torchvision.models as tvm

    if name == "resnet18":
        model = tvm.resnet18(weights=None, num_classes=num_classes)
        parent, attr = model, "conv1"
    elif name == "mobilenet_v2":
        model = tvm.mobilenet_v2(weights=None, num_classes=num_classes)
        parent, attr = model.features[0], "0"
    else:
        model = tvm.googlenet(weights=None, num_classes=num_classes, aux_logits=False,
                              transform_input=False, init_weights=True)
        parent, attr = model.conv1, "conv"
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride,
                                    old.padding, bias=old.bias is not None))
    return model.eval()


def user_folder() -> Path:
    """Where velcro keeps what it trains: ``$VELCRO_HOME``, else ``$XDG_DATA_HOME/velcro``,
    else ``~/.local/share/velcro``."""
    if os.environ.get("VELCRO_HOME"):
        return Path(os.environ["VELCRO_HOME"])
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "velcro"


def save_weights(model: nn.Module, path: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write a model's state dict as safetensors, atomically (:mod:`velcro.sw.files`)."""
    from safetensors.torch import save

    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    write_bytes(path, save(state))


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load safetensors or a ``torch.save`` state dict (``weights_only=True``) into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt files raise many different exception types
        raise ModelError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelError(f"{path}: tensor {key!r} holds NaN or infinite values")
    reference = model.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ModelError(f"{path}: weights do not fit the model: {' '.join(first[:3])}") from None
    return model.eval()


def load_reference() -> nn.Sequential:
    """The trained reference model shipped with the package, in eval mode."""
    return load_network("reference")


def load_network(name: str) -> nn.Module:
    """A network of :data:`ARCHITECTURES` with its shipped trained weights, or of
    :data:`TORCHVISION` with the model zoo's (:mod:`velcro.sw.zoo`), in eval mode."""
    if name in TORCHVISION:
        from .zoo import load_zoo_network

        return load_zoo_network(name)
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown network {name!r}; choose one of "
                         f"{', '.join((*ARCHITECTURES, *TORCHVISION))}")
    path = WEIGHTS_DIR / f"{name}.safetensors"
    if not path.is_file():
        raise ModelError(f"weights {path} are missing; run 'velcro train --model {name}'")
    return load_weights(ARCHITECTURES[name](), path)


def reference_record(name: str = "reference") -> dict:
    """What ``velcro train`` measured for the shipped weights (accuracy, seed, epochs), or
    for a :data:`TORCHVISION` name ``velcro zoo train`` for the zoo's (its ``image_size``
    is the input side the network was trained at)."""
    if name in TORCHVISION:
        from .zoo import zoo_record

        return zoo_record(name)
    return json.loads((WEIGHTS_DIR / f"{name}.json").read_text())


def declare_torchvision_ops() -> None:
    """Make ``import torchvision`` work beside the CPU build of torch.

    PyPI's torchvision wheel carries C++ ops linked against the CUDA build of torch;
    beside the CPU wheel they fail to load, and torchvision's import then stops at
    registering fake kernels for ``nms``/``qnms``. The model definitions need none of
    those ops, so when the import fails that way the two op schemas are declared
    (without kernels) first. A no-op when torchvision imports, or is not installed.
    """
    global _TORCHVISION_LIBRARY
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError:
        return
    except RuntimeError:
        if _TORCHVISION_LIBRARY is None:
            _TORCHVISION_LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
            _TORCHVISION_LIBRARY.define(
                "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _TORCHVISION_LIBRARY.define(
                "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


_TORCHVISION_LIBRARY = None


def _import_user_module(name: str):
    """The module ``name`` (dotted, importable) or the Python file ``name`` (a path)."""
    if name.endswith(".py") or "/" in name or "\\" in name:
        path = Path(name)
        if not path.is_file():
            raise ModelError(f"--model file {path} does not exist")
        module_name = f"velcro_user_model_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        return module
    return importlib.import_module(name)


def load_user_model(spec: str, weights: Path | None = None) -> nn.Module:
    """Build a model from ``"package.module:callable"`` or ``"path/to/file.py:callable"``
    and load ``weights`` into it."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr or not attr.isidentifier():
        raise ModelError(f"--model must look like 'package.module:callable' or "
                         f"'path/to/file.py:callable', not {spec!r}")
    declare_torchvision_ops()
    try:
        module = _import_user_module(module_name)
    except ModelError:
        raise
    except ModuleNotFoundError as e:
        raise ModelError(f"cannot import {module_name!r} ({e}); put its folder on PYTHONPATH "
                         "or give the file, as --model path/to/file.py:callable") from None
    except Exception as e:  # a user module can fail to import in any way
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelError(f"cannot import {module_name!r} ({type(e).__name__}: {first})") from None
    if not hasattr(module, attr):
        raise ModelError(f"module {module_name!r} has no attribute {attr!r}")
    try:
        model = getattr(module, attr)()
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelError(f"{spec}() failed ({type(e).__name__}: {first})") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def input_channels(model: nn.Module) -> int:
    """Input channels of the first convolution (how to load image folders); 1 without one."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 1
