"""Cost model of ``velcro_kernel``: cycles of every descriptor from its shapes and masks.

A descriptor's cycles split three ways (:mod:`velcro.hw.kernel.sequencer`):

``busy``
    Cycles in ``RUN``: the cycle that starts an engine plus the
    engine's own cycles, which come from the engines' cost models
    (:func:`velcro.hw.conv.cost.expected_cycles` and friends,
    :func:`velcro.hw.dense.cost.expected_cycles`). Exact whenever no input stream
    runs dry; a starved engine only takes longer.
``fixed``
    The sequencer's own cycles: fetch request, decode, address computation, command
    issue, check and accounting (one each), plus the tail of flattening (the last
    beat's bytes).
``stall``
    Cycles spent waiting for device memory (descriptor fetch, first data of every
    input stream, write completion); measured by the kernel, not modelled.

so ``cycles == fixed + busy + stall`` for every descriptor, and ``busy`` equals the
model's figure unless a stream ran dry. ``END`` costs :data:`END_FIXED` plus its
fetch stall, and a run :data:`RUN_FIXED` besides its descriptors; the status block a
run ends with counts the same fixed cycles as the status registers, and leaves out
only the wait for its own write from ``cycles`` and ``stall_cycles``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..conv.config import ConvLayer
from ..conv.cost import (
    expected_cycles,
    expected_drain_cycles,
    expected_load_cycles,
    expected_mac_cycles,
    expected_pool_cycles,
)
from ..dense.config import DenseLayer
from ..dense.cost import expected_cycles as dense_cycles
from .config import KernelConfig

__all__ = ["END_FIXED", "RUN_FIXED", "StepCost", "conv_cost", "dense_cost", "flatten_cost",
           "load_map_cost", "load_vector_cost", "pool_cost", "store_map_cost"]

#: FETCH, DECODE, ADDR, ISSUE, CHECK, ACCOUNT.
STEP_FIXED = 6
#: FETCH, DECODE, END_IMAGE.
END_FIXED = 3
#: Cycles of a run outside its descriptors: the start cycle is the first FETCH; the
#: counter write-out takes COUNTERS (1), the status block STATUS (1), then DONE (1),
#: besides their stalls.
RUN_FIXED = 3


@dataclass(frozen=True)
class StepCost:
    """Modelled figures of one descriptor, per image."""

    busy: int
    fixed: int = STEP_FIXED
    mac_cycles: int = 0
    skipped: int = 0


def conv_cost(layer: ConvLayer, mask, config: KernelConfig, void=None) -> StepCost:
    """``CONV``: start cycle plus the conv array's cycles for ``layer`` and ``mask``
    (``void``: as :func:`~velcro.hw.conv.cost.expected_cycles`), and the cycle that sees
    the array done."""
    mask = None if mask is None or not np.any(mask) else np.asarray(mask, bool)
    return StepCost(2 + expected_cycles(layer, mask, config.conv,
                                        None if mask is None else void),
                    mac_cycles=expected_mac_cycles(layer, mask, config.conv),
                    skipped=0 if mask is None else int(mask.sum()))


def load_map_cost(channels: int, height: int, width: int, config: KernelConfig) -> StepCost:
    """``LOAD_MAP``: start cycle plus a ``LOAD``, and the cycle that sees it done."""
    return StepCost(2 + expected_load_cycles(channels, height, width, config.conv))


def store_map_cost(channels: int, height: int, width: int, config: KernelConfig) -> StepCost:
    """``STORE_MAP``: start cycle plus a ``DRAIN`` into the (always ready) packer, and
    the cycle that sees it done."""
    return StepCost(2 + expected_drain_cycles(channels, height, width, config.conv))


def pool_cost(channels: int, height: int, width: int, config: KernelConfig) -> StepCost:
    """``POOL``: start cycle plus the conv array's ``POOL``, and the cycle that sees it
    done."""
    return StepCost(2 + expected_pool_cycles(channels, height, width, config.conv))


def flatten_cost(channels: int, height: int, width: int, config: KernelConfig, *,
                 hwc: bool = False) -> StepCost:
    """``FLATTEN``: a ``DRAIN`` paced by the byte writer, one byte per cycle.

    The array offers its first beat in the third busy cycle and every later beat as
    soon as the writer takes it, which is in the cycle the previous beat's last byte
    is written; the drain ends the cycle after the array is done, and the last beat's
    bytes are written from the cycle before. Channel-last (``hwc``), the writer takes
    a beat every cycle and writes it as a word in the next: a ``DRAIN`` and the last
    word.
    """
    lanes = config.conv.lanes
    if hwc:
        return StepCost(2 + expected_drain_cycles(channels, height, width, config.conv),
                        fixed=STEP_FIXED + 1)
    groups = -(-channels // lanes)
    last = channels - (groups - 1) * lanes
    total = channels * height * width
    return StepCost(2 + 3 + total - last, fixed=STEP_FIXED + last)


def load_vector_cost(records: int) -> StepCost:
    """``LOAD_VEC``: one record per cycle, and the cycle that sees the last one gone."""
    return StepCost(records + 1)


def dense_cost(layer: DenseLayer, config: KernelConfig) -> StepCost:
    """``DENSE``: the dense engine's cycles from command to last output beat, and the
    cycle that sees the last beat taken."""
    return StepCost(dense_cycles(layer, config.dense) + 1)
