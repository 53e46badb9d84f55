"""Fixtures of the runtime tests: images, accelerators on the ``golden`` device, a
golden platform to change one behaviour of, and a kernel too small for the tiny package."""

import numpy as np
import pytest

from velcro.hw.conv.config import ConvArrayConfig
from velcro.hw.dense.config import DenseConfig
from velcro.hw.kernel.config import SHIPPED, KernelConfig
from velcro.sw.runtime import Accelerator
from velcro.sw.runtime.backends.golden import GoldenPlatform
from velcro.sw.runtime.driver import Platform


@pytest.fixture
def images_for():
    """``images_for(package, n, seed=0)``: ``n`` random uint8 images of ``package``'s shape."""

    def images_for(package, n, seed=0):
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (n, *package.input_shape), dtype=np.uint8)

    return images_for


@pytest.fixture
def golden_accelerator():
    """``golden_accelerator(package, config=SHIPPED)``: ``package`` loaded on the golden device."""

    def golden_accelerator(package, config=SHIPPED):
        accelerator = Accelerator(GoldenPlatform(config), config, "golden")
        accelerator.load(package)
        return accelerator

    return golden_accelerator


@pytest.fixture
def wrapped_platform():
    """A golden platform class whose subclasses change one behaviour."""

    class Wrapped(Platform):
        """A golden platform with one behaviour changed."""

        def __init__(self, config=SHIPPED):
            self.inner = GoldenPlatform(config)
            self.overlay = self.inner.overlay

        def allocate(self, shape, dtype, target):
            return self.inner.allocate(shape, dtype, target)

        def clock(self):
            return self.inner.clock()

        def sleep(self, seconds):
            self.inner.sleep(seconds)

    return Wrapped


@pytest.fixture
def split_config():
    """A kernel too small for part of the tiny package: the flatten and the 18-input
    dense layer run on the host, between two device stages."""
    return KernelConfig(ConvArrayConfig(lanes=2, max_height=8, max_width=8, max_channels=4),
                        DenseConfig(width=64, max_k=256, max_s=2, macs=8, max_n_in=16,
                                    max_n_out=8), data_width=256, max_program=8)
