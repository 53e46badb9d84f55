"""Partitioning a package into device and host stages, and where long networks split."""

import numpy as np

from velcro.hw.kernel.config import SHIPPED, KernelConfig
from velcro.hw.kernel.descriptor import Opcode
from velcro.sw import golden
from velcro.sw.runtime.partition import partition
from velcro.sw.runtime.program import compile_segment


def test_split_config_partitions_into_device_and_host_stages(tiny_package, split_config):
    package = tiny_package
    stages = partition(package, split_config)
    assert [(s.device, s.names) for s in stages] == [
        (True, ["conv", "pool"]), (False, ["flat"]), (False, ["hidden"]),
        (True, ["books", "logits"])]
    assert [(s.device, s.names) for s in partition(package, SHIPPED)] == [
        (True, ["conv", "pool", "flat", "hidden", "books", "logits"])]
    programs = [compile_segment(list(s.layers), split_config) for s in stages if s.device]
    assert [step.opcode for step in programs[0].steps] == [
        Opcode.LOAD_MAP, Opcode.CONV, Opcode.POOL, Opcode.STORE_MAP, Opcode.END]
    assert [step.opcode for step in programs[1].steps] == [
        Opcode.LOAD_VEC, Opcode.DENSE, Opcode.DENSE, Opcode.END]


def test_long_networks_split_at_max_program(tiny_package, golden_accelerator, images_for):
    package = tiny_package
    tight = KernelConfig(SHIPPED.conv, SHIPPED.dense, max_program=5)
    stages = partition(package, tight)
    assert all(len(s.layers) <= 2 for s in stages if s.device)
    # The flatten cannot start a stage: it runs on the host.
    assert (False, ["flat"]) in [(s.device, s.names) for s in stages]
    accelerator = golden_accelerator(package, tight)
    images = images_for(package, 3)
    np.testing.assert_array_equal(accelerator.run(images), golden.run(package, images))


def _graph_package(rng, activation: str, pool: bool):
    """A traced model: 3x3 conv (+ activation), optionally 2x2 max-pooling, then dense."""
    import torch
    from torch import nn

    from velcro.sw.data import Dataset, Task
    from velcro.sw.export.quantize import quantize

    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)]
    layers += {"none": [], "relu": [nn.ReLU()], "relu6": [nn.ReLU6()]}[activation]
    layers += [nn.MaxPool2d(2)] if pool else []
    side = 4 if pool else 8
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * side * side, 3)).eval()
    images = rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    task = Task("t", (0, 1, 2), Dataset(images, rng.integers(0, 3, 40), ("a", "b", "c")),
                preprocessing_fraction=0.5)
    return quantize(model, task)


def test_3x3_convolutions_without_relu_run_on_the_kernel_and_their_signed_maps_pool_there(
        rng, golden_accelerator):
    cases = [("none", False, ["kernel"] * 3), ("relu6", False, ["kernel"] * 3),
             ("relu", True, ["kernel"] * 4), ("none", True, ["kernel"] * 4)]
    for activation, pool, expected in cases:
        package = _graph_package(rng, activation, pool)
        assert package.layers[0].op == ("conv3x3" if activation == "relu" else "conv")
        stages = partition(package, SHIPPED)
        where = [("kernel" if s.device else "host") for s in stages for _ in s.layers]
        assert where == expected, (activation, pool)
        images = rng.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
        device = golden_accelerator(package)
        assert np.array_equal(device.run(images), golden.run(package, images))
