"""Host stages: every layer the kernel does not run gives what the golden model gives."""

import dataclasses

import numpy as np
import pytest

from velcro.sw import golden
from velcro.sw.runtime import host


def test_every_layer_on_the_host_gives_the_golden_model(tiny_package, images_for):
    # More images than one golden convolution takes, so the conv runs in chunks.
    images = images_for(tiny_package, host.CHUNK + 3)
    x = golden.quantize_input(images)
    for layer in tiny_package.layers:
        x = host.run_layer(layer, x)
    assert x.dtype == np.int32
    np.testing.assert_array_equal(x, golden.run(tiny_package, images))


def test_an_empty_batch_keeps_the_layer_shape(tiny_package):
    conv = tiny_package.layers[0]
    y = host.run_layer(conv, np.zeros((0, *conv.in_shape), np.int8))
    assert y.shape == (0, *conv.out_shape) and y.dtype == np.int8


def test_an_op_without_a_host_rule_is_an_error(tiny_package):
    layer = dataclasses.replace(tiny_package.layers[1], op="avgpool2x2")
    with pytest.raises(ValueError, match="no host rule for op 'avgpool2x2'"):
        host.run_layer(layer, np.zeros((1, *layer.in_shape), np.int8))
