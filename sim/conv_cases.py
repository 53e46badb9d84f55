"""Stimuli for the conv-array bench, with golden outputs and cost-model cycle counts.

A *case* is an int8 input tensor and a chain of conv layers run back to back on the
array; :func:`finish_case` attaches what the bench checks: the golden output
(:func:`velcro.sw.golden.conv3x3`, layer after layer) and the cycles of every
operation (:mod:`velcro.hw.conv.cost`). Nothing here looks at the hardware
generator.

:func:`reference_cases` builds cases from the shipped reference CNN: weights
quantized symmetrically per output channel, activation scales calibrated on
Fashion-MNIST test images, bias and requantization factors derived from the scales,
and VELCRO masks chosen by per-element variance of the integer activations over
those images (the means rounded to int8). This is a simple quantization for test
stimuli; the deployment package defines its own.
"""

from __future__ import annotations

import numpy as np

from velcro.hw.conv.config import ConvArrayConfig, ConvLayer
from velcro.hw.conv.cost import (
    expected_cycles,
    expected_drain_cycles,
    expected_load_cycles,
    expected_mac_cycles,
    expected_pool_cycles,
)
from velcro.sw import golden

__all__ = ["POOL", "edge_cases", "finish_case", "layer_spec", "random_case", "random_mask",
           "reference_cases"]

POOL = {"pool": True}
"""A step of a case's chain that max-pools the tensor 2x2 on the array (``POOL``)."""


def finish_case(name: str, x: np.ndarray, specs: list[dict], config: ConvArrayConfig) -> dict:
    """Attach golden outputs and expected cycle counts to a chain of layer specs.

    Each spec holds ``layer`` (:class:`ConvLayer`), int8 ``w``, int32 ``bias``,
    ``mult``, ``shift``, and ``mask`` (bool, or ``None`` for no skipping) with int8
    ``mean``; or it is :data:`POOL` (a copy is taken), a 2x2 max-pooling
    (:func:`velcro.sw.golden.maxpool2x2`).
    """
    y = np.asarray(x, np.int8)
    shape = y.shape
    specs = [dict(spec) if spec.get("pool") else spec for spec in specs]
    for spec in specs:
        if spec.get("pool"):
            spec.update(cycles=expected_pool_cycles(*y.shape, config), mac_cycles=0,
                        skipped=0, shape=list(y.shape))
            y = golden.maxpool2x2(y)
            continue
        layer = spec["layer"].check(config)
        if y.shape != (layer.c_in, layer.height, layer.width):
            raise ValueError(f"{name}: layer {layer} does not take a {list(y.shape)} input")
        y = golden.conv3x3(y, spec["w"], spec["bias"], spec["mult"], spec["shift"],
                           stride=layer.stride, mask=spec["mask"], mean=spec["mean"],
                           relu=layer.relu)
        spec["cycles"] = expected_cycles(layer, spec["mask"], config)
        spec["mac_cycles"] = expected_mac_cycles(layer, spec["mask"], config)
        spec["skipped"] = 0 if spec["mask"] is None else int(spec["mask"].sum())
    return {"name": name, "x": np.asarray(x, np.int8), "layers": specs, "expected": y,
            "load_cycles": expected_load_cycles(*shape, config),
            "drain_cycles": expected_drain_cycles(*y.shape, config)}


def random_mask(rng: np.random.Generator, shape: tuple[int, ...], ratio: float) -> np.ndarray:
    """A mask with exactly ``round(ratio * size)`` elements set, uniformly placed."""
    size = int(np.prod(shape))
    mask = np.zeros(size, bool)
    mask[rng.permutation(size)[:round(ratio * size)]] = True
    return mask.reshape(shape)


def layer_spec(layer: ConvLayer, rng: np.random.Generator, skip: float | None = None) -> dict:
    """Random int8 kernels, bias and requantization for ``layer``; skip ratio ``skip``.

    The requantization scales (a factor of 0.5 to 2 apart between channels) map the
    accumulators of random full-range int8 operands to about +-40.
    """
    out_shape = (layer.c_out, layer.out_height, layer.out_width)
    acc_std = 74.0 * 74.0 * 3.0 * np.sqrt(layer.c_in)     # std of uniform int8 ~ 74
    mult, shift = golden.requant_params(40.0 / acc_std * rng.uniform(0.5, 2.0, layer.c_out))
    bound = int(acc_std)
    return {
        "layer": layer,
        "w": rng.integers(-128, 128, (layer.c_out, layer.c_in, 3, 3)).astype(np.int8),
        "bias": rng.integers(-bound, bound + 1, layer.c_out).astype(np.int64),
        "mult": mult, "shift": shift,
        "mask": None if skip is None else random_mask(rng, out_shape, skip),
        "mean": None if skip is None else rng.integers(-128, 128, out_shape).astype(np.int8),
    }


def random_case(name: str, layer: ConvLayer, rng: np.random.Generator,
                config: ConvArrayConfig, skip: float | None = None) -> dict:
    """One layer on a random full-range int8 input."""
    x = rng.integers(-128, 128, (layer.c_in, layer.height, layer.width)).astype(np.int8)
    return finish_case(name, x, [layer_spec(layer, rng, skip)], config)


def edge_cases(config: ConvArrayConfig, rng: np.random.Generator) -> list[dict]:
    """Saturation at both ends of int32 and int8, -128 operands, shift 0 and 31."""
    c = min(config.max_channels, config.lanes + 1)
    h = min(config.max_height, 5)
    w = min(config.max_width, 7)
    full = 9 * 128 * 128 * c                       # |sum| of an interior window, -128 * -128
    cases = []

    def one(name, x, w_value, bias, mult, shift, relu, skip=None):
        layer = ConvLayer(c, c, h, w, relu=relu)
        spec = {"layer": layer, "w": np.full((c, c, 3, 3), w_value, np.int8),
                "bias": np.full(c, bias, np.int64), "mult": np.full(c, mult, np.int64),
                "shift": np.full(c, shift, np.int64), "mask": None, "mean": None}
        if skip is not None:
            spec["mask"] = random_mask(rng, (c, h, w), skip)
            spec["mean"] = rng.choice(np.array([-128, 127, 0], np.int8), (c, h, w))
        cases.append(finish_case(name, x, [spec], config))

    lowest = np.full((c, h, w), -128, np.int8)
    # Interior accumulators reach exactly INT32_MAX / INT32_MIN.
    one("acc_max_mult_max_shift31", lowest, -128, golden.ACC_MAX - full, 0xFFFF, 31, True)
    one("acc_min_no_relu_shift0", lowest, 127, golden.ACC_MIN + 9 * 128 * 127 * c, 0xFFFF, 0,
        False, skip=0.3)
    # Mixed extremes: every operand is -128, 0 or 127; any rounding shift.
    x = rng.choice(np.array([-128, 0, 127], np.int8), (c, h, w))
    layer = ConvLayer(c, c, h, w, relu=False)
    spec = {"layer": layer, "w": rng.choice(np.array([-128, 127], np.int8), (c, c, 3, 3)),
            "bias": rng.integers(-(1 << 20), 1 << 20, c), "mult": rng.integers(0, 1 << 16, c),
            "shift": rng.integers(0, 32, c), "mask": None, "mean": None}
    cases.append(finish_case("extremes_any_shift", x, [spec], config))
    return cases


def _quantize_weights(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.maximum(np.abs(weight).reshape(len(weight), -1).max(axis=1), 1e-12) / 127.0
    return np.round(weight / scale[:, None, None, None]).astype(np.int8), scale


def reference_cases(config: ConvArrayConfig, threshold: float = 40.0,
                    calibration: int = 32, image: int = 0) -> list[dict]:
    """The four conv layers of the reference CNN on one Fashion-MNIST test image.

    Returns one case per layer (with VELCRO masks at ``threshold`` percent of each
    layer's lowest-variance elements) and a case chaining ``conv1`` into ``conv2``
    on the array without masks. Needs torch and the Fashion-MNIST files.
    """
    import torch

    from velcro.sw.data import load_fashion_mnist
    from velcro.sw.locality.plan import percentile_mask
    from velcro.sw.models import load_reference

    model = load_reference()
    images = load_fashion_mnist("test").images[:calibration]
    convs = [(name, module) for name, module in model.named_children()
             if isinstance(module, torch.nn.Conv2d)]
    float_in = torch.from_numpy(images.astype(np.float32) / 255.0)
    float_out = {}
    with torch.no_grad():
        act = float_in
        for name, module in model.named_children():
            act = module(act)
            if name.startswith("relu") and len(float_out) < len(convs):
                float_out[convs[len(float_out)][0]] = act.numpy()
            if isinstance(module, torch.nn.Flatten):
                break

    x_int = np.round(images.astype(np.float64) * 127.0 / 255.0).astype(np.int8)
    scale_in = 1.0 / 127.0                     # x_int / 127 is the float input
    specs, inputs = [], []
    for n, (name, module) in enumerate(convs):
        if n in (2, 3):                       # maxpool2 / maxpool3 run on the host
            x_int = golden.maxpool2x2(x_int)
        w_int, w_scale = _quantize_weights(module.weight.detach().double().numpy())
        out_scale = max(np.percentile(float_out[name], 99.9), 1e-6) / 127.0
        acc_scale = scale_in * w_scale
        bias = np.round(module.bias.detach().double().numpy() / acc_scale).astype(np.int64)
        mult, shift = golden.requant_params(acc_scale / out_scale)
        c_out, c_in = w_int.shape[:2]
        layer = ConvLayer(c_in, c_out, x_int.shape[2], x_int.shape[3],
                          stride=module.stride[0])
        out = golden.conv3x3(x_int, w_int, bias, mult, shift, stride=layer.stride)
        variance = out.astype(np.float64).var(axis=0)
        mean = np.clip(np.round(out.astype(np.float64).mean(axis=0)), -128, 127).astype(np.int8)
        mask = percentile_mask(variance, threshold)
        specs.append({"layer": layer, "w": w_int, "bias": bias, "mult": mult, "shift": shift,
                      "mask": mask, "mean": mean})
        inputs.append(x_int[image])
        x_int = golden.apply_skip(out, mask, mean)
        scale_in = out_scale
    cases = [finish_case(f"reference_{name}", x, [spec], config)
             for (name, _), x, spec in zip(convs, inputs, specs, strict=True)]
    chained = [dict(spec, mask=None, mean=None) for spec in specs[:2]]
    cases.append(finish_case("reference_conv1_conv2_chained", inputs[0], chained, config))
    return cases
