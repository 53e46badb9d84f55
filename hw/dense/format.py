"""Host side of the dense engine's streams: NumPy arrays to beats and back.

Every stream carries little-endian beats (the byte at the lowest address in bits
0..7), which is what an AXI master reading a buffer from device memory delivers, so
each encoder is also the layout of that buffer:

- ``x``: the int8 activations, ``width // 8`` per beat;
- ``indices``: the bytes of ``pack_indices(indices, log2(k))`` (segment-major, runs
  padded to a byte); none in int8 mode;
- ``codebook``: per segment, per block of ``macs`` codewords, per element ``t``:
  element ``t`` of those codewords (zero past ``k``); a shared codebook is repeated
  for every segment. In int8 mode the weights: per block of ``macs`` outputs, per
  input ``i``, the weights of ``i`` to those outputs (zero past ``n_out``);
- ``params``: one :data:`~velcro.hw.dense.requant.PARAMS` per output;
- ``out``: ``lanes`` results per beat, int32 words or int8 bytes.
"""

from __future__ import annotations

import numpy as np

from ..requant import ACC_BITS
from .config import DenseConfig, DenseLayer
from .engine import command_layout
from .requant import PARAMS


def to_beats(octets, width: int) -> list[int]:
    """Cut a byte string into ``width``-bit little-endian beats (the last one zero-padded)."""
    if isinstance(octets, np.ndarray):
        octets = np.ascontiguousarray(octets).view(np.uint8).tobytes()
    octets = bytes(octets)
    step = width // 8
    return [int.from_bytes(octets[i:i + step], "little") for i in range(0, len(octets), step)]


def command(layer: DenseLayer, config: DenseConfig) -> int:
    """The ``cmd`` beat of ``layer``."""
    layer.check(config)
    fields = {"n_seg": layer.n_seg, "s": layer.s, "index_bits": layer.index_bits,
              "n_out": layer.n_out, "relu": int(layer.relu), "logits": int(layer.logits)}
    if config.int8:
        fields["int8"] = int(layer.mode == "int8")
    return command_layout(config).const(fields).as_value().value


def x_beats(x: np.ndarray, config: DenseConfig) -> list[int]:
    """Activations ``x [n_in]`` (int8)."""
    return to_beats(np.asarray(x, dtype=np.int8).view(np.uint8), config.width)


def index_beats(packed: bytes, config: DenseConfig) -> list[int]:
    """The packed index bytes of a codebook layer."""
    return to_beats(packed, config.width)


def weight_beats(w: np.ndarray, config: DenseConfig) -> list[int]:
    """Int8 weights ``w [n_out, n_in]`` in the order the int8 mode streams them."""
    return to_beats(weight_bytes(w, config), 8 * config.macs)


def weight_bytes(w: np.ndarray, config: DenseConfig) -> bytes:
    """The bytes of :func:`weight_beats`: ``[blocks, n_in, macs]`` int8."""
    w = np.asarray(w, dtype=np.int8)
    if w.ndim != 2:
        raise ValueError(f"weights must be [n_out, n_in], not {list(w.shape)}")
    n_out, n_in = w.shape
    blocks = -(-n_out // config.macs)
    padded = np.zeros((blocks * config.macs, n_in), dtype=np.int8)
    padded[:n_out] = w
    return np.ascontiguousarray(
        padded.reshape(blocks, config.macs, n_in).transpose(0, 2, 1)).tobytes()


def decode_weights(raw: np.ndarray, n_out: int, n_in: int, config: DenseConfig) -> np.ndarray:
    """Int8 weights ``[n_out, n_in]`` from the bytes of :func:`weight_bytes`."""
    blocks = -(-n_out // config.macs)
    cube = np.asarray(raw, dtype=np.uint8).view(np.int8)[:blocks * n_in * config.macs]
    return np.ascontiguousarray(
        cube.reshape(blocks, n_in, config.macs).transpose(0, 2, 1).reshape(-1, n_in)[:n_out])


def codebook_beats(codebooks: np.ndarray, layer: DenseLayer, config: DenseConfig) -> list[int]:
    """Codebooks ``[n_seg, k, s]`` or shared ``[1, k, s]`` (int8) in builder order."""
    layer.check(config)
    cb = np.asarray(codebooks, dtype=np.int8)
    if cb.ndim != 3 or cb.shape[1:] != (layer.k, layer.s) or cb.shape[0] not in (1, layer.n_seg):
        raise ValueError(f"codebooks must be [{layer.n_seg} or 1, {layer.k}, {layer.s}], "
                         f"not {list(cb.shape)}")
    cb = np.broadcast_to(cb, (layer.n_seg, layer.k, layer.s))
    blocks = max(1, layer.k // config.macs)
    padded = np.zeros((layer.n_seg, blocks * config.macs, layer.s), dtype=np.int8)
    padded[:, :layer.k] = cb
    ordered = padded.reshape(layer.n_seg, blocks, config.macs, layer.s).transpose(0, 1, 3, 2)
    return to_beats(np.ascontiguousarray(ordered).view(np.uint8), 8 * config.macs)


def params_beats(bias: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> list[int]:
    """Bias (int32), multiplier (uint16) and shift (0..31) of each output."""
    fields = [PARAMS[name] for name in ("bias", "mult", "shift")]
    beats = []
    for values in zip(np.asarray(bias), np.asarray(mult), np.asarray(shift), strict=True):
        beat = 0
        for field, value in zip(fields, values, strict=True):
            beat |= (int(value) & ((1 << field.width) - 1)) << field.offset
        beats.append(beat)
    return beats


def decode_out(beats: list[int], layer: DenseLayer, config: DenseConfig) -> np.ndarray:
    """The ``n_out`` results of ``layer``: int32 logits or int8 activations."""
    raw = b"".join(int(b).to_bytes(ACC_BITS * config.lanes // 8, "little") for b in beats)
    if layer.logits:
        return np.frombuffer(raw, dtype="<i4")[:layer.n_out].astype(np.int32)
    octets = np.frombuffer(raw, dtype=np.int8).reshape(-1, 4 * config.lanes)[:, :config.lanes]
    return octets.reshape(-1)[:layer.n_out].copy()


def out_beats(y: np.ndarray, layer: DenseLayer, config: DenseConfig) -> list[int]:
    """The output beats carrying ``y`` (int32 logits or int8), as the engine sends them."""
    y = np.asarray(y)
    groups = -(-layer.n_out // config.lanes)
    padded = np.zeros(groups * config.lanes, dtype=np.int32 if layer.logits else np.int8)
    padded[:layer.n_out] = y
    if layer.logits:
        return to_beats(padded.astype("<i4").view(np.uint8), ACC_BITS * config.lanes)
    octets = np.zeros((groups, 4 * config.lanes), dtype=np.int8)
    octets[:, :config.lanes] = padded.reshape(groups, config.lanes)
    return to_beats(octets.view(np.uint8), ACC_BITS * config.lanes)


def layer_beats(layer: DenseLayer, config: DenseConfig, x: np.ndarray, bias: np.ndarray,
                mult: np.ndarray, shift: np.ndarray, *, weights: np.ndarray | None = None,
                codebooks: np.ndarray | None = None, packed: bytes | None = None) -> dict:
    """The beats of every input stream of one layer.

    Give ``weights`` (int8 ``[n_out, n_in]``) in int8 mode, ``codebooks`` and the
    ``packed`` index bytes otherwise.
    """
    layer.check(config)
    beats = {"cmd": [command(layer, config)], "x": x_beats(x, config),
             "params": params_beats(bias, mult, shift)}
    if layer.mode == "int8":
        if weights is None:
            raise ValueError("int8 mode needs weights")
        beats["indices"], beats["codebook"] = [], weight_beats(weights, config)
    else:
        if codebooks is None or packed is None:
            raise ValueError("codebook mode needs codebooks and packed indices")
        beats["indices"] = index_beats(packed, config)
        beats["codebook"] = codebook_beats(codebooks, layer, config)
    return beats
