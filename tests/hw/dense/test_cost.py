# amaranth: UnusedElaboratable=no
"""The dense engine's cost model (velcro.hw.dense.cost): limits, pipelines, index bound."""

import pytest

from velcro.hw.dense.config import SHIPPED, DenseConfig, DenseLayer
from velcro.hw.dense.cost import expected_cycles, index_bound


@pytest.mark.parametrize("layer, match", [
    (DenseLayer(n_in=256, n_out=4), "n_in = 256 exceeds max_n_in = 128"),
    (DenseLayer(n_in=16, n_out=128), "n_out = 128 exceeds max_n_out = 64"),
    (DenseLayer(n_in=16, n_out=4, s=16), "s = 16 exceeds max_s = 8"),
])
def test_layer_beyond_the_configuration_is_refused(layer, match, small_dense):
    with pytest.raises(ValueError, match=match):
        expected_cycles(layer, small_dense)


def test_int8_mode_needs_the_full_table():
    with pytest.raises(ValueError, match="int8 mode needs max_k = 256"):
        expected_cycles(DenseLayer(n_in=16, n_out=4, mode="int8"),
                        DenseConfig(width=64, max_k=16, macs=8, max_n_out=64))


def test_cost_model_follows_the_slower_pipeline():
    config = DenseConfig(width=64, max_k=256, max_s=8, macs=8, max_n_in=4096, max_n_out=1024)
    # Lookup-bound: 8 groups per segment against 2 cycles of table building.
    a = expected_cycles(DenseLayer(n_in=400, n_out=64, k=16, s=1), config)
    b = expected_cycles(DenseLayer(n_in=800, n_out=64, k=16, s=1), config)
    assert b - a == 400 * 8
    # Builder-bound: 32 * 8 cycles per segment against 1 group.
    a = expected_cycles(DenseLayer(n_in=80, n_out=8, k=256, s=8), config)
    b = expected_cycles(DenseLayer(n_in=160, n_out=8, k=256, s=8), config)
    assert b - a == 10 * 32 * 8


def test_shipped_configuration_is_within_five_percent_of_the_index_bound():
    config = SHIPPED
    layer = DenseLayer(n_in=1024, n_out=256, k=256, s=4)
    assert index_bound(layer, config) == 1024 * 256 * 8 / 4 / config.width
    assert expected_cycles(layer, config) <= 1.05 * index_bound(layer, config)



def test_int8_mode_takes_a_pass_over_the_input_per_block_of_outputs():
    config = DenseConfig(width=64, max_k=256, max_s=8, macs=16, max_n_in=1024, max_n_out=256)
    # A fourth block of 16 outputs costs one more pass over the 64 inputs; 8 more
    # outputs within the last block cost one more row of the drain.
    assert expected_cycles(DenseLayer(n_in=64, n_out=64, mode="int8"), config) - \
        expected_cycles(DenseLayer(n_in=64, n_out=48, mode="int8"), config) == 64
    assert expected_cycles(DenseLayer(n_in=64, n_out=48, mode="int8"), config) == \
        expected_cycles(DenseLayer(n_in=64, n_out=40, mode="int8"), config) + 1


def test_shipped_int8_fc1_is_within_three_percent_of_its_weight_bound():
    layer = DenseLayer(n_in=1024, n_out=256, mode="int8")
    assert index_bound(layer, SHIPPED) == 1024 * 256 / SHIPPED.macs
    assert expected_cycles(layer, SHIPPED) <= 1.03 * index_bound(layer, SHIPPED)
