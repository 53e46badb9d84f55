"""Cost model of the conv array: cycles of every operation, from shapes and masks alone.

The model restates the timing rules of the design (module docstrings of
:mod:`~velcro.hw.conv.array` and :mod:`~velcro.hw.conv.scan`) as arithmetic; the
simulations assert the measured counts against it, exactly when no stream is held
back, and within the injected idle cycles otherwise.

``CONV`` with ``G = ceil(c_in / lanes)`` channel groups and a pipeline of ``P``
cycles (:func:`~velcro.hw.conv.array.pipeline_latency`):

* a block of 3x3 output elements with ``n`` computed elements costs
  ``D = max(1, n * G)`` scanner cycles; channel ``c`` costs ``D_c = sum D``;
* the kernels of channel ``c`` arrive as ``G`` beats, one per cycle, as soon as the
  loader is free and the half they go to was released, which happens when
  channel ``c - 2`` has issued its last block: the last beat is taken in cycle
  ``W_c = max(W_{c-1}, f_{c-2}) + G`` (``W_0 = G``) and the channel is usable from
  ``W_c + 1`` (the single requantization beat is never later);
* the scanner loads the first block of channel ``c`` in cycle
  ``l_c = max(f_{c-1}, W_c + 1)`` (``f_{-1} = 1``, the first busy cycle), and
  channel ``c`` finishes issuing in cycle ``f_c = l_c + D_c``;
* the last block reaches the writer ``P`` cycles later, which ends the operation:
  ``cycles = f_{C_out - 1} + P``.

``LOAD`` takes one beat per cycle (``G * H * W`` cycles) and ``DRAIN`` two cycles
more (memory read and output FIFO). ``POOL`` walks one pooled position per cycle
(``G * (H div 2) * (W div 2)``) and ends when the last one is written,
:func:`~velcro.hw.conv.array.pool_latency` cycles later.
"""

from __future__ import annotations

import numpy as np

from .array import pipeline_latency, pool_latency
from .config import SHIPPED, ConvArrayConfig, ConvLayer

__all__ = ["block_counts", "expected_cycles", "expected_drain_cycles", "expected_load_cycles",
           "expected_mac_cycles", "expected_pool_cycles", "ideal_mac_cycles",
           "resource_estimate"]


def _check_mask(layer: ConvLayer, mask) -> np.ndarray:
    shape = (layer.c_out, layer.out_height, layer.out_width)
    if mask is None:
        return np.zeros(shape, bool)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != shape:
        raise ValueError(f"mask must be bool {list(shape)}, not {mask.dtype} {list(mask.shape)}")
    return mask


def block_counts(layer: ConvLayer, mask=None) -> np.ndarray:
    """Computed (unskipped) elements of every 3x3 output block: ``[c_out, rows, cols]``."""
    mask = _check_mask(layer, mask)
    c, h, w = mask.shape
    bh, bw = -(-h // 3), -(-w // 3)
    computed = np.zeros((c, 3 * bh, 3 * bw), np.int64)
    computed[:, :h, :w] = ~mask
    return computed.reshape(c, bh, 3, bw, 3).sum(axis=(2, 4))


def expected_cycles(layer: ConvLayer, mask=None, config: ConvArrayConfig = SHIPPED) -> int:
    """Busy cycles of a ``CONV`` of ``layer`` with skip ``mask`` (``None``: no skipping)."""
    layer.check(config)
    groups = layer.groups(config)
    per_channel = np.maximum(1, block_counts(layer, mask) * groups).sum(axis=(1, 2))
    finish = {-1: 1}
    loaded = {-1: 0}
    for chan, cost in enumerate(per_channel.tolist()):
        released = finish.get(chan - 2, 0)
        loaded[chan] = max(loaded[chan - 1], released) + groups
        start = max(finish[chan - 1], loaded[chan] + 1)
        finish[chan] = start + cost
    return finish[layer.c_out - 1] + pipeline_latency(config)


def expected_mac_cycles(layer: ConvLayer, mask=None,
                        config: ConvArrayConfig = SHIPPED) -> int:
    """Cycles in which the lanes compute: ``groups`` per unskipped element."""
    return int(block_counts(layer, mask).sum()) * layer.groups(config)


def ideal_mac_cycles(layer: ConvLayer, config: ConvArrayConfig = SHIPPED) -> float:
    """The layer's MACs over the array's ``9 * lanes`` multipliers (no skipping)."""
    return layer.macs() / config.multipliers


def expected_load_cycles(channels: int, height: int, width: int,
                         config: ConvArrayConfig = SHIPPED) -> int:
    """Busy cycles of a ``LOAD``: one beat per channel group and position."""
    return -(-channels // config.lanes) * height * width


def expected_drain_cycles(channels: int, height: int, width: int,
                          config: ConvArrayConfig = SHIPPED) -> int:
    """Busy cycles of a ``DRAIN`` into a sink that is always ready."""
    return expected_load_cycles(channels, height, width, config) + 2


def expected_pool_cycles(channels: int, height: int, width: int,
                         config: ConvArrayConfig = SHIPPED) -> int:
    """Busy cycles of a ``POOL`` of a ``channels x height x width`` tensor."""
    if height < 2 or width < 2:
        raise ValueError(f"a 2x2 pooling needs a map of at least 2x2, not {height}x{width}")
    return (expected_load_cycles(channels, height // 2, width // 2, config) +
            pool_latency())


def resource_estimate(config: ConvArrayConfig = SHIPPED) -> dict:
    """What the array is built from, by construction (Yosys gives the mapped figures).

    ``multipliers`` counts the 9 int8 multipliers of every lane and the requantizer's
    one; ``buffer_bits`` the two ping-pong feature buffers in their 9 banks;
    ``kernel_bits`` the double-buffered kernels of all lanes.
    """
    return {
        "multipliers": config.multipliers + 1,
        "buffer_bits": 9 * config.bank_depth * 8 * config.lanes,
        "kernel_bits": config.lanes * 2 * config.max_groups * 9 * 8,
    }
