"""The integer semantics of the accelerator, in NumPy (the golden model).

This module is the specification the hardware and the runtime are checked against.
It imports neither torch nor amaranth nor anything of the hardware generator.

Every number a package holds and every step the accelerator takes with them is an
integer; the conv array, the dense engine, the kernel's model and the host stages
of the runtime all compute exactly this:

- the network input is int8 ``pixel >> 1`` of uint8 pixels (:func:`quantize_input`);
- activations are int8 with zero point 0; after ReLU they lie in [0, 127];
- weights are int8 (per output channel scales live in the requantization factors),
  biases int32, accumulators int32 (computed here in int64 and checked to fit: by
  each op function on its values, and by :class:`GoldenModel` once per package from
  the bound ``128 * sum|w| + |bias|``);
- requantization: ``y = clamp((acc * mult + round) >> shift, lo, 127)`` with
  ``round = 1 << (shift - 1)`` (0 when ``shift == 0``), an arithmetic shift,
  ``mult`` unsigned 16-bit and ``shift`` in ``[0, 31]``; ``lo`` is 0 after ReLU and -128
  otherwise. ``mult / 2**shift`` stands for a real scale; :func:`requant_params` fits
  the factors to one;
- activation bounds: an op's output is clamped to ``[lo, hi]``: ``lo`` 0 and ``hi`` 127
  after ReLU, ``hi = min(127, round(6 / scale))`` after ReLU6, ``[-128, 127]`` with no
  activation;
- VELCRO: where ``mask[c, i, j]`` is set the output is ``mean_q[c, i, j]`` and the
  accumulation is not performed; masks apply to every activation that follows a
  convolution (after a residual add too);
- convolutions of any kernel size, stride, zero padding and groups (:func:`conv`);
  residual adds and channel concatenation bring each operand to the output scale with
  the requantization rule (:func:`add`, :func:`concat`); max-pooling pads with
  ``-inf``; average pooling rounds the integer mean half up (:func:`avgpool`);
- dense layers via codebooks: ``W[o, j*s:(j+1)*s] = codebook[j][idx[o, j]]``; the engine
  builds ``LUT_j[c] = <x_j, codebook[j][c]>`` and adds ``LUT_j[idx[o, j]]``.

Exact integer products through floating point
---------------------------------------------
Convolutions and dense layers are computed as matrix products in floating point,
because BLAS is an order of magnitude faster than integer ``einsum``. The results are
exact: every product ``x * w`` of integers is an integer, and every partial sum that
any summation order or blocking can form is a sum of some of those products, so its
magnitude is at most ``max|x| * sum_k |w[o, k]|``. When that bound is at most
``2**24`` every such integer is representable in float32 (24-bit significand), so no
addition or fused multiply-add ever rounds; otherwise float64 is used, exact up to
``2**53``. :class:`_Matrix` computes the bound from the weights (``max|x| = 128`` for
int8 inputs) and picks the type; biases are added afterwards in int64.

Why one module: it is the specification. Every integer rule above and the op
functions that apply them are read together when the RTL, the kernel's model or the
host stages disagree with it; split, the rules would be stated once per file.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from .export.bits import unpack_mask
from .export.ops import clamp_of, pool_size
from .export.package import Layer, Package, check, codebook_weight
from .export.schema import INPUT, layer_inputs

ACC_BITS = 32
MULT_BITS = 16
MULT_MAX = (1 << MULT_BITS) - 1
SHIFT_MAX = 31
INT8_MIN, INT8_MAX = -128, 127
ACC_MIN, ACC_MAX = -(1 << (ACC_BITS - 1)), (1 << (ACC_BITS - 1)) - 1
INPUT_SHIFT = 1
_EXACT = {np.dtype(np.float32): 1 << 24, np.dtype(np.float64): 1 << 53}


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


def quantize_input(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to the int8 network input ``pixel >> 1`` (in [0, 127]).

    A pixel ``p`` stands for ``p / 255``; the int8 value ``p >> 1`` stands for
    ``(p >> 1) * 2 / 255``, the package's input scale. Dropping the lowest bit keeps
    the zero point at 0 and the input non-negative like every post-ReLU activation.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise GoldenError(f"images must be uint8, not {images.dtype}")
    return (images >> INPUT_SHIFT).astype(np.int8)


@dataclass(frozen=True)
class _Matrix:
    """An int8 weight matrix ``[K, n_out]`` held in the float type in which ``x @ W`` is
    exact for every int8 ``x`` (see the module docstring)."""

    values: np.ndarray

    @classmethod
    def of(cls, w: np.ndarray) -> _Matrix:
        """From int weights ``[n_out, K]`` (rows are output channels)."""
        w = np.asarray(w, dtype=np.int64)
        bound = 128 * int(np.abs(w).sum(axis=1).max(initial=0))
        for dtype, limit in _EXACT.items():
            if bound <= limit:
                return cls(np.ascontiguousarray(w.T, dtype=dtype))
        raise GoldenError(f"partial sums may reach {bound}, beyond exact float64 arithmetic")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``x @ W`` as int64 for ``x [M, K]`` with values in the int8 range."""
        return (x.astype(self.values.dtype, copy=False) @ self.values).astype(np.int64)


def _requant(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, lo: int,
             bias: np.ndarray | int = 0) -> np.ndarray:
    """Requantize int64 ``acc + bias`` in place; broadcastable ``mult``, ``shift``, ``bias``.

    ``(acc + bias) * mult + round`` is formed as ``acc * mult + (bias * mult + round)``,
    the same integer with one pass less over the accumulators.
    """
    acc *= mult
    acc += bias * mult + (np.left_shift(1, shift) >> 1)   # round: 1 << (shift - 1), or 0
    acc >>= shift
    np.clip(acc, lo, INT8_MAX, out=acc)
    return acc.astype(np.int8)


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, relu: bool = True,
               channel_axis: int = 0) -> np.ndarray:
    """``clamp((acc * mult + (1 << (shift-1))) >> shift, lo, 127)`` per output channel.

    ``mult`` and ``shift`` have one entry per channel along ``channel_axis`` of ``acc``;
    the shift is arithmetic (it rounds half up, also for negative accumulators).
    """
    acc = _check_int("accumulator", acc, ACC_MIN, ACC_MAX)
    mult = _check_int("mult", mult, 0, MULT_MAX)
    shift = _check_int("shift", shift, 0, SHIFT_MAX)
    if mult.shape != (acc.shape[channel_axis],) or shift.shape != mult.shape:
        raise GoldenError(f"mult/shift need one entry per channel ({acc.shape[channel_axis]}), "
                          f"got {mult.shape} and {shift.shape}")
    view = [1] * acc.ndim
    view[channel_axis] = -1
    return _requant(acc, mult.reshape(view), shift.reshape(view), 0 if relu else INT8_MIN)


def requant_params(scale) -> tuple[np.ndarray, np.ndarray]:
    """``mult`` (uint16) and ``shift`` (uint8) with ``mult / 2**shift`` nearest ``scale``.

    The inverse of the requantization rule: with these factors :func:`requantize`
    multiplies by ``scale`` (then rounds and clamps). The shift is the largest in
    ``[0, 31]`` that keeps ``mult <= 65535``, which gives a relative error of at most
    ``2**-16`` whenever ``scale >= 2**-15``; below ``2**-32`` the multiplier is 0.

    Raises
    ------
    GoldenError
        A scale that is not positive and finite, or above 65535 (no shift fits it).
    """
    scale = np.atleast_1d(np.asarray(scale, dtype=np.float64))
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise GoldenError(f"requantization scales must be positive and finite, got "
                          f"{scale[~(np.isfinite(scale) & (scale > 0))][:3]}")
    if np.any(scale > MULT_MAX):
        raise GoldenError(f"requantization scale {scale.max():g} exceeds {MULT_MAX} "
                          "(the output scale is too small for the input scales)")
    shift = np.clip(np.floor(np.log2(MULT_MAX / scale)), 0, SHIFT_MAX).astype(np.int64)
    mult = np.round(scale * np.exp2(shift))
    # log2 may round up at an exact power of two; one step back is then enough.
    over = mult > MULT_MAX
    shift[over] -= 1
    mult[over] = np.round(scale[over] * np.exp2(shift[over]))
    return mult.astype(np.uint16), shift.astype(np.uint8)


def _conv_matrix(w: np.ndarray) -> _Matrix:
    """Conv weights ``[C_out, C_in, 3, 3]`` as the ``(dy, dx, c)``-ordered matrix."""
    return _Matrix.of(np.asarray(w).transpose(0, 2, 3, 1).reshape(len(w), -1))


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
    if np.ndim(w) != 4 or np.shape(w)[2:] != (3, 3):
        raise GoldenError(f"conv3x3 needs w [C_out, C_in, 3, 3], got {list(np.shape(w))}")
    return conv_acc(x, w, bias, stride, 1)


def conv3x3(x: np.ndarray, w: np.ndarray, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray,
            stride: int = 1, mask: np.ndarray | None = None, mean: np.ndarray | None = None,
            relu: bool = True) -> np.ndarray:
    """Conv3x3 + requantization (+ ReLU) with VELCRO skipping; int8 ``[(N,) C_out, H, W]``.

    Where ``mask`` is set the result is ``mean`` (int8): the hardware accumulates
    nothing there; here the accumulators are computed and discarded, which gives the
    same result.
    """
    acc = conv3x3_acc(x, w, bias, stride)
    y = requantize(acc, mult, shift, relu, channel_axis=acc.ndim - 3)
    if mask is not None:
        y = apply_skip(y, mask, mean)
    return y


def _pairs(value, what: str) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, tuple | list) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int | np.integer) and v >= 0 for v in pair):
        raise GoldenError(f"{what} must be a non-negative integer or a pair, not {value!r}")
    return int(pair[0]), int(pair[1])


def _windows(x: np.ndarray, kernel, stride, padding, fill, dtype) -> np.ndarray:
    """Windows ``[N, H_out, W_out, C, kh, kw]`` of NHWC ``x`` padded with ``fill``."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, h, w, c = x.shape
    padded = np.full((n, h + 2 * ph, w + 2 * pw, c), fill, dtype=dtype)
    padded[:, ph:ph + h, pw:pw + w] = x
    if padded.shape[1] < kh or padded.shape[2] < kw:
        raise GoldenError(f"a {kh}x{kw} window does not fit a {h}x{w} map padded by "
                          f"{ph}, {pw}")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))
    return windows[:, ::sh, ::sw]


@dataclass(frozen=True)
class _GroupedMatrix:
    """Grouped conv weights ``[C_out, C_in / g, kh, kw]`` as ``g`` exact matrices
    ``[(dy, dx, c), C_out / g]`` (see :class:`_Matrix`)."""

    groups: int
    matrices: tuple[_Matrix, ...]

    @classmethod
    def of(cls, w: np.ndarray, groups: int) -> _GroupedMatrix:
        w = np.asarray(w)
        per = len(w) // groups
        return cls(groups, tuple(_conv_matrix(w[g * per:(g + 1) * per]) for g in range(groups)))

    def apply(self, windows: np.ndarray) -> np.ndarray:
        """Accumulators ``[N, H, W, C_out]`` of windows ``[N, H, W, C_in, kh, kw]``."""
        n, h, w, c, kh, kw = windows.shape
        per = c // self.groups
        outs = []
        for g, matrix in enumerate(self.matrices):
            part = windows[:, :, :, g * per:(g + 1) * per]
            cols = part.transpose(0, 1, 2, 4, 5, 3).reshape(n * h * w, kh * kw * per)
            outs.append(matrix.apply(cols).reshape(n, h, w, -1))
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=-1)


def conv_acc(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride=1, padding=0,
             groups: int = 1) -> np.ndarray:
    """Int32 accumulators of a 2-D convolution with zero padding.

    ``acc[o, i, j] = bias[o] + sum_{c, dy, dx} w[o, c, dy, dx] * x[g*C_g + c, i*s + dy - p,
    j*s + dx - p]`` over the ``C_g = C_in / groups`` channels of output ``o``'s group
    ``g``, with ``x`` zero outside the map (PyTorch's ``conv2d`` with integers).

    Parameters
    ----------
    x : int8 ``[(N,) C_in, H, W]``
    w : int8 ``[C_out, C_in / groups, kh, kw]``
    bias : int32 ``[C_out]``
    stride, padding : int or pair
    groups : divides ``C_in`` and ``C_out`` (``groups = C_in``: depthwise)

    Returns
    -------
    int64 ``[(N,) C_out, H_out, W_out]``, ``H_out = (H + 2 p - kh) // s + 1``.
    """
    batched = np.ndim(x) == 4
    x = _check_int("activations", x if batched else np.asarray(x)[None], INT8_MIN, INT8_MAX)
    w = _check_int("weights", w, INT8_MIN, INT8_MAX)
    bias = _check_int("bias", bias, ACC_MIN, ACC_MAX)
    stride, padding = _pairs(stride, "stride"), _pairs(padding, "padding")
    if min(stride) < 1:
        raise GoldenError(f"stride must be positive, not {stride}")
    if (x.ndim != 4 or w.ndim != 4 or groups < 1 or x.shape[1] % groups
            or len(w) % groups or w.shape[1] * groups != x.shape[1]):
        raise GoldenError(f"conv needs x [C_in, H, W] and w [C_out, C_in / groups, kh, kw] "
                          f"with groups dividing both; got {list(x.shape[1:])}, "
                          f"{list(w.shape)}, groups {groups}")
    if bias.shape != (w.shape[0],):
        raise GoldenError(f"bias needs {w.shape[0]} entries, got {bias.shape}")
    matrix = _GroupedMatrix.of(w, groups)
    windows = _windows(x.transpose(0, 2, 3, 1), w.shape[2:], stride, padding, 0,
                       matrix.matrices[0].values.dtype)
    acc = _check_acc(matrix.apply(windows).transpose(0, 3, 1, 2) + bias[:, None, None])
    return acc if batched else acc[0]


def clamp_bounds(activation: str, scale: float = 1.0) -> tuple[int, int]:
    """``(lo, hi)`` of an int8 output at ``scale`` after ``activation``.

    ``"none"``: ``[-128, 127]``; ``"relu"``: ``[0, 127]``; ``"relu6"``: ``[0, min(127,
    round(6 / scale))]``, the integer nearest 6.0 (half to even, NumPy's rounding).
    """
    if activation == "none":
        return INT8_MIN, INT8_MAX
    if activation == "relu":
        return 0, INT8_MAX
    if activation == "relu6":
        return 0, int(min(INT8_MAX, np.round(6.0 / scale)))
    raise GoldenError(f"unknown activation {activation!r} (none, relu or relu6)")


def _requant_clamped(acc, mult, shift, lo, hi, channel_axis):
    acc = _check_int("accumulator", acc, ACC_MIN, ACC_MAX)
    mult = _check_int("mult", mult, 0, MULT_MAX)
    shift = _check_int("shift", shift, 0, SHIFT_MAX)
    if not INT8_MIN <= lo <= hi <= INT8_MAX:
        raise GoldenError(f"clamp bounds [{lo}, {hi}] outside [-128, 127]")
    if mult.shape != (acc.shape[channel_axis],) or shift.shape != mult.shape:
        raise GoldenError(f"mult/shift need one entry per channel ({acc.shape[channel_axis]}), "
                          f"got {mult.shape} and {shift.shape}")
    view = [1] * acc.ndim
    view[channel_axis] = -1
    y = _requant(acc, mult.reshape(view), shift.reshape(view), lo)
    return np.minimum(y, np.int8(hi))


def conv(x: np.ndarray, w: np.ndarray, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray,
         stride=1, padding=0, groups: int = 1, lo: int = 0, hi: int = INT8_MAX,
         mask: np.ndarray | None = None, mean: np.ndarray | None = None) -> np.ndarray:
    """A convolution (:func:`conv_acc`), requantized and clamped to ``[lo, hi]`` (the
    activation, :func:`clamp_bounds`), with VELCRO skipping; int8 ``[(N,) C_out, H, W]``.

    ``y = min(hi, clamp((acc * mult + round) >> shift, lo, 127))``: the requantization
    rule, then the upper bound of ReLU6.
    """
    acc = conv_acc(x, w, bias, stride, padding, groups)
    y = _requant_clamped(acc, mult, shift, lo, hi, acc.ndim - 3)
    return apply_skip(y, mask, mean) if mask is not None else y


def add(a: np.ndarray, b: np.ndarray, mult: np.ndarray, shift: int, lo: int = INT8_MIN,
        hi: int = INT8_MAX, mask: np.ndarray | None = None,
        mean: np.ndarray | None = None) -> np.ndarray:
    """Residual add of two int8 maps at their own scales, into int8 at the output scale.

    ``y = min(hi, clamp((a * mult[0] + b * mult[1] + round) >> shift, lo, 127))``: the
    requantization rule with the operands' factors ``mult[k] / 2**shift = s_k / s_out``
    sharing one shift (so the sum is formed before the single rounding). Masked
    elements (VELCRO, when the add is followed by a tapped activation) are ``mean``.
    """
    a = _check_int("a", a, INT8_MIN, INT8_MAX)
    b = _check_int("b", b, INT8_MIN, INT8_MAX)
    mult = _check_int("mult", mult, 0, MULT_MAX)
    shift = int(_check_int("shift", np.asarray(shift), 0, SHIFT_MAX))
    if a.shape != b.shape or mult.shape != (2,):
        raise GoldenError(f"add needs operands of one shape and two multipliers, got "
                          f"{list(a.shape)}, {list(b.shape)} and {list(mult.shape)}")
    if not INT8_MIN <= lo <= hi <= INT8_MAX:
        raise GoldenError(f"clamp bounds [{lo}, {hi}] outside [-128, 127]")
    acc = a * int(mult[0]) + b * int(mult[1]) + ((1 << shift) >> 1)
    y = np.minimum(np.clip(acc >> shift, lo, INT8_MAX), hi).astype(np.int8)
    return apply_skip(y, mask, mean) if mask is not None else y


def concat(xs: list[np.ndarray], mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Channel concatenation of int8 maps ``[(N,) C_k, H, W]``, each requantized to the
    output scale: ``clamp((x_k * mult[k] + round_k) >> shift[k], -128, 127)``."""
    if not xs:
        raise GoldenError("concat needs at least one operand")
    mult = _check_int("mult", mult, 0, MULT_MAX)
    shift = _check_int("shift", shift, 0, SHIFT_MAX)
    if mult.shape != (len(xs),) or shift.shape != mult.shape:
        raise GoldenError(f"concat of {len(xs)} operands needs as many mult/shift entries")
    parts = []
    for k, x in enumerate(xs):
        x = _check_int(f"operand {k}", x, INT8_MIN, INT8_MAX)
        parts.append(_requant(x, mult[k], shift[k], INT8_MIN))
    try:
        return np.concatenate(parts, axis=-3)
    except ValueError as e:
        raise GoldenError(f"concat operands disagree in shape: {e}") from None


def _pool_windows(x, kernel, stride, padding, ceil_mode, fill, dtype):
    """NHWC windows of a pooling op, the right/bottom edges extended for ceil mode."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho = pool_size(h, kh, sh, ph, ceil_mode)
    wo = pool_size(w, kw, sw, pw, ceil_mode)
    if 2 * ph > kh or 2 * pw > kw:
        raise GoldenError(f"padding {padding} exceeds half the window {kernel}")
    extra_h = max(0, (ho - 1) * sh + kh - (h + 2 * ph))
    extra_w = max(0, (wo - 1) * sw + kw - (w + 2 * pw))
    padded = np.full((n, h + 2 * ph + extra_h, w + 2 * pw + extra_w, c), fill, dtype=dtype)
    padded[:, ph:ph + h, pw:pw + w] = x
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))
    return windows[:, ::sh, ::sw][:, :ho, :wo]


def maxpool(x: np.ndarray, kernel, stride=None, padding=0, ceil_mode: bool = False):
    """Max-pooling of int8 ``[(N,) C, H, W]``; padding and ceil-mode overhang are
    ``-inf`` (every window holds at least one element of the map)."""
    kernel = _pairs(kernel, "kernel")
    stride = _pairs(kernel if stride is None else stride, "stride")
    padding = _pairs(padding, "padding")
    batched = np.ndim(x) == 4
    x = np.asarray(x if batched else np.asarray(x)[None])
    windows = _pool_windows(x.transpose(0, 2, 3, 1), kernel, stride, padding, ceil_mode,
                            INT8_MIN, x.dtype)
    y = windows.max(axis=(-2, -1)).transpose(0, 3, 1, 2)
    return y if batched else y[0]


def avgpool_divisors(h: int, w: int, kernel, stride, padding, ceil_mode: bool,
                     count_include_pad: bool) -> np.ndarray:
    """The divisor of every window ``[H_out, W_out]`` (PyTorch's ``avg_pool2d``).

    With ``count_include_pad`` the window counts the padding but not the ceil-mode
    overhang beyond it; otherwise only elements of the map.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = pool_size(h, kh, sh, ph, ceil_mode), pool_size(w, kw, sw, pw, ceil_mode)

    def counts(size, k, s, p, n):
        start = np.arange(n) * s - p
        end = np.minimum(start + k, size + p)
        if count_include_pad:
            return end - start
        return np.minimum(end, size) - np.maximum(start, 0)

    return np.outer(counts(h, kh, sh, ph, ho), counts(w, kw, sw, pw, wo))


def avgpool(x: np.ndarray, kernel, stride=None, padding=0, ceil_mode: bool = False,
            count_include_pad: bool = True) -> np.ndarray:
    """Average pooling of int8 ``[(N,) C, H, W]`` at an unchanged scale.

    ``y = floor((2 * sum + d) / (2 d))``: the window's integer sum (zero padding) over
    its divisor ``d`` (:func:`avgpool_divisors`), rounded half up. Adaptive average
    pooling to an output that divides the map is this with ``kernel = stride = H / H_out``.
    """
    kernel = _pairs(kernel, "kernel")
    stride = _pairs(kernel if stride is None else stride, "stride")
    padding = _pairs(padding, "padding")
    batched = np.ndim(x) == 4
    x = _check_int("activations", x if batched else np.asarray(x)[None], INT8_MIN, INT8_MAX)
    windows = _pool_windows(x.transpose(0, 2, 3, 1), kernel, stride, padding, ceil_mode,
                            0, np.int64)
    total = windows.sum(axis=(-2, -1)).transpose(0, 3, 1, 2)
    d = avgpool_divisors(x.shape[2], x.shape[3], kernel, stride, padding, ceil_mode,
                         count_include_pad)
    y = ((2 * total + d) // (2 * d)).astype(np.int8)
    return y if batched else y[0]


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
    flat = x.reshape(-1, x.shape[-1])
    return _check_acc(_Matrix.of(w).apply(flat).reshape(*x.shape[:-1], -1) + bias)


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


@dataclass(frozen=True)
class LayerMacs:
    """Multiply-accumulates of one layer: performed, and skipped by VELCRO.

    A convolution's output element costs ``kh * kw * C_in / groups`` MACs (padding
    included, as the hardware's 3x3 windows do); a dense layer ``n_in * n_out``; a
    codebook dense layer ``n_seg * k * s`` MACs for its lookup tables plus ``n_out *
    n_seg`` table ``lookups`` (an add each); adds, concatenation, pooling and flatten
    none.
    """

    name: str
    op: str
    macs: int
    skipped: int
    lookups: int = 0

    def times(self, n: int) -> LayerMacs:
        """The MACs of ``n`` images."""
        return LayerMacs(self.name, self.op, n * self.macs, n * self.skipped,
                         n * self.lookups)


class _Conv:
    def __init__(self, layer: Layer):
        a = layer.arrays
        general = layer.op == "conv"
        self.kernel = tuple(layer.attrs["kernel"]) if general else (3, 3)
        self.stride = (tuple(layer.attrs["stride"]) if general
                       else (layer.attrs["stride"],) * 2)
        self.padding = tuple(layer.attrs["padding"]) if general else (1, 1)
        groups = layer.attrs["groups"] if general else 1
        self.lo, self.hi = clamp_of(layer.op, layer.attrs)
        self.w = _GroupedMatrix.of(a["weight"], groups)
        self.bias = a["bias"].astype(np.int64)
        self.mult = a["mult"].astype(np.int64)
        self.shift = a["shift"].astype(np.int64)
        self.mask, self.means = _skip(layer)
        per_element = self.kernel[0] * self.kernel[1] * (layer.in_shape[0] // groups)
        skipped = int(self.mask.sum()) if self.mask is not None else 0
        self.cost = LayerMacs(layer.name, layer.op,
                              per_element * (math.prod(layer.out_shape) - skipped),
                              per_element * skipped)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # Every element is accumulated and the skipped ones are overwritten: the
        # result is the same as not accumulating them, and one dense product is
        # faster than gathering the unskipped windows.
        windows = _windows(x, self.kernel, self.stride, self.padding, 0,
                           self.w.matrices[0].values.dtype)
        y = _requant(self.w.apply(windows), self.mult, self.shift, self.lo, self.bias)
        if self.hi < INT8_MAX:
            np.minimum(y, np.int8(self.hi), out=y)
        if self.mask is not None and len(self.means):
            y[:, self.mask] = self.means
        return y


def _skip(layer: Layer) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A tapped layer's mask (NHWC) and its masked means; ``(None, None)`` otherwise."""
    if "mask" not in layer.arrays:
        return None, None
    mask = unpack_mask(layer.arrays["mask"], layer.out_shape).transpose(1, 2, 0)
    return mask, layer.arrays["mean"].transpose(1, 2, 0)[mask]


class _Add:
    def __init__(self, layer: Layer):
        self.mult = [int(m) for m in layer.arrays["mult"]]
        self.shift = int(layer.arrays["shift"][0])
        self.lo, self.hi = clamp_of(layer.op, layer.attrs)
        self.mask, self.means = _skip(layer)
        self.cost = LayerMacs(layer.name, layer.op, 0, 0)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        acc = a.astype(np.int64) * self.mult[0]
        acc += b.astype(np.int64) * self.mult[1]
        acc += (1 << self.shift) >> 1
        acc >>= self.shift
        y = np.clip(acc, self.lo, self.hi).astype(np.int8)
        if self.mask is not None and len(self.means):
            y[:, self.mask] = self.means
        return y


class _Concat:
    def __init__(self, layer: Layer):
        self.mult = layer.arrays["mult"].astype(np.int64)
        self.shift = layer.arrays["shift"].astype(np.int64)
        self.cost = LayerMacs(layer.name, layer.op, 0, 0)

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        return np.concatenate([_requant(x.astype(np.int64), m, s, INT8_MIN)
                               for x, m, s in zip(xs, self.mult, self.shift, strict=True)],
                              axis=-1)


class _Pool:
    def __init__(self, layer: Layer):
        self.average = layer.op == "avgpool"
        a = layer.attrs
        self.args = (tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]),
                     a["ceil_mode"])
        if self.average:
            self.divisors = avgpool_divisors(layer.in_shape[1], layer.in_shape[2], *self.args,
                                             a["count_include_pad"])[..., None]
        self.cost = LayerMacs(layer.name, layer.op, 0, 0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.average:
            total = _pool_windows(x, *self.args, 0, np.int64).sum(axis=(-2, -1))
            return ((2 * total + self.divisors) // (2 * self.divisors)).astype(np.int8)
        return _pool_windows(x, *self.args, INT8_MIN, x.dtype).max(axis=(-2, -1))


class _Dense:
    def __init__(self, layer: Layer):
        a = layer.arrays
        self.w = _Matrix.of(self._weight(layer))
        self.bias = a["bias"].astype(np.int64)
        self.logits = layer.attrs["output"] == "int32"
        if not self.logits:
            self.mult = a["mult"].astype(np.int64)
            self.shift = a["shift"].astype(np.int64)
            self.lo = 0 if layer.attrs["relu"] else INT8_MIN
        self.cost = LayerMacs(layer.name, layer.op, layer.in_shape[0] * layer.out_shape[0], 0)

    @staticmethod
    def _weight(layer: Layer) -> np.ndarray:
        return layer.arrays["weight"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        acc = self.w.apply(x)
        if self.logits:
            return (acc + self.bias).astype(np.int32)
        return _requant(acc, self.mult, self.shift, self.lo, self.bias)


class _CodebookDense(_Dense):
    """A codebook dense layer, computed with its decoded int8 weights.

    ``sum_j LUT_j[idx[o, j]]`` with ``LUT_j[c] = <x_j, codebooks[j][c]>`` is the integer
    ``<x, W[o]>`` for the decoded ``W``, so one exact matrix product gives the engine's
    result (:func:`dense_codebook_acc` computes it the engine's way); the counts are
    the engine's.
    """

    def __init__(self, layer: Layer):
        super().__init__(layer)
        k, s = layer.arrays["codebooks"].shape[1:]
        n_seg = layer.in_shape[0] // s
        self.cost = LayerMacs(layer.name, layer.op, n_seg * k * s, 0,
                              layer.out_shape[0] * n_seg)

    @staticmethod
    def _weight(layer: Layer) -> np.ndarray:
        return codebook_weight(layer)


class _MaxPool:
    def __init__(self, layer: Layer):
        self.cost = LayerMacs(layer.name, layer.op, 0, 0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        h, w = h // 2, w // 2
        # Two element-wise maxima are several times faster than a max over axes (2, 4).
        x = x[:, :2 * h, :2 * w].reshape(n, h, 2, w, 2, c)
        rows = np.maximum(x[:, :, 0], x[:, :, 1])
        return np.maximum(rows[:, :, :, 0], rows[:, :, :, 1])


class _Flatten:
    def __init__(self, layer: Layer):
        self.cost = LayerMacs(layer.name, layer.op, 0, 0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x.transpose(0, 3, 1, 2).reshape(len(x), -1)    # C order of [C, H, W]


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_STEPS = {"conv3x3": _Conv, "conv": _Conv, "add": _Add, "concat": _Concat,
          "maxpool": _Pool, "avgpool": _Pool, "dense": _Dense, "dense_codebook": _CodebookDense,
          "maxpool2x2": _MaxPool, "flatten": _Flatten}


class GoldenModel:
    """A package prepared for repeated runs; counts the MACs of the images it runs.

    Weights are converted once into exact float matrices and masks are unpacked.
    Layers run in the package's order, each on the outputs of the layers it names.
    Between layers activations stay in NHWC layout, so that each convolution is one
    matrix product over ``(dy, dx, c)`` windows (one per group); flatten restores the
    C order of ``[C, H, W]`` that the package (and torch) use.

    Batches run on ``workers`` threads with single-threaded BLAS: NumPy releases the
    GIL in the products, copies and element-wise steps, so this spreads all of them
    over the cores, whereas multi-threaded BLAS parallelizes only the products and
    its spinning threads collapse when other processes share the cores.

    Parameters
    ----------
    package
        A package from :func:`velcro.sw.export.package.load` or the quantizer; it is checked
        like a loaded one, so accumulators provably fit int32.
    batch_size
        Images per step (bounds the memory of the unrolled convolution windows).
    workers
        Threads; default: the number of CPUs this process may use.
    """

    def __init__(self, package: Package, batch_size: int = 32, workers: int | None = None):
        check(package)
        if batch_size < 1:
            raise GoldenError(f"batch_size must be a positive integer, not {batch_size!r}")
        workers = available_cpus() if workers is None else workers
        if workers < 1:
            raise GoldenError(f"workers must be a positive integer, not {workers!r}")
        self.package = package
        self.batch_size = batch_size
        self.workers = workers
        self._steps = [_STEPS[layer.op](layer) for layer in package.layers]
        self._inputs = layer_inputs(package.layers)
        # After its last reader a value is dropped, so memory follows the graph's width.
        last_use = {}
        for i, inputs in enumerate(self._inputs):
            for source in inputs:
                last_use[source] = i
        self._drop = [[s for s in inputs if last_use[s] == i]
                      for i, inputs in enumerate(self._inputs)]
        self.images = 0

    def per_image(self) -> list[LayerMacs]:
        """MACs of one image, per layer."""
        return [step.cost for step in self._steps]

    def counts(self) -> list[LayerMacs]:
        """MACs performed and skipped, per layer, over every image run so far."""
        return [step.cost.times(self.images) for step in self._steps]

    def _forward(self, images: np.ndarray) -> np.ndarray:
        values = {INPUT: quantize_input(images).transpose(0, 2, 3, 1)}
        x = values[INPUT]
        for layer, step, inputs, drop in zip(self.package.layers, self._steps, self._inputs,
                                             self._drop, strict=True):
            x = step(*(values[source] for source in inputs))
            for source in drop:
                del values[source]
            values[layer.name] = x
        return x

    def run(self, images: np.ndarray) -> np.ndarray:
        """int32 logits ``[N, n_out]`` of uint8 images ``[N, C, H, W]``."""
        images = np.asarray(images)
        expected = tuple(self.package.input_shape)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            raise GoldenError(f"images must be uint8 [N, {', '.join(map(str, expected))}], "
                              f"got {images.dtype} {list(images.shape)}")
        out = np.empty((len(images), self.package.layers[-1].out_shape[0]), dtype=np.int32)
        starts = range(0, len(images), self.batch_size)
        batches = (images[start:start + self.batch_size] for start in starts)
        with threadpool_limits(limits=1, user_api="blas"), \
                ThreadPoolExecutor(min(self.workers, max(len(starts), 1))) as pool:
            for start, logits in zip(starts, pool.map(self._forward, batches), strict=True):
                out[start:start + len(logits)] = logits
        self.images += len(images)
        return out


def run(package: Package, images: np.ndarray) -> np.ndarray:
    """int32 logits of the whole network of ``package`` on uint8 ``images [N, C, H, W]``."""
    return GoldenModel(package).run(images)
