"""Configuration and layer-shape validation of the conv array."""

import pytest

from velcro.hw.conv.array import ConvArray
from velcro.hw.conv.config import SHIPPED, ConvArrayConfig, ConvConfigError, ConvLayer


@pytest.mark.parametrize("name", ["lanes", "max_height", "max_width", "max_channels"])
@pytest.mark.parametrize("bad", [0, -3, 2.5, "16", True])
def test_bad_configuration_names_the_parameter(name, bad):
    with pytest.raises(ConvConfigError, match=f"{name} must be a positive integer, not {bad!r}"):
        ConvArrayConfig(**{name: bad})


# The half-constructed component is never elaborated; Amaranth would warn about that.
@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_conv_array_rejects_a_non_config():
    with pytest.raises(TypeError, match="config must be a ConvArrayConfig"):
        ConvArray({"lanes": 16})


@pytest.mark.parametrize("field, value, limit", [
    ("height", 65, "max_height 64"), ("width", 100, "max_width 64"),
    ("c_in", 65, "max_channels 64"), ("c_out", 80, "max_channels 64"),
])
def test_layer_over_the_configured_maximum_names_the_parameter(field, value, limit):
    shape = {"c_in": 16, "c_out": 16, "height": 64, "width": 64, field: value}
    with pytest.raises(ConvConfigError, match=f"{field} {value} exceeds the conv array's {limit}"):
        ConvLayer(**shape).check(SHIPPED)


@pytest.mark.parametrize("field", ["c_in", "c_out", "height", "width"])
def test_layer_dimensions_must_be_positive(field):
    shape = {"c_in": 1, "c_out": 1, "height": 1, "width": 1, field: 0}
    with pytest.raises(ConvConfigError, match=f"{field} must be a positive integer"):
        ConvLayer(**shape)


@pytest.mark.parametrize("stride", [0, 3, True])
def test_only_strides_one_and_two(stride):
    with pytest.raises(ConvConfigError, match="stride must be 1 or 2"):
        ConvLayer(1, 1, 8, 8, stride=stride)


def test_output_shape_follows_padding_one():
    assert (ConvLayer(1, 1, 7, 8, stride=2).out_height, ConvLayer(1, 1, 7, 8, stride=2).out_width) \
        == (4, 4)
    assert ConvLayer(1, 1, 1, 1, stride=2).out_height == 1
    assert ConvLayer(3, 5, 28, 28).out_width == 28


def test_shipped_geometry():
    assert (SHIPPED.lanes, SHIPPED.max_height, SHIPPED.max_width) == (16, 64, 64)
    # 144 DSP multipliers, each computing the products of two windows with one weight.
    assert (SHIPPED.slots, SHIPPED.multipliers) == (2, 288)
    assert ConvArrayConfig(slots=1).multipliers == 144
    assert SHIPPED.max_groups == 4
    # 22 x 22 words per plane fit the 512 words of a 9-bit plane field; 8 planes.
    assert (SHIPPED.row_blocks, SHIPPED.col_blocks, SHIPPED.plane_bits) == (22, 22, 9)
    assert SHIPPED.bank_depth == 4096


def test_groups_round_up():
    assert ConvLayer(17, 1, 4, 4).groups(SHIPPED) == 2
    assert ConvLayer(16, 1, 4, 4).groups(SHIPPED) == 1
    assert ConvLayer(1, 1, 4, 4).groups(ConvArrayConfig(lanes=3)) == 1


@pytest.mark.parametrize("slots", [0, 3, True, 1.0])
def test_slots_are_one_or_two(slots):
    with pytest.raises(ConvConfigError, match="slots must be 1 or 2"):
        ConvArrayConfig(slots=slots)


def test_the_name_tells_slot_counts_apart():
    assert ConvArrayConfig(slots=1).name != ConvArrayConfig(slots=2).name
