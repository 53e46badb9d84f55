"""Shared fixtures: the tiny hand-made integer package and the exported footwear package."""

import subprocess
from pathlib import Path

import numpy as np
import pytest

from velcro.sw.export.bits import pack_indices, pack_mask
from velcro.sw.export.package import Layer, Package, save

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"hw": "velcro.hw", "sw": "velcro.sw", "sim": "velcro.sim"}


@pytest.fixture(scope="session")
def repo_files() -> list[Path]:
    """The repository's tracked files (git's list; without git, every file of the
    source folders)."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
        return [ROOT / line for line in out.splitlines() if (ROOT / line).exists()]
    except (OSError, subprocess.CalledProcessError):
        return [p for root in SOURCES for p in (ROOT / root).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts]



@pytest.fixture(scope="session")
def torchvision_models():
    """``torchvision.models``, importable beside the CPU build of torch.

    PyPI's torchvision wheel for x86_64 carries C++ ops linked against the CUDA
    build of torch; beside the CPU wheel they fail to load, and torchvision's import
    then stops at registering fake kernels for ``nms``/``qnms``. The model
    definitions need none of those ops, so when the extension is missing the two op
    schemas are declared (without kernels) before importing.
    """
    import torch

    try:
        import torchvision
    except RuntimeError:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        pytest.torchvision_schema_lib = lib  # keep the registration alive
        import torchvision
    return torchvision.models


@pytest.fixture
def plant():
    """``plant(target, kind, victim)``: put a ``symlink`` (to ``victim``), ``directory`` or
    ``fifo`` where an output is to be written."""
    import os

    def make(target: Path, kind: str, victim: Path) -> None:
        if kind == "symlink":
            target.symlink_to(victim)
        elif kind == "directory":
            target.mkdir()
        else:
            os.mkfifo(target)
    return make


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def footwear_package(tmp_path_factory):
    """The reference CNN exported for ``footwear`` with VELCRO thresholds (int8 dense)."""
    from velcro.sw.data import make_task
    from velcro.sw.export import export
    from velcro.sw.models import load_reference

    path = tmp_path_factory.mktemp("footwear") / "footwear.velcro"
    save(export(load_reference(), make_task("footwear"), [20, 30, 30, 20]), path)
    return path


def make_tiny_package(seed: int = 0) -> Package:
    """conv3x3 1->2 on 6x6 with skips, maxpool, flatten, dense 18->6 (ReLU), codebook
    dense 6->4 (ReLU; segments of 2, 8 codewords each), shared-codebook dense 4->3."""
    rng = np.random.default_rng(seed)

    def ints(lo, hi, shape, dtype):
        return rng.integers(lo, hi, shape, endpoint=True).astype(dtype)

    mask = rng.random((2, 6, 6)) < 0.3
    mean = np.where(mask, ints(0, 127, mask.shape, np.int8), 0).astype(np.int8)
    conv = Layer("conv", "conv3x3", (1, 6, 6), (2, 6, 6), 0.05,
                 {"stride": 1, "skipped": int(mask.sum())},
                 {"weight": ints(-127, 127, (2, 1, 3, 3), np.int8),
                  "bias": ints(-3000, 3000, (2,), np.int32),
                  "mult": ints(1 << 15, (1 << 16) - 1, (2,), np.uint16),
                  "shift": np.array([22, 24], np.uint8),
                  "mask": pack_mask(mask), "mean": mean})
    pool = Layer("pool", "maxpool2x2", (2, 6, 6), (2, 3, 3), 0.05)
    flat = Layer("flat", "flatten", (2, 3, 3), (18,), 0.05)
    hidden = Layer("hidden", "dense", (18,), (6,), 0.1, {"relu": True, "output": "int8"},
                   {"weight": ints(-127, 127, (6, 18), np.int8),
                    "bias": ints(-2000, 2000, (6,), np.int32),
                    "mult": ints(1 << 15, (1 << 16) - 1, (6,), np.uint16),
                    "shift": np.array([21, 22, 23, 24, 25, 24], np.uint8)})
    books = Layer("books", "dense_codebook", (6,), (4,), 0.2,
                  {"relu": True, "output": "int8", "bits": 3, "segment": 2, "shared": False,
                   "weight_scale": 0.01},
                  {"codebooks": ints(-127, 127, (3, 8, 2), np.int8),
                   "indices": pack_indices(rng.integers(0, 8, (4, 3)), 3),
                   "bias": ints(-500, 500, (4,), np.int32),
                   "mult": ints(1 << 15, (1 << 16) - 1, (4,), np.uint16),
                   "shift": np.array([20, 21, 22, 23], np.uint8)})
    logits = Layer("logits", "dense_codebook", (4,), (3,), 0.001,
                   {"relu": False, "output": "int32", "bits": 2, "segment": 1, "shared": True,
                    "weight_scale": 0.02},
                   {"codebooks": ints(-127, 127, (1, 4, 1), np.int8),
                    "indices": pack_indices(rng.integers(0, 4, (3, 4)), 2),
                    "bias": ints(-1000, 1000, (3,), np.int32)})
    return Package(
        input_shape=(1, 6, 6), input_scale=2 / 255,
        layers=[conv, pool, flat, hidden, books, logits],
        task={"name": "tiny", "classes": [0, 2], "class_names": ["a", "b", "c"]},
        velcro={"criterion": "variance", "thresholds": [30.0], "C": float(mask.mean())},
        source={"model": None, "weights": None, "data": None, "image_size": None,
                "parameters_sha256": "0" * 64})


@pytest.fixture
def tiny_package():
    return make_tiny_package()


@pytest.fixture(scope="session")
def tiny_package_bytes(tmp_path_factory):
    """The bytes of the saved tiny package (session-wide: hypothesis tests reuse it)."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.velcro"
    save(make_tiny_package(), path)
    return path.read_bytes()


def make_conv_package(rng, c_in: int, c_out: int, side: int, stride: int, relu: bool = True,
                      pool: int = 1):
    """A traced conv (3x3, padding 1) on a ``side x side`` map, a ``pool x pool`` max-pooling
    if ``pool > 1``, a flatten and a dense layer; with ReLU the conv is a ``conv3x3`` with
    a random VELCRO mask on its output, without a ``conv`` that skips nothing."""
    import torch
    from torch import nn

    from velcro.sw.data import Dataset, Task
    from velcro.sw.export.quantize import quantize

    torch.manual_seed(1)
    out = ((side - 1) // stride + 1) // pool
    model = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
                          *([nn.ReLU()] if relu else []),
                          *([nn.MaxPool2d(pool)] if pool > 1 else []), nn.Flatten(),
                          nn.Linear(c_out * out * out, 3)).eval()
    images = rng.integers(0, 256, (24, c_in, side, side), dtype=np.uint8)
    task = Task("t", (0, 1, 2), Dataset(images, rng.integers(0, 3, 24), ("a", "b", "c")),
                preprocessing_fraction=0.5)
    package = quantize(model, task)
    conv = package.layers[0]
    if not relu:
        assert conv.op == "conv" and "mask" not in conv.arrays
        return package
    mask = rng.random(conv.out_shape) < 0.4
    conv.arrays["mask"] = pack_mask(mask)
    conv.arrays["mean"] = np.where(mask, rng.integers(0, 128, conv.out_shape), 0).astype(np.int8)
    conv.attrs["skipped"] = int(mask.sum())
    package.velcro["C"] = mask.sum() / mask.size
    return package


@pytest.fixture
def conv_package():
    """``conv_package(rng, c_in, c_out, side, stride, relu=True, pool=1)``: see
    :func:`make_conv_package`."""
    return make_conv_package
