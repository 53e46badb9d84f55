"""How tensors travel on the conv array's streams: Amaranth layouts and NumPy packers.

Every stream of :class:`~velcro.hw.conv.array.ConvArray` carries one of the layouts below;
the packers turn golden-model tensors into the integer payloads of those layouts
(and back), taking field offsets from the layouts so the two cannot drift apart.
Element 0 of an array layout sits in the least significant bits.

``ifmap`` / ``ofmap`` (:func:`activations_layout`)
    One beat per position and channel group, in order ``(group, y, x)``; lane ``l``
    of group ``g`` carries channel ``g * lanes + l`` (zero beyond the last channel).
``weights`` (:func:`weights_layout`)
    One beat per output channel and input group, in order ``(o, g)``; lane ``l``
    carries the 9 taps ``w[o, g * lanes + l, ky, kx]`` at index ``3 * ky + kx``.
``requant`` (:data:`REQUANT_LAYOUT`)
    One beat per output channel: bias, mult, shift of the golden requantization.
``mask`` (:data:`MASK_LAYOUT`)
    One beat per 3x3 block of output elements, in order ``(o, block row, block
    column)``; element ``(3 * br + i, 3 * bc + j)`` is bit/index ``3 * i + j`` of
    ``skip``/``mean``. Elements outside the map are never computed; their ``skip``
    bits are set. ``void`` marks a block whose 9 bits are all set (nothing to
    compute): every element inside the map takes its mean, whatever ``skip`` says,
    and the array knows it from one bit of the beat.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from amaranth.hdl import signed, unsigned
from amaranth.lib import data

__all__ = ["MASK_LAYOUT", "REQUANT_LAYOUT", "activations_layout", "pack_activations",
           "pack_mask", "pack_requant", "pack_weights", "unpack_activations", "weights_layout"]

TAPS = 9

REQUANT_LAYOUT = data.StructLayout({"bias": signed(32), "mult": unsigned(16),
                                    "shift": unsigned(5)})
"""Per output channel: ``y = clamp((acc * mult + (1 << (shift-1))) >> shift)``, acc from bias."""

MASK_LAYOUT = data.StructLayout({"skip": unsigned(TAPS), "mean": data.ArrayLayout(signed(8), TAPS),
                                 "void": unsigned(1)})
"""Per 3x3 block of output elements: which are replaced, and by what."""


def activations_layout(lanes: int) -> data.ArrayLayout:
    """One int8 per lane: a position of one channel group."""
    return data.ArrayLayout(signed(8), lanes)


def weights_layout(lanes: int) -> data.ArrayLayout:
    """Nine int8 taps per lane: one output channel's kernels for one channel group."""
    return data.ArrayLayout(data.ArrayLayout(signed(8), TAPS), lanes)


def _beats(array: np.ndarray, beat_bytes: int) -> list[int]:
    raw = np.ascontiguousarray(array, dtype=np.int8).tobytes()
    return [int.from_bytes(raw[i:i + beat_bytes], "little")
            for i in range(0, len(raw), beat_bytes)]


def _groups(channels: int, lanes: int) -> int:
    return -(-channels // lanes)


def pack_activations(x: np.ndarray, lanes: int) -> list[int]:
    """``ifmap`` beats of an int8 ``[C, H, W]`` tensor."""
    c, h, w = x.shape
    g = _groups(c, lanes)
    padded = np.zeros((g * lanes, h, w), np.int8)
    padded[:c] = x
    return _beats(padded.reshape(g, lanes, h, w).transpose(0, 2, 3, 1), lanes)


def unpack_activations(beats: Sequence[int], channels: int, height: int, width: int,
                       lanes: int) -> np.ndarray:
    """The int8 ``[channels, height, width]`` tensor carried by ``ofmap`` beats."""
    g = _groups(channels, lanes)
    if len(beats) != g * height * width:
        raise ValueError(f"{channels}x{height}x{width} on {lanes} lanes takes "
                         f"{g * height * width} beats, got {len(beats)}")
    raw = b"".join(int(b).to_bytes(lanes, "little") for b in beats)
    planes = np.frombuffer(raw, np.int8).reshape(g, height, width, lanes).transpose(0, 3, 1, 2)
    return planes.reshape(g * lanes, height, width)[:channels].copy()


def pack_weights(w: np.ndarray, lanes: int) -> list[int]:
    """``weights`` beats of int8 ``[C_out, C_in, 3, 3]`` kernels."""
    c_out, c_in = w.shape[:2]
    g = _groups(c_in, lanes)
    padded = np.zeros((c_out, g * lanes, 3, 3), np.int8)
    padded[:, :c_in] = w
    return _beats(padded, lanes * TAPS)


def pack_requant(bias: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> list[int]:
    """``requant`` beats, one per output channel."""
    fields = [REQUANT_LAYOUT[name] for name in ("bias", "mult", "shift")]
    beats = []
    for values in zip(bias, mult, shift, strict=True):
        beat = 0
        for field, value in zip(fields, values, strict=True):
            beat |= (int(value) & ((1 << field.width) - 1)) << field.offset
        beats.append(beat)
    return beats


def pack_mask(mask: np.ndarray, mean: np.ndarray) -> list[int]:
    """``mask`` beats of a bool ``[C, Ho, Wo]`` skip mask and its int8 means."""
    c, h, w = mask.shape
    bh, bw = -(-h // 3), -(-w // 3)
    blocks_mask = np.ones((c, 3 * bh, 3 * bw), bool)
    blocks_mean = np.zeros((c, 3 * bh, 3 * bw), np.int8)
    blocks_mask[:, :h, :w] = mask
    blocks_mean[:, :h, :w] = mean
    order = (0, 1, 3, 2, 4)   # [c, br, i, bc, j] -> [c, br, bc, i, j]
    blocks_mask = blocks_mask.reshape(c, bh, 3, bw, 3).transpose(order).reshape(-1, TAPS)
    blocks_mean = blocks_mean.reshape(c, bh, 3, bw, 3).transpose(order)
    skip_bits = (blocks_mask.astype(np.int64) << np.arange(TAPS)).sum(axis=1)
    skip, mean_field, void = MASK_LAYOUT["skip"], MASK_LAYOUT["mean"], MASK_LAYOUT["void"]
    full = (1 << TAPS) - 1
    return [(int(s) << skip.offset) | (m << mean_field.offset) | (int(s == full) << void.offset)
            for s, m in zip(skip_bits, _beats(blocks_mean, TAPS), strict=True)]
