"""Set-up shared by the dense engine's tests."""

import pytest

from velcro.hw.dense.config import DenseConfig


@pytest.fixture
def small_dense():
    """A dense engine small enough for Amaranth's simulator: 64-bit streams, 8 multipliers."""
    return DenseConfig(width=64, max_k=256, max_s=8, macs=8, max_n_in=128, max_n_out=64)
