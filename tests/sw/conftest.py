"""Fixtures of the software tests: a tiny hand-made integer package."""

import numpy as np
import pytest

from velcro.sw.package import Layer, Package, pack_mask, save


def make_tiny_package(seed: int = 0) -> Package:
    """conv3x3 1->2 on 6x6 with skips, maxpool, flatten, dense 18->5 (ReLU), dense 5->3."""
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
    hidden = Layer("hidden", "dense", (18,), (5,), 0.1, {"relu": True, "output": "int8"},
                   {"weight": ints(-127, 127, (5, 18), np.int8),
                    "bias": ints(-2000, 2000, (5,), np.int32),
                    "mult": ints(1 << 15, (1 << 16) - 1, (5,), np.uint16),
                    "shift": np.array([21, 22, 23, 24, 25], np.uint8)})
    logits = Layer("logits", "dense", (5,), (3,), 0.001, {"relu": False, "output": "int32"},
                   {"weight": ints(-127, 127, (3, 5), np.int8),
                    "bias": ints(-1000, 1000, (3,), np.int32)})
    return Package(
        input_shape=(1, 6, 6), input_scale=2 / 255, layers=[conv, pool, flat, hidden, logits],
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
