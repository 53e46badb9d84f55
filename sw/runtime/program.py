"""Compiling package layers into a kernel program and the device-memory images it reads.

A *segment* is a run of package layers that the kernel executes in one call
(:mod:`velcro.sw.runtime.partition` chooses them). :func:`compile_segment` turns it
into a :class:`Program`:

* the descriptor list (:mod:`velcro.hw.kernel.descriptor`), one per on-chip step, in front
  of the constants in the ``program`` image;
* the constants as records (:mod:`velcro.hw.kernel.records`, formats of
  :mod:`velcro.hw.conv.format` and :mod:`velcro.hw.dense.format`), each stream
  starting on an AXI word, and a conv layer's kernels on a burst (``max_burst``
  words, so that its first burst brings the kernels the layer waits for before it
  starts, not the few words up to the next burst boundary);
* the dense index streams in a separate ``indices`` image, read through their own
  port;
* the formats of the per-image input and output tensors, with :meth:`Program.pack_inputs`
  and :meth:`Program.unpack_outputs` converting between them and the golden model's
  arrays (maps ``[N, C, H, W]`` int8, vectors ``[N, n]`` int8, logits ``[N, n]`` int32).

Every step also carries the kernel cost model's busy cycles for it
(:mod:`velcro.hw.kernel.cost`), so measured counters can be checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from velcro.hw.conv import format as conv_format
from velcro.hw.conv.config import ConvLayer
from velcro.hw.dense import format as dense_streams
from velcro.hw.dense.config import DenseLayer
from velcro.hw.dense.cost import stream_beats
from velcro.hw.kernel import cost as kernel_cost
from velcro.hw.kernel.config import KernelConfig
from velcro.hw.kernel.descriptor import DESCRIPTOR_BYTES, Opcode, dense_records, encode

from ..export.bits import unpack_mask
from ..export.package import Layer

__all__ = ["Program", "Step", "compile_segment"]


@dataclass(frozen=True)
class Step:
    """One descriptor of a program.

    Attributes
    ----------
    opcode : Opcode
    name : str
        The package layer it runs (or what it does, for loads and stores).
    fields : dict
        The descriptor's arguments.
    cost : StepCost or None
        The cost model's figures per image (``None`` for ``END``).
    """

    opcode: Opcode
    name: str
    fields: dict
    cost: kernel_cost.StepCost | None = None


@dataclass
class Program:
    """A compiled segment: descriptors, memory images and tensor formats.

    Attributes
    ----------
    config : KernelConfig
    steps : list of Step
        Ending with ``END``.
    program : bytes
        Descriptors followed by the constants.
    indices : bytes
        Dense index streams (at least one word, so that the buffer exists).
    input_kind, output_kind : str
        ``"map"``, ``"vector"`` or ``"logits"``.
    input_shape, output_shape : tuple
        Per image.
    input_stride, output_stride : int
        Bytes per image in the ``inputs``/``outputs`` buffers.
    """

    config: KernelConfig
    steps: list[Step]
    program: bytes
    indices: bytes
    input_kind: str
    input_shape: tuple
    output_kind: str
    output_shape: tuple
    input_stride: int
    output_stride: int
    layers: list[str] = field(default_factory=list)

    @property
    def counter_bytes(self) -> int:
        """Bytes of the counter buffer: the status block, then the counter records of
        the steps before ``END``."""
        cfg = self.config
        return cfg.status_bytes + cfg.words("counters", len(self.steps) - 1) * cfg.word_bytes

    def pack_inputs(self, x: np.ndarray) -> bytes:
        """The ``inputs`` image of ``x`` (``[N, *input_shape]`` int8)."""
        x = np.asarray(x)
        if x.dtype != np.int8 or x.shape[1:] != tuple(self.input_shape):
            raise ValueError(f"inputs must be int8 [N, {', '.join(map(str, self.input_shape))}]"
                             f", not {x.dtype} {list(x.shape)}")
        if self.input_kind == "map":
            records = _map_records(x, self.config)
        else:
            records = _vector_records(x, self.config)
        return _per_image(records, self.input_stride)

    def unpack_outputs(self, raw: bytes, n: int) -> np.ndarray:
        """Outputs of ``n`` images from the ``outputs`` image."""
        cfg = self.config
        per_image = np.frombuffer(raw, np.uint8)[:n * self.output_stride].reshape(
            n, self.output_stride)
        if self.output_kind == "map":
            c, h, w = self.output_shape
            lanes = cfg.conv.lanes
            groups = -(-c // lanes)
            rb = cfg.record_bytes("act")
            beats = per_image[:, :groups * h * w * rb].reshape(n, groups, h, w, rb)
            planes = beats[..., :lanes].view(np.int8).transpose(0, 1, 4, 2, 3)
            return planes.reshape(n, groups * lanes, h, w)[:, :c].copy()
        n_out = self.output_shape[0]
        rb = cfg.record_bytes("out")
        beats = -(-n_out // cfg.dense.lanes)
        records = per_image[:, :beats * rb].reshape(n, beats, rb)
        if self.output_kind == "logits":
            words = records[:, :, :4 * cfg.dense.lanes].copy().view("<i4")
            return words.reshape(n, -1)[:, :n_out].astype(np.int32)
        octets = records[:, :, :cfg.dense.lanes].view(np.int8)
        return octets.reshape(n, -1)[:, :n_out].copy()


def _per_image(records: np.ndarray, stride: int) -> bytes:
    """``[N, bytes]`` records padded to ``stride`` bytes per image."""
    n, size = records.shape
    out = np.zeros((n, stride), np.uint8)
    out[:, :size] = records
    return out.tobytes()


def _map_records(x: np.ndarray, cfg: KernelConfig) -> np.ndarray:
    """``ifmap`` records of int8 maps ``[N, C, H, W]``: ``[N, bytes]``."""
    n, c, h, w = x.shape
    lanes = cfg.conv.lanes
    groups = -(-c // lanes)
    rb = cfg.record_bytes("act")
    padded = np.zeros((n, groups * lanes, h, w), np.int8)
    padded[:, :c] = x
    beats = padded.reshape(n, groups, lanes, h, w).transpose(0, 1, 3, 4, 2)
    records = np.zeros((n, groups, h, w, rb), np.int8)
    records[..., :lanes] = beats
    return records.reshape(n, -1).view(np.uint8)


def _vector_records(x: np.ndarray, cfg: KernelConfig) -> np.ndarray:
    """``x`` records of int8 vectors ``[N, n]``: ``[N, bytes]``."""
    n, size = x.shape
    xb = cfg.dense.x_bytes
    rb = cfg.record_bytes("x")
    beats = -(-size // xb)
    records = np.zeros((n, beats, rb), np.int8)
    flat = np.zeros((n, beats * xb), np.int8)
    flat[:, :size] = x
    records[:, :, :xb] = flat.reshape(n, beats, xb)
    return records.reshape(n, -1).view(np.uint8)


class _Image:
    """A memory image built stream by stream, each stream starting on an AXI word."""

    def __init__(self, word_bytes: int, reserved: int = 0, burst_bytes: int | None = None):
        self.word_bytes = word_bytes
        self.burst_bytes = burst_bytes or word_bytes
        self.data = bytearray(reserved)

    def add(self, raw: bytes, *, burst: bool = False) -> int:
        """Append ``raw`` (padded to a word, and starting on a burst with ``burst``);
        return its offset."""
        if burst:
            self.data += bytes(-len(self.data) % self.burst_bytes)
        offset = len(self.data)
        self.data += raw
        self.data += bytes(-len(self.data) % self.word_bytes)
        return offset

    def records(self, cfg: KernelConfig, stream: str, beats: list[int], *,
                burst: bool = False) -> dict:
        """Append ``beats`` of ``stream`` as records; return the ``STREAM`` fields."""
        rb = cfg.record_bytes(stream)
        raw = b"".join(int(b).to_bytes(rb, "little") for b in beats)
        return {"offset": self.add(raw, burst=burst), "records": len(beats)}

    def raw_records(self, cfg: KernelConfig, stream: str, octets: bytes, beat_bytes: int) -> dict:
        """Append a byte stream cut into ``beat_bytes`` beats, one record each."""
        rb = cfg.record_bytes(stream)
        beats = -(-len(octets) // beat_bytes)
        padded = np.zeros((beats, rb), np.uint8)
        flat = np.zeros(beats * beat_bytes, np.uint8)
        flat[:len(octets)] = np.frombuffer(octets, np.uint8)
        padded[:, :beat_bytes] = flat.reshape(beats, beat_bytes)
        return {"offset": self.add(padded.tobytes()), "records": beats}


def dense_layer(layer: Layer) -> DenseLayer:
    """The dense engine's view of a ``dense`` or ``dense_codebook`` package layer."""
    n_in, n_out = layer.in_shape[0], layer.out_shape[0]
    logits = layer.attrs["output"] == "int32"
    if layer.op == "dense":
        return DenseLayer(n_in, n_out, 256, 1, "int8", relu=layer.attrs["relu"], logits=logits)
    return DenseLayer(n_in, n_out, 1 << layer.attrs["bits"], layer.attrs["segment"],
                      "codebook", relu=layer.attrs["relu"], logits=logits)


def conv_form(layer: Layer) -> str | None:
    """``None`` if the conv array computes ``layer`` (a ``conv3x3``, or a ``conv`` that is
    3x3 with padding 1, stride 1 or 2, one group, and no activation or ReLU), else why not."""
    if layer.op == "conv3x3":
        return None
    a = layer.attrs
    if tuple(a["kernel"]) != (3, 3) or tuple(a["padding"]) != (1, 1) or a["groups"] != 1:
        return "the conv array computes 3x3 convolutions with padding 1 and one group"
    if tuple(a["stride"]) not in ((1, 1), (2, 2)):
        return "the conv array's stride is 1 or 2"
    if tuple(a["clamp"]) not in ((-128, 127), (0, 127)):
        return "the conv array clamps to [0, 127] (ReLU) or [-128, 127] (no activation)"
    return None


def conv_layer(layer: Layer) -> ConvLayer:
    """The conv array's view of a ``conv3x3`` or 3x3 ``conv`` package layer."""
    c_in, h, w = layer.in_shape
    if layer.op == "conv3x3":
        return ConvLayer(c_in, layer.out_shape[0], h, w, layer.attrs["stride"])
    return ConvLayer(c_in, layer.out_shape[0], h, w, layer.attrs["stride"][0],
                     relu=layer.attrs["clamp"][0] == 0)


def _map_io(c: int, h: int, w: int, cfg: KernelConfig) -> tuple[int, int]:
    """Activation records of a ``c x h x w`` map and its per-image stride in bytes."""
    records = -(-c // cfg.conv.lanes) * h * w
    return records, _round(records * cfg.record_bytes("act"), cfg.word_bytes)


def compile_segment(layers: list[Layer], config: KernelConfig) -> Program:
    """The kernel program running ``layers`` (a segment the kernel supports) per image."""
    if not layers:
        raise ValueError("a segment needs at least one layer")
    cfg = config
    wb = cfg.word_bytes
    first = layers[0]
    input_kind = "vector" if first.op in ("dense", "dense_codebook") else "map"
    last = layers[-1]
    if last.op in ("dense", "dense_codebook"):
        output_kind = "logits" if last.attrs["output"] == "int32" else "vector"
    else:
        output_kind = "map"
    steps: list[Step] = []
    burst_bytes = cfg.max_burst * wb
    constants = _Image(wb, burst_bytes=burst_bytes)
    indices = _Image(wb)
    # Descriptors go first; constants follow once their count is known.
    buf, half = 0, 0
    in_shape = tuple(first.in_shape)
    if input_kind == "map":
        c, h, w = in_shape
        records, input_stride = _map_io(c, h, w, cfg)
        # The program's only read of its inputs: the next image's is requested ahead.
        steps.append(Step(Opcode.LOAD_MAP, "input", dict(
            buf=buf, channels=c, height=h, width=w, ahead=1,
            io={"offset": 0, "stride": input_stride, "records": records}),
            kernel_cost.load_map_cost(c, h, w, cfg)))
    else:
        records = -(-in_shape[0] // cfg.dense.x_bytes)
        input_stride = _round(records * cfg.record_bytes("x"), wb)
        steps.append(Step(Opcode.LOAD_VEC, "input", dict(
            dst=half, io={"offset": 0, "stride": input_stride, "records": records}),
            kernel_cost.load_vector_cost(records)))
    output_stride = 0
    order = None            # the input order a flatten gave the next dense layer
    for index, layer in enumerate(layers):
        final = index == len(layers) - 1
        if layer.op in ("conv3x3", "conv"):
            steps.append(_conv_step(layer, buf, cfg, constants))
            buf ^= 1
        elif layer.op == "maxpool2x2":
            c, h, w = layer.in_shape
            steps.append(Step(Opcode.POOL, layer.name, dict(buf=buf, channels=c, height=h,
                                                            width=w),
                              kernel_cost.pool_cost(c, h, w, cfg)))
            buf ^= 1
        elif layer.op == "flatten":
            c, h, w = layer.in_shape
            hwc = not final and channel_last(c, layers[index + 1], cfg)
            if hwc:
                order = np.arange(c * h * w).reshape(c, h * w).T.reshape(-1)
            steps.append(Step(Opcode.FLATTEN, layer.name, dict(buf=buf, dst=half, channels=c,
                                                               height=h, width=w, hwc=int(hwc)),
                              kernel_cost.flatten_cost(c, h, w, cfg, hwc=hwc)))
        else:
            step, out_records = _dense_step(layer, half, final, cfg, constants, indices, order)
            order = None
            steps.append(step)
            half ^= 1
            if final:
                output_stride = _round(out_records * cfg.record_bytes("out"), wb)
                step.fields["out"]["stride"] = output_stride
    if output_kind == "map":
        c, h, w = last.out_shape
        records, output_stride = _map_io(c, h, w, cfg)
        steps.append(Step(Opcode.STORE_MAP, "output", dict(
            buf=buf, channels=c, height=h, width=w,
            io={"offset": 0, "stride": output_stride, "records": records}),
            kernel_cost.store_map_cost(c, h, w, cfg)))
    steps.append(Step(Opcode.END, "end", {}))
    if len(steps) - 1 > cfg.max_program:
        raise ValueError(f"{len(steps) - 1} steps exceed the kernel's {cfg.max_program}")
    # Constants were placed from offset 0 of their own image; shift them behind the
    # descriptors.
    head = _round(len(steps) * DESCRIPTOR_BYTES, burst_bytes)
    steps = [Step(step.opcode, step.name, _shifted(step, head), step.cost) for step in steps]
    program = bytearray()
    for step in steps:
        program += encode(step.opcode, **step.fields)
    program += bytes(head - len(program))
    program += constants.data
    return Program(cfg, steps, bytes(program), bytes(indices.data) or bytes(wb), input_kind,
                   in_shape, output_kind, tuple(last.out_shape), input_stride, output_stride,
                   [layer.name for layer in layers])


def _round(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _shifted(step: Step, head: int) -> dict:
    """The step's fields with its ``program`` stream offsets moved behind ``head`` bytes."""
    fields = dict(step.fields)
    program_streams = {Opcode.CONV: ("weights", "requant", "mask"),
                       Opcode.DENSE: ("codebook", "params")}.get(step.opcode, ())
    for name in program_streams:
        fields[name] = dict(fields[name], offset=fields[name]["offset"] + head)
    return fields


def _conv_step(layer: Layer, buf: int, cfg: KernelConfig, image: _Image) -> Step:
    a = layer.arrays
    lanes = cfg.conv.lanes
    shape = conv_layer(layer).check(cfg.conv)
    mask = (unpack_mask(a["mask"], layer.out_shape) if "mask" in a
            else np.zeros(layer.out_shape, bool))
    skip = bool(mask.any())
    fields = dict(
        buf=buf, relu=int(shape.relu), skip=int(skip), stride=shape.stride, c_in=shape.c_in,
        c_out=shape.c_out, height=shape.height, width=shape.width,
        weights=image.records(cfg, "weights", conv_format.pack_weights(a["weight"], lanes),
                              burst=True),
        requant=image.records(cfg, "requant", conv_format.pack_requant(
            a["bias"], a["mult"], a["shift"])),
        mask=image.records(cfg, "mask", conv_format.pack_mask(mask, a["mean"]))
        if skip else {"offset": 0, "records": 0},
    )
    return Step(Opcode.CONV, layer.name, fields, kernel_cost.conv_cost(shape, mask, cfg))


def channel_last(channels: int, consumer: Layer, cfg: KernelConfig) -> bool:
    """Whether a flatten of ``channels`` channels feeding ``consumer`` runs channel-last.

    The kernel then writes a word per beat instead of a byte per cycle, and the dense
    layer takes its inputs in that order, which needs one segment per input: int8
    weights, or codebooks with ``segment = 1``.
    """
    if not cfg.flattens_channel_last(channels):
        return False
    return consumer.op == "dense" or (consumer.op == "dense_codebook" and
                                      consumer.attrs["segment"] == 1)


def _dense_step(layer: Layer, half: int, final: bool, cfg: KernelConfig, image: _Image,
                indices: _Image, order: np.ndarray | None = None) -> tuple[Step, int]:
    """The ``DENSE`` step; ``order[j]`` is the package input at position ``j`` of the
    activation buffer (a channel-last flatten), ``None`` for the package's order."""
    a = dict(layer.arrays)
    if order is not None:
        if layer.op == "dense":
            a["weight"] = np.asarray(a["weight"])[:, order]
        else:
            run = -(-layer.out_shape[0] * layer.attrs["bits"] // 8)
            packed = np.asarray(a["indices"], np.uint8).reshape(-1)
            a["indices"] = packed[:len(order) * run].reshape(len(order), run)[order]
            if np.asarray(a["codebooks"]).shape[0] > 1:
                a["codebooks"] = np.asarray(a["codebooks"])[order]
    shape = dense_layer(layer).check(cfg.dense)
    beats = stream_beats(shape, cfg.dense)
    xb = cfg.dense.x_bytes
    want = dense_records(beats, shape.mode == "int8")
    if shape.mode == "int8":
        # The weights, records of the codebook stream, in the indices buffer.
        index_stream = indices.records(cfg, "codebook", dense_streams.weight_beats(
            a["weight"], cfg.dense))
        codebook = {"offset": 0, "records": 0}
    else:
        octets = np.asarray(a["indices"], np.uint8).tobytes()
        index_stream = indices.raw_records(cfg, "indices", octets, xb)
        codebook = image.records(cfg, "codebook", dense_streams.codebook_beats(
            a["codebooks"], shape, cfg.dense))
    if index_stream["records"] != want["indices"]:
        raise AssertionError(f"{layer.name}: {index_stream['records']} index records, the "
                             f"engine takes {want['indices']}")
    zeros = np.zeros(shape.n_out, np.int64)
    params = image.records(cfg, "params", dense_streams.params_beats(
        a["bias"], a.get("mult", zeros), a.get("shift", zeros)))
    fields = dict(
        src=half, dst=half ^ 1, to_memory=int(final), relu=int(shape.relu),
        logits=int(shape.logits), int8=int(shape.mode == "int8"), n_seg=shape.n_seg,
        s=shape.s, index_bits=shape.index_bits, n_out=shape.n_out,
        x_records=beats["x"], indices=index_stream, codebook=codebook, params=params,
        out={"offset": 0, "stride": 0, "records": beats["out"]},
    )
    return Step(Opcode.DENSE, layer.name, fields, kernel_cost.dense_cost(shape, cfg)), \
        beats["out"]
