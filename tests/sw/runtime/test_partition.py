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
