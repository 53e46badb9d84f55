from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from velcro.sw import golden
from velcro.sw.data import Dataset, Task, make_task, to_float
from velcro.sw.errors import ModelError, PlanError
from velcro.sw.evaluate import predict
from velcro.sw.export.bits import unpack_mask
from velcro.sw.export.codebooks import deploy
from velcro.sw.export.graph import trace
from velcro.sw.export.package import codebook_weight
from velcro.sw.export.quantize import quantize, requant_params
from velcro.sw.locality.experiment import prepare
from velcro.sw.locality.plan import applied, compress
from velcro.sw.locality.profile import profile
from velcro.sw.locality.taps import tap
from velcro.sw.models import lenet_300_100, load_reference
from velcro.sw.vq import methods as vq
from velcro.sw.vq.finetune import dense_weights


def test_requant_params_approximate_the_scale_within_2_to_the_minus_16(rng):
    scales = np.concatenate([2.0 ** rng.uniform(-15, 15, 2000), [1.0, 0.5, 2 ** -15, 65535.0]])
    mult, shift = requant_params(scales)
    assert mult.dtype == np.uint16 and shift.dtype == np.uint8
    assert shift.max() <= 31 and mult.min() > 0
    approx = mult / 2.0 ** shift.astype(np.float64)
    assert np.max(np.abs(approx / scales - 1)) <= 2.0 ** -16
    # The largest shift is used: one more would overflow 16 bits.
    assert np.all((shift == 31) | (np.round(scales * 2.0 ** (shift + 1.0)) > 65535))


def test_requant_params_limits():
    mult, shift = requant_params([1e-12, 2.0 ** -31])
    assert shift.tolist() == [31, 31] and mult.tolist() == [0, 1]
    with pytest.raises(PlanError, match="exceeds 65535"):
        requant_params([70000.0])
    with pytest.raises(PlanError, match="positive and finite"):
        requant_params([0.0])


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("c1", nn.Conv2d(1, 6, 3, padding=1)), ("r1", nn.ReLU()),
        ("p1", nn.MaxPool2d(2)),
        ("block", nn.Sequential(nn.Conv2d(6, 8, 3, padding=1, stride=2), nn.ReLU())),
        ("drop", nn.Dropout(0.5)),
        ("flat", nn.Flatten()),
        ("fc1", nn.Linear(8 * 3 * 3, 16)), ("r3", nn.ReLU()),
        ("fc2", nn.Linear(16, 12)),
        ("fc3", nn.Linear(12, 3)),
    ])).eval()


def synthetic_task(rng, n=300, size=12):
    images = rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    images[: n // 2] //= 3                       # two populations: dark and bright
    labels = rng.integers(0, 3, n)
    return Task("synthetic", (0, 1, 2), Dataset(images, labels, ("a", "b", "c")),
                preprocessing_fraction=0.3)


def test_what_the_traced_front_end_refuses_is_named():
    cases = [
        (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, dilation=2), nn.ReLU(), nn.Flatten(),
                       nn.Linear(2 * 6 * 6, 2)), r"'0' \(Conv2d\).*dilated"),
        (nn.Sequential(nn.ConvTranspose2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(200, 2)),
         r"'0' \(ConvTranspose2d\).*unknown module type"),
        (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Linear(8, 2)),
         "flattened input"),
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 2), nn.ReLU()), "without activation"),
        (nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, 2)),
         r"'1' \(BatchNorm1d\)"),
        (nn.Sequential(nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2)),
         r"'1' \(ReLU\).*must follow"),
    ]
    for model, match in cases:
        with pytest.raises(ModelError, match=match):
            trace(model, (1, 8, 8))


def test_batchnorm_folds_and_activations_fuse_with_qualified_names():
    model = nn.Sequential(OrderedDict(
        c1=nn.Conv2d(1, 4, 5, padding=2), bn=nn.BatchNorm2d(4), act=nn.ReLU6(),
        block=nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU()),
        pool=nn.AvgPool2d(2), flat=nn.Flatten(), fc1=nn.Linear(64, 8), r=nn.ReLU(),
        drop=nn.Dropout(), fc2=nn.Linear(8, 3)))
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 2)
    graph = trace(model.eval(), (1, 8, 8))
    assert [(n.op, n.name, n.activation) for n in graph.nodes] == [
        ("conv", "c1", "relu6"), ("conv", "block.0", "relu"), ("avgpool", "pool", "none"),
        ("flatten", "flat", "none"), ("linear", "fc1", "relu"), ("linear", "fc2", "none")]
    assert [n.tap for n in graph.nodes] == ["c1", "block.0", None, None, None, None]
    c1 = graph.nodes[0]
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    folded = F.conv2d(x, torch.from_numpy(c1.weight), torch.from_numpy(c1.bias), padding=2)
    reference = model.bn.double()(model.c1.double()(x))
    assert torch.allclose(folded, reference, atol=1e-12)


def test_integer_logits_follow_the_float_model(rng):
    model, task = small_cnn(), synthetic_task(rng)
    tapped = tap(model)
    plan = compress(profile(tapped, task.split("preprocessing").images), [30, 50])
    package = quantize(model, task, plan)
    images = task.split("validation").images
    with applied(tapped, plan), torch.inference_mode():
        expected = tapped.module(to_float(images)).numpy()
    logits = golden.run(package, images) * package.layers[-1].out_scale
    spread = expected.max() - expected.min()
    assert np.abs(logits - expected).max() < 0.05 * spread
    assert np.mean(logits.argmax(1) == expected.argmax(1)) > 0.9
    assert [layer.op for layer in package.layers] == [
        "conv3x3", "maxpool2x2", "conv3x3", "flatten", "dense", "dense", "dense"]
    assert [layer.name for layer in package.layers] == [
        "c1", "p1", "block.0", "flat", "fc1", "fc2", "fc3"]
    assert package.layers[5].attrs == {"relu": False, "output": "int8"}


def test_plan_becomes_bit_masks_and_int8_means(rng):
    model, task = small_cnn(), synthetic_task(rng)
    tapped = tap(model)
    plan = compress(profile(tapped, task.split("preprocessing").images), [40, 70])
    package = quantize(model, task, plan)
    convs = [layer for layer in package.layers if layer.op == "conv3x3"]
    assert package.C == pytest.approx(plan.C)
    assert package.velcro["thresholds"] == [40.0, 70.0]
    for layer, p in zip(convs, plan.layers, strict=True):
        mask = unpack_mask(layer.arrays["mask"], layer.out_shape)
        np.testing.assert_array_equal(mask, p.mask)
        assert layer.attrs["skipped"] == p.replaced > 0
        dequantized = layer.arrays["mean"][mask] * layer.out_scale
        assert np.abs(dequantized - p.mean[mask]).max() <= layer.out_scale / 2 + 1e-9
        assert not layer.arrays["mean"][~mask].any()


def test_plan_for_another_model_is_rejected(rng):
    model, task = small_cnn(), synthetic_task(rng)
    plan = compress(profile(tap(model), task.split("preprocessing").images), [10, 10])
    plan.layers.reverse()
    with pytest.raises(PlanError, match="do not match"):
        quantize(model, task, plan)


def test_dense_only_model_quantizes_without_a_plan(rng):
    torch.manual_seed(1)
    model = lenet_300_100().eval()
    images = rng.integers(0, 256, (200, 1, 28, 28), dtype=np.uint8)
    task = Task("noise", tuple(range(10)),
                Dataset(images, rng.integers(0, 10, 200), tuple("0123456789")),
                preprocessing_fraction=0.5)
    package = quantize(model, task)
    assert package.C == 0.0 and package.velcro["thresholds"] == []
    assert np.mean(golden.run(package, images).argmax(1) == predict(model, images)) > 0.9


@pytest.mark.parametrize("name", ["footwear", "tops"])
def test_reference_package_accuracy_is_within_half_a_point_of_float(name):
    model = load_reference()
    task = make_task(name)
    setup = prepare(model, task, sensitivity=False)
    plan = compress(setup.profile, [20, 30, 30, 20])
    package = quantize(model, task, plan)
    val = task.split("validation")
    with applied(setup.tapped, plan):
        float_accuracy = np.mean(predict(setup.tapped.module, val.images) == val.labels)
    accuracy = np.mean(golden.run(package, val.images).argmax(1) == val.labels)
    assert package.C > 0.2
    assert abs(accuracy - float_accuracy) <= 0.005


def test_codebook_layers_are_vq_deployed_and_follow_the_float_model(rng):
    model, task = small_cnn(), synthetic_task(rng)
    weights = dense_weights(model, ["fc1", "fc3"])
    dense = {"fc1": vq.product_quantize(weights["fc1"], 16, 4),
             "fc3": vq.kmeans(weights["fc3"], 8)}
    package = quantize(model, task, None, dense=dense)
    layers = {layer.name: layer for layer in package.layers}
    assert [layers[n].op for n in ("fc1", "fc2", "fc3")] == ["dense_codebook", "dense",
                                                             "dense_codebook"]
    for name, q in dense.items():
        deployed = deploy(q)
        layer = layers[name]
        np.testing.assert_array_equal(layer.arrays["codebooks"], deployed.codebooks)
        np.testing.assert_array_equal(codebook_weight(layer), deployed.weight())
        assert layer.attrs["weight_scale"] == deployed.scale
        assert layer.attrs["bits"] == deployed.bits
        assert layer.attrs["segment"] == deployed.segment == (4 if name == "fc1" else 1)
    assert layers["fc1"].attrs["shared"] is False and layers["fc3"].attrs["shared"] is True
    assert layers["fc3"].out_scale == pytest.approx(layers["fc2"].out_scale
                                                    * deploy(dense["fc3"]).scale)
    # The float model with the same codebook weights is what the integers approximate.
    for name, q in dense.items():
        deployed = deploy(q)
        getattr(model, name).weight.data = torch.from_numpy(
            (deployed.weight() * deployed.scale).astype(np.float32))
    images = task.split("validation").images
    with torch.inference_mode():
        expected = model(to_float(images)).numpy()
    logits = golden.run(package, images) * package.layers[-1].out_scale
    assert np.abs(logits - expected).max() < 0.05 * (expected.max() - expected.min())


def test_codebook_layers_must_exist_and_be_deployable(rng):
    model, task = small_cnn(), synthetic_task(rng)
    weights = dense_weights(model, ["fc1"])
    with pytest.raises(ModelError, match="no dense layer 'c1'"):
        quantize(model, task, dense={"c1": vq.kmeans(weights["fc1"], 4)})
    with pytest.raises(ModelError, match=r"is \[16, 72\], the model's weights are \[12, 16\]"):
        quantize(model, task, dense={"fc2": vq.kmeans(weights["fc1"], 4)})
    with pytest.raises(vq.VQError, match="x-axis PQ"):
        quantize(model, task, dense={"fc1": vq.product_quantize(weights["fc1"], 4, 4, "y")})
