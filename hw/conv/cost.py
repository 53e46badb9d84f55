"""Cost model of the conv array: cycles of every operation, from shapes and masks alone.

The model restates the timing rules of the design (module docstrings of
:mod:`~velcro.hw.conv.array` and :mod:`~velcro.hw.conv.scan`) as arithmetic; the
simulations assert the measured counts against it, exactly when no stream is held
back, and within the injected idle cycles otherwise.

``CONV`` with ``G = ceil(c_in / lanes)`` channel groups and a pipeline of ``P``
cycles (:func:`~velcro.hw.conv.array.pipeline_latency`):

* blocks of 3x3 output elements are taken in order, one per cycle at most, once
  their channel is usable: a block with ``n >= 1`` computed elements is loaded in
  cycle ``t = max(t' + 1, e, u_c)`` (``t'`` the previous block's take, ``e`` the
  cycle the current block issues its last work, ``u_c`` the channel's first usable
  cycle), issues in ``t + 1 .. t + ceil(n / S) * G`` (``S`` elements a cycle, the
  configuration's ``slots``) and is written ``P`` cycles after that; a
  *void* block (``n = 0``) is taken in ``t = max(t' + 1, u_c)``, whatever the current
  block is doing, and written in the first cycle from ``t + 2`` on (through a
  buffered FIFO) that no computed block is written in (void blocks in order);
* channel ``c`` has issued its work in cycle ``f_c``, the latest of its computed
  blocks' last issue and its void blocks' takes; that releases its half of the
  kernel buffers;
* the kernels of channel ``c`` arrive as ``G`` beats, one per cycle, as soon as the
  loader is free and the half they go to was released by channel ``c - 2``: the
  last beat is taken in cycle ``W_c = max(W_{c-1}, f_{c-2}) + G`` (``W_0 = G``) and
  the channel is usable from ``u_c = W_c + 1`` (the single requantization beat is
  never later); the first take is in cycle 1 at the earliest;
* the operation ends the cycle after the last write: ``cycles = last write + 1``.

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


def _issue_cycles(blocks: np.ndarray, config: ConvArrayConfig) -> np.ndarray:
    """Cycles of each block per channel group: its computed elements, ``slots`` a cycle."""
    return -(-blocks // config.slots)


def expected_cycles(layer: ConvLayer, mask=None, config: ConvArrayConfig = SHIPPED,
                    void=None) -> int:
    """Busy cycles of a ``CONV`` of ``layer`` with skip ``mask`` (``None``: no skipping).

    ``void`` (bool ``[c_out, block rows, block columns]``) says which blocks' mask beats
    carry the ``void`` bit; by default every block without a computed element, as
    :func:`~velcro.hw.conv.format.pack_mask` packs them. A block without a computed
    element whose beat leaves that bit clear is worked on like a computed one, for one
    cycle.
    """
    layer.check(config)
    groups = layer.groups(config)
    latency = pipeline_latency(config)
    blocks = block_counts(layer, mask)
    void = blocks == 0 if void is None else np.asarray(void, bool)
    if void.shape != blocks.shape or np.any(void & (blocks > 0)):
        raise ValueError("void must mark blocks without computed elements, shaped "
                         f"{list(blocks.shape)}")
    counts = np.where(void, 0, np.maximum(1, _issue_cycles(blocks, config) * groups))
    counts = counts.reshape(layer.c_out, -1)
    finish = {}
    loaded = {-1: 0}
    taken, issued = 0, 1          # the previous take; the current block's last issue
    writes, void_takes = set(), []
    for chan, costs in enumerate(counts.tolist()):
        loaded[chan] = max(loaded[chan - 1], finish.get(chan - 2, 0)) + groups
        usable = loaded[chan] + 1
        end = 0
        for cost in costs:
            if cost:
                taken = max(taken + 1, issued, usable)
                issued = taken + cost
                writes.add(issued + latency)
                end = max(end, issued)
            else:
                taken = max(taken + 1, usable)
                void_takes.append(taken)
                end = max(end, taken)
        finish[chan] = end
    last = max(writes, default=0)
    slot = 0
    for take in void_takes:
        slot = max(slot + 1, take + 2)
        while slot in writes:
            slot += 1
        last = max(last, slot)
    return last + 1


def expected_mac_cycles(layer: ConvLayer, mask=None,
                        config: ConvArrayConfig = SHIPPED) -> int:
    """Cycles in which the lanes compute: ``groups`` per ``slots`` unskipped elements of a
    block (rounded up per block)."""
    return int(_issue_cycles(block_counts(layer, mask), config).sum()) * layer.groups(config)


def ideal_mac_cycles(layer: ConvLayer, config: ConvArrayConfig = SHIPPED) -> float:
    """The layer's MACs over the array's ``9 * lanes * slots`` products per cycle (no
    skipping)."""
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

    ``multipliers`` counts the 9 int8 multipliers of every lane (each computing one
    product per slot) and the requantizers' one each; ``buffer_bits`` the two ping-pong
    feature buffers in their 9 banks, one copy per slot; ``kernel_bits`` the
    double-buffered kernels of all lanes.
    """
    return {
        "multipliers": 9 * config.lanes + config.slots,
        "buffer_bits": 9 * config.bank_depth * 8 * config.lanes * config.slots,
        "kernel_bits": config.lanes * 2 * config.max_groups * 9 * 8,
    }
