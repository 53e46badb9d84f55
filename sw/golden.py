"""The integer semantics of the accelerator, in NumPy (the golden model).

This module is the specification the hardware and the runtime are checked against.
It imports neither torch nor amaranth nor anything of the hardware generator.

Conventions (DESIGN.md section 3):

- activations are int8 with zero point 0; after ReLU they lie in [0, 127];
- weights are int8 (per output channel scales live in the requantization factors),
  biases int32, accumulators int32 (computed here in int64 and checked to fit);
- requantization: ``y = clamp((acc * mult + round) >> shift, lo, 127)`` with
  ``round = 1 << (shift - 1)`` (0 when ``shift == 0``), an arithmetic shift,
  ``mult`` unsigned 16-bit and ``shift`` in ``[0, 31]``; ``lo`` is 0 after ReLU and -128
  otherwise;
- VELCRO: where ``mask[c, i, j]`` is set the output is ``mean_q[c, i, j]`` and the
  accumulation is not performed;
- dense layers via codebooks: ``W[o, j*s:(j+1)*s] = codebook[j][idx[o, j]]``; the engine
  builds ``LUT_j[c] = <x_j, codebook[j][c]>`` and adds ``LUT_j[idx[o, j]]``.
"""

from __future__ import annotations

import numpy as np

ACC_BITS = 32
MULT_BITS = 16
SHIFT_MAX = 31
INT8_MIN, INT8_MAX = -128, 127
ACC_MIN, ACC_MAX = -(1 << (ACC_BITS - 1)), (1 << (ACC_BITS - 1)) - 1


class GoldenError(ValueError):
    """An operand outside the integer contract (wrong dtype, shape or range)."""


def _check_int(name: str, array: np.ndarray, lo: int, hi: int) -> np.ndarray:
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.integer):
        raise GoldenError(f"{name} must be an integer array, not {array.dtype}")
    if array.size and (array.min() < lo or array.max() > hi):
        raise GoldenError(f"{name} out of range [{lo}, {hi}]: "
                          f"[{int(array.min())}, {int(array.max())}]")
    return array.astype(np.int64)


def _check_acc(acc: np.ndarray) -> np.ndarray:
    if acc.size and (acc.min() < ACC_MIN or acc.max() > ACC_MAX):
        raise GoldenError(f"accumulator overflows int{ACC_BITS}: "
                          f"[{int(acc.min())}, {int(acc.max())}]")
    return acc


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, relu: bool = True,
               channel_axis: int = 0) -> np.ndarray:
    """``clamp((acc * mult + (1 << (shift-1))) >> shift, lo, 127)`` per output channel.

    ``mult`` and ``shift`` have one entry per channel along ``channel_axis`` of ``acc``.
    """
    acc = _check_int("accumulator", acc, ACC_MIN, ACC_MAX)
    mult = _check_int("mult", mult, 0, (1 << MULT_BITS) - 1)
    shift = _check_int("shift", shift, 0, SHIFT_MAX)
    if mult.shape != (acc.shape[channel_axis],) or shift.shape != mult.shape:
        raise GoldenError(f"mult/shift need one entry per channel ({acc.shape[channel_axis]}), "
                          f"got {mult.shape} and {shift.shape}")
    view = [1] * acc.ndim
    view[channel_axis] = -1
    mult, shift = mult.reshape(view), shift.reshape(view)
    rounding = np.where(shift > 0, np.left_shift(1, np.maximum(shift - 1, 0)), 0)
    y = np.right_shift(acc * mult + rounding, shift)
    return np.clip(y, 0 if relu else INT8_MIN, INT8_MAX).astype(np.int8)


def conv3x3_acc(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: int = 1) -> np.ndarray:
    """Int32 accumulators of a 3x3 convolution with zero padding 1.

    Parameters
    ----------
    x : int8 ``[C_in, H, W]`` (or ``[N, C_in, H, W]``)
    w : int8 ``[C_out, C_in, 3, 3]``
    bias : int32 ``[C_out]``
    stride : 1 or 2

    Returns
    -------
    int64 array ``[(N,) C_out, H_out, W_out]`` with ``H_out = (H - 1) // stride + 1``,
    every value within int32.
    """
    if stride not in (1, 2):
        raise GoldenError(f"stride must be 1 or 2, not {stride}")
    batched = np.ndim(x) == 4
    x = _check_int("activations", x if batched else np.asarray(x)[None], INT8_MIN, INT8_MAX)
    w = _check_int("weights", w, INT8_MIN, INT8_MAX)
    bias = _check_int("bias", bias, ACC_MIN, ACC_MAX)
    if x.ndim != 4 or w.ndim != 4 or w.shape[2:] != (3, 3) or w.shape[1] != x.shape[1]:
        raise GoldenError(f"conv3x3 needs x [C_in, H, W] and w [C_out, C_in, 3, 3], got "
                          f"{list(x.shape[1:])} and {list(w.shape)}")
    if bias.shape != (w.shape[0],):
        raise GoldenError(f"bias needs {w.shape[0]} entries, got {bias.shape}")
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]          # [N, C_in, H_out, W_out, 3, 3]
    acc = np.einsum("nchwyx,ocyx->nohw", windows, w, optimize=True) + bias[:, None, None]
    acc = _check_acc(acc)
    return acc if batched else acc[0]


def conv3x3(x: np.ndarray, w: np.ndarray, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray,
            stride: int = 1, mask: np.ndarray | None = None, mean: np.ndarray | None = None,
            relu: bool = True) -> np.ndarray:
    """Conv3x3 + requantization (+ ReLU) with VELCRO skipping; int8 ``[(N,) C_out, H, W]``.

    Where ``mask`` is set the result is ``mean`` (int8) and nothing was accumulated.
    """
    acc = conv3x3_acc(x, w, bias, stride)
    y = requantize(acc, mult, shift, relu, channel_axis=acc.ndim - 3)
    if mask is not None:
        y = apply_skip(y, mask, mean)
    return y


def apply_skip(y: np.ndarray, mask: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Replace masked elements of int8 ``y`` (``[..., C, H, W]``) by their int8 means."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != y.shape[-3:]:
        raise GoldenError(f"mask must be bool {list(y.shape[-3:])}, got {mask.dtype} "
                          f"{list(mask.shape)}")
    mean = _check_int("mean", mean, INT8_MIN, INT8_MAX)
    if mean.shape != mask.shape:
        raise GoldenError(f"mean must have shape {list(mask.shape)}, got {list(mean.shape)}")
    return np.where(mask, mean.astype(np.int8), y)


def maxpool2x2(x: np.ndarray) -> np.ndarray:
    """2x2 max-pooling, stride 2, floor (odd trailing rows/columns dropped)."""
    x = np.asarray(x)
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    x = x[..., : 2 * h, : 2 * w]
    return x.reshape(*x.shape[:-2], h, 2, w, 2).max(axis=(-3, -1))


def dense_acc(x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Int32 accumulators of an int8 dense layer: ``x [(N,) n_in]``, ``w [n_out, n_in]``."""
    x = _check_int("activations", x, INT8_MIN, INT8_MAX)
    w = _check_int("weights", w, INT8_MIN, INT8_MAX)
    bias = _check_int("bias", bias, ACC_MIN, ACC_MAX)
    if w.ndim != 2 or x.shape[-1] != w.shape[1] or bias.shape != (w.shape[0],):
        raise GoldenError(f"dense needs x [.., {w.shape[1] if w.ndim == 2 else '?'}], "
                          f"w [n_out, n_in], bias [n_out]; got {list(x.shape)}, "
                          f"{list(w.shape)}, {list(bias.shape)}")
    return _check_acc(x @ w.T + bias)


def codebook_luts(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Per-segment tables ``LUT[.., j, c] = <x_j, codebooks[j, c]>`` (``k * s`` MACs each).

    ``x [(N,) n_in]`` int8; ``codebooks [n_seg, k, s]`` int8 with ``n_seg * s == n_in``,
    or ``[1, k, s]``: one codebook shared by every segment (scalar k-means is ``s = 1``).
    """
    x = _check_int("activations", x, INT8_MIN, INT8_MAX)
    codebooks = _check_int("codebooks", codebooks, INT8_MIN, INT8_MAX)
    n_in = x.shape[-1]
    if codebooks.ndim != 3 or codebooks.shape[2] == 0 or n_in % codebooks.shape[2]:
        raise GoldenError(f"codebooks [n_seg, k, s] need s dividing {n_in} inputs, "
                          f"got {list(codebooks.shape)}")
    n_seg = n_in // codebooks.shape[2]
    if codebooks.shape[0] not in (1, n_seg):
        raise GoldenError(f"{n_in} inputs in segments of {codebooks.shape[2]} need {n_seg} "
                          f"codebooks (or 1 shared), got {codebooks.shape[0]}")
    codebooks = np.broadcast_to(codebooks, (n_seg,) + codebooks.shape[1:])
    segments = x.reshape(*x.shape[:-1], n_seg, codebooks.shape[2])
    return np.einsum("...js,jks->...jk", segments, codebooks)


def dense_codebook_acc(x: np.ndarray, codebooks: np.ndarray, indices: np.ndarray,
                       bias: np.ndarray) -> np.ndarray:
    """Int32 accumulators of a codebook dense layer: ``bias[o] + sum_j LUT_j[idx[o, j]]``.

    ``indices [n_out, n_seg]`` index the ``k`` codewords of each segment.
    """
    luts = codebook_luts(x, codebooks)
    n_seg, k = luts.shape[-2:]
    indices = _check_int("indices", indices, 0, k - 1)
    bias = _check_int("bias", bias, ACC_MIN, ACC_MAX)
    if indices.ndim != 2 or indices.shape[1] != n_seg or bias.shape != (indices.shape[0],):
        raise GoldenError(f"indices must be [n_out, {n_seg}] and bias [n_out], got "
                          f"{list(indices.shape)} and {list(bias.shape)}")
    picked = np.take_along_axis(luts[..., None, :, :],
                                indices[..., None].reshape((1,) * (luts.ndim - 2)
                                                           + indices.shape + (1,)),
                                axis=-1)[..., 0]           # [(N,) n_out, n_seg]
    return _check_acc(picked.sum(-1) + bias)
