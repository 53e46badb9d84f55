"""An independent evaluation of a package's integer graph in torch (int64 emulation).

Products run as float64 convolutions and matrix products of integers (exact below
2**53), every rounding, shift and clamp in int64: what :mod:`velcro.sw.golden` must
equal bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from velcro.sw.export.bits import unpack_mask
from velcro.sw.export.ops import clamp_of
from velcro.sw.export.package import Package, codebook_weight
from velcro.sw.export.schema import INPUT, layer_inputs


def _requant(acc, mult, shift, lo, hi):
    mult = torch.as_tensor(np.asarray(mult, np.int64))
    shift = torch.as_tensor(np.asarray(shift, np.int64))
    if acc.dim() == 4 and mult.dim() == 1:
        mult, shift = mult[:, None, None], shift[:, None, None]
    rounding = torch.where(shift > 0, torch.ones_like(shift) << torch.clamp(shift - 1, min=0),
                           torch.zeros_like(shift))
    return torch.clamp((acc * mult + rounding) >> shift, lo, hi)


def _skip(layer, y):
    if "mask" not in layer.arrays:
        return y
    mask = torch.from_numpy(unpack_mask(layer.arrays["mask"], layer.out_shape))
    return torch.where(mask, torch.from_numpy(layer.arrays["mean"].astype(np.int64)), y)


def _exact(x):
    return torch.round(x).to(torch.int64)


def run(package: Package, images: np.ndarray) -> np.ndarray:
    values = {INPUT: torch.from_numpy(images.astype(np.int64)) >> 1}
    x = None
    for layer, inputs in zip(package.layers, layer_inputs(package.layers), strict=True):
        xs = [values[name] for name in inputs]
        a, attrs = layer.arrays, layer.attrs
        if layer.op in ("conv3x3", "conv"):
            general = layer.op == "conv"
            w = torch.from_numpy(a["weight"].astype(np.float64))
            acc = _exact(F.conv2d(xs[0].double(), w,
                                  stride=attrs["stride"] if general else attrs["stride"],
                                  padding=attrs["padding"] if general else 1,
                                  groups=attrs["groups"] if general else 1))
            acc = acc + torch.from_numpy(a["bias"].astype(np.int64))[:, None, None]
            x = _skip(layer, _requant(acc, a["mult"], a["shift"], *clamp_of(layer.op, attrs)))
        elif layer.op == "add":
            acc = xs[0] * int(a["mult"][0]) + xs[1] * int(a["mult"][1])
            x = _skip(layer, _requant(acc, np.int64(1), a["shift"][0],
                                      *clamp_of(layer.op, attrs)))
        elif layer.op == "concat":
            x = torch.cat([_requant(v, m, s, -128, 127)
                           for v, m, s in zip(xs, a["mult"], a["shift"], strict=True)], dim=1)
        elif layer.op == "maxpool2x2":
            x = _exact(F.max_pool2d(xs[0].double(), 2))
        elif layer.op == "maxpool":
            x = _exact(F.max_pool2d(xs[0].double(), attrs["kernel"], attrs["stride"],
                                    attrs["padding"], ceil_mode=attrs["ceil_mode"]))
        elif layer.op == "avgpool":
            args = (attrs["kernel"], attrs["stride"], attrs["padding"], attrs["ceil_mode"],
                    attrs["count_include_pad"])
            total = _exact(F.avg_pool2d(xs[0].double(), *args, divisor_override=1))
            ones = torch.ones_like(xs[0][:1, :1], dtype=torch.float64)
            real = F.avg_pool2d(ones, *args, divisor_override=1)
            divisor = _exact(real / F.avg_pool2d(ones, *args))
            x = torch.div(2 * total + divisor, 2 * divisor, rounding_mode="floor")
        elif layer.op == "flatten":
            x = xs[0].reshape(len(xs[0]), -1)
        else:
            w = codebook_weight(layer) if layer.op == "dense_codebook" else a["weight"]
            acc = _exact(xs[0].double() @ torch.from_numpy(w.astype(np.float64)).T)
            acc = acc + torch.from_numpy(a["bias"].astype(np.int64))
            if attrs["output"] == "int32":
                x = acc
            else:
                x = _requant(acc, a["mult"], a["shift"], 0 if attrs["relu"] else -128, 127)
        values[layer.name] = x
    return x.numpy()
