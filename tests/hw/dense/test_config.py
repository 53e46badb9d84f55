# amaranth: UnusedElaboratable=no
"""Dense engine parameters and layer descriptions (velcro.hw.dense.config): refusals."""

import pytest

from velcro.hw.dense.config import DenseConfig, DenseLayer


@pytest.mark.parametrize("params, name", [
    ({"width": 96}, "width"),
    ({"width": 32}, "width"),
    ({"max_k": 3}, "max_k"),
    ({"max_k": 512}, "max_k"),
    ({"max_k": 8}, "max_k"),
    ({"max_s": 0}, "max_s"),
    ({"max_s": 9}, "max_s"),
    ({"macs": 24}, "macs"),
    ({"max_k": 16, "macs": 32}, "macs"),
    ({"max_n_in": 100}, "max_n_in"),
    ({"max_n_out": 8}, "max_n_out"),
    ({"macs": 8}, "macs"),                 # fewer int8 MACs than the 16 lanes
])
def test_bad_configuration_names_the_parameter(params, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        DenseConfig(**params)


@pytest.mark.parametrize("params, match", [
    ({"k": 12}, "k must be a power of two"),
    ({"k": 1}, "k must be a power of two"),
    ({"s": 3}, "s = 3 must divide n_in = 16"),
    ({"mode": "int4"}, "mode must be"),
    ({"mode": "int8", "k": 16}, "int8 mode"),
    ({"n_out": 0}, "n_out must be"),
])
def test_bad_layer_is_named(params, match):
    with pytest.raises(ValueError, match=match):
        DenseLayer(**{"n_in": 16, "n_out": 4, **params})

