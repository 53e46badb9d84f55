"""Shared fixtures."""

import numpy as np
import pytest


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
def rng():
    return np.random.default_rng(1234)
