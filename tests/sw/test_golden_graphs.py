"""The golden model on graph packages: each op against torch, and whole torchvision
networks against an independent int64 evaluation in torch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from velcro.hw.kernel.config import SHIPPED
from velcro.sw import golden
from velcro.sw.data import Dataset, Task
from velcro.sw.export.quantize import quantize
from velcro.sw.locality.plan import compress
from velcro.sw.locality.profile import profile
from velcro.sw.locality.taps import tap
from velcro.sw.models import torchvision_model
from velcro.sw.runtime.partition import devices, kernel_mac_fraction, partition
from velcro.sw.runtime.program import conv_form

from . import torch_integer


@pytest.mark.parametrize("kernel, stride, padding, groups", [
    (1, 1, 0, 1), (3, 2, 1, 1), (5, 1, 2, 1), (7, 2, 3, 1), (3, 1, 1, 6), (3, 2, 1, 3),
    ((1, 3), (2, 1), (0, 1), 2)])
def test_conv_accumulators_equal_torch(rng, kernel, stride, padding, groups):
    x = rng.integers(-128, 128, (2, 6, 9, 11))
    w = rng.integers(-128, 128, (12, 6 // groups, *np.broadcast_to(kernel, 2)))
    bias = rng.integers(-1000, 1000, 12)
    expected = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                        torch.from_numpy(bias).double(), stride, padding, groups=groups)
    got = golden.conv_acc(x, w, bias, stride, padding, groups)
    assert np.array_equal(got, expected.round().long().numpy())


def test_conv_clamps_to_the_activation_and_skips(rng):
    x = rng.integers(-128, 128, (1, 3, 5, 5))
    w = rng.integers(-128, 128, (4, 3, 3, 3))
    bias = np.zeros(4, np.int64)
    mult, shift = np.full(4, 1, np.uint16), np.full(4, 8, np.uint8)
    acc = golden.conv_acc(x, w, bias, 1, 1)
    plain = np.clip((acc + 128) >> 8, -128, 127)
    assert np.array_equal(golden.conv(x, w, bias, mult, shift, 1, 1, lo=-128), plain)
    assert np.array_equal(golden.conv(x, w, bias, mult, shift, 1, 1, lo=0, hi=20),
                          np.clip(plain, 0, 20))
    mask = np.zeros((4, 5, 5), bool)
    mask[1, 2, 3] = True
    mean = np.zeros((4, 5, 5), np.int8)
    mean[1, 2, 3] = 7
    skipped = golden.conv(x, w, bias, mult, shift, 1, 1, lo=0, mask=mask, mean=mean)
    assert skipped[0, 1, 2, 3] == 7
    assert np.array_equal(np.delete(skipped.ravel(), 1 * 25 + 2 * 5 + 3),
                          np.delete(np.clip(plain, 0, 127).ravel(), 1 * 25 + 2 * 5 + 3))
    assert golden.clamp_bounds("relu6", 6 / 50) == (0, 50)
    assert golden.clamp_bounds("relu6", 0.01) == (0, 127)


def test_add_forms_the_sum_before_one_rounding():
    a, b = np.array([[1, -3, 100]]), np.array([[1, 2, 100]])
    # (a * 3 + b * 5 + 2) >> 2, then clamp: 8 >> 2 = 2, (-9 + 10 + 2) >> 2 = 0, 802 >> 2 = 200.
    assert golden.add(a, b, np.array([3, 5]), 2).tolist() == [[2, 0, 127]]
    assert golden.add(-a, b, np.array([3, 5]), 2, lo=0).tolist() == [[1, 5, 50]]
    assert golden.add(-a, 0 * b, np.array([3, 5]), 2, lo=0, hi=40).tolist() == [[0, 2, 0]]


def test_concat_requantizes_each_operand(rng):
    a, b = rng.integers(-128, 128, (2, 3, 4, 4)), rng.integers(-128, 128, (2, 5, 4, 4))
    y = golden.concat([a, b], np.array([1, 3]), np.array([0, 2]))
    assert y.shape == (2, 8, 4, 4)
    assert np.array_equal(y[:, :3], a)
    assert np.array_equal(y[:, 3:], np.clip((b * 3 + 2) >> 2, -128, 127))


@pytest.mark.parametrize("kernel, stride, padding, ceil", [
    (2, 2, 0, False), (3, 2, 1, False), (3, 2, 0, True), (3, 1, 1, True), (2, 2, 0, True),
    (3, 3, 1, True)])
def test_max_pooling_equals_torch(rng, kernel, stride, padding, ceil):
    x = rng.integers(-128, 128, (2, 3, 7, 8)).astype(np.int8)
    expected = F.max_pool2d(torch.from_numpy(x).double(), kernel, stride, padding,
                            ceil_mode=ceil).long().numpy()
    assert np.array_equal(golden.maxpool(x, kernel, stride, padding, ceil), expected)


@pytest.mark.parametrize("kernel, stride, padding, ceil, include", [
    (2, 2, 0, False, True), (3, 2, 1, False, True), (3, 2, 1, False, False),
    (3, 2, 1, True, True), (3, 2, 0, True, False), (7, 7, 0, False, True)])
def test_average_pooling_rounds_torch_s_mean_half_up(rng, kernel, stride, padding, ceil,
                                                     include):
    x = rng.integers(-128, 128, (2, 3, 7, 7)).astype(np.int8)
    mean = F.avg_pool2d(torch.from_numpy(x).double(), kernel, stride, padding, ceil, include)
    expected = torch.floor(mean + 0.5).long().numpy()
    assert np.array_equal(golden.avgpool(x, kernel, stride, padding, ceil, include), expected)


def _random_task(rng, n: int = 40) -> Task:
    images = rng.integers(0, 256, (n, 1, 64, 64), dtype=np.uint8)
    return Task("random", tuple(range(10)),
                Dataset(images, rng.integers(0, 10, n), tuple("abcdefghij")),
                preprocessing_fraction=0.5)


@pytest.mark.parametrize("name, minimum_layers", [
    ("resnet18", 30), ("mobilenet_v2", 60), ("googlenet", 80)])
def test_torchvision_networks_export_and_golden_equals_int64_torch(name, minimum_layers):
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    model = torchvision_model(name)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    task = _random_task(rng)
    tapped = tap(model)
    found = profile(tapped, task.split("preprocessing").images)
    plan = compress(found, [25.0] * len(found.layers))
    package = quantize(model, task, plan)
    assert len(package.layers) >= minimum_layers
    assert len(package.tapped) == len(found.layers)
    assert 0.25 <= package.C < 1.0          # ties at the percentile are replaced too
    images = rng.integers(0, 256, (20, 1, 64, 64), dtype=np.uint8)
    logits = golden.run(package, images)
    assert np.array_equal(logits, torch_integer.run(package, images))
    assert len(set(logits.argmax(1).tolist())) >= 1 and np.ptp(logits) > 0
    stages = partition(package, SHIPPED)
    model_macs = {c.name: c.macs + c.skipped for c in golden.GoldenModel(package).per_image()}
    fraction = kernel_mac_fraction(stages, model_macs)
    where = devices(stages)
    on_kernel = sum(m for n, m in model_macs.items() if where[n] == "kernel")
    assert fraction == pytest.approx(on_kernel / sum(model_macs.values()))
    assert {where[layer.name] for layer in package.layers if layer.op == "add"} <= {"host"}
    # Every convolution the conv array computes runs on the kernel, in tiles where it
    # exceeds the buffers, unless it has more input channels than they hold.
    for layer in package.layers:
        if layer.op in ("conv3x3", "conv") and conv_form(layer) is None:
            fits = layer.in_shape[0] <= SHIPPED.conv.max_channels
            assert where[layer.name] == ("kernel" if fits else "host"), layer.name
