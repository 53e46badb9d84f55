"""The NumPy model of ``velcro_kernel`` behind the ``golden`` backend.

:class:`KernelModel` reads what the driver put in device memory, exactly as the
kernel does: the descriptors through the ``program`` port, the records of every
stream, the per-image tensors through the data port, each port only inside the
memory bank it is linked to. It decodes the records back into arrays (field offsets
from the same layouts the hardware uses, :func:`fields`), computes every layer with
:mod:`velcro.sw.golden`, writes results and counter records back, ends every run
with the status block (:data:`~velcro.hw.kernel.config.STATUS_BLOCK`) at the start
of the counter buffer and sets the status registers to match. So the ``golden``
device checks the compiler, the memory layout and the driver without the RTL, and
the RTL is checked against it through the same driver.

Images are independent and the program is the same for each, so the model runs
every descriptor over the whole batch at once. Counters are the cost model's
(:mod:`velcro.hw.kernel.cost`): a memory without latency, no stalls.

Errors follow the kernel's rules: an unknown opcode, out-of-range parameters or
stream lengths that do not match the layer set ``BAD_DESCRIPTOR``; an access outside
a port's bank sets ``AXI_READ`` or ``AXI_WRITE``; a descriptor whose modelled cycles
exceed the ``watchdog`` argument sets ``WATCHDOG`` (the kernel, which also counts
its stalls, may stop sooner). A fault ends the run in its first image, as the
kernel's do when they do not depend on the image: the status block of a faulted run
has no images done, the MAC cycles and skips of the descriptors before the fault in
one image, and no cycles (the model does not time a run it ends early).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from velcro.hw.conv.config import ConvConfigError, ConvLayer
from velcro.hw.conv.format import MASK_LAYOUT, REQUANT_LAYOUT
from velcro.hw.dense.config import DenseLayer
from velcro.hw.dense.cost import stream_beats
from velcro.hw.dense.format import decode_weights
from velcro.hw.dense.requant import PARAMS
from velcro.hw.kernel import cost as kernel_cost
from velcro.hw.kernel.config import COUNTERS, STATUS_BLOCK, STATUS_MAGIC, KernelConfig
from velcro.hw.kernel.connectivity import bank_of
from velcro.hw.kernel.cost import END_FIXED, RUN_FIXED
from velcro.hw.kernel.descriptor import DESCRIPTOR_BYTES, Opcode, decode, dense_records
from velcro.hw.kernel.regmap import REGMAP
from velcro.sw import golden
from velcro.sw.export.bits import unpack_indices

__all__ = ["DeviceMemory", "KernelModel", "fields"]


class _Fault(Exception):
    """Ends a modelled run with the status bit ``bit`` at descriptor ``pc``."""

    def __init__(self, bit: str, pc: int, opcode: int):
        super().__init__(bit)
        self.bit, self.pc, self.opcode = bit, pc, opcode


def fields(records: np.ndarray, layout) -> dict:
    """Decode records ``[R, bytes]`` (little-endian) into one array per field of ``layout``.

    Fields are unsigned or signed integers, or arrays of them; an array field gives
    ``[R, n]``.
    """
    bits = np.unpackbits(np.ascontiguousarray(records, np.uint8), axis=1, bitorder="little")
    out = {}
    for name, field in layout:
        shape = field.shape
        if hasattr(shape, "elem_shape"):
            width = shape.elem_shape.width
            count = shape.length
            signed = shape.elem_shape.signed
        else:
            width, count, signed = shape.width, 1, shape.signed
        chunk = bits[:, field.offset:field.offset + width * count].reshape(len(records), count,
                                                                            width)
        value = (chunk.astype(np.int64) << np.arange(width)).sum(axis=2)
        if signed:
            value = np.where(value >= 1 << (width - 1), value - (1 << width), value)
        out[name] = value if hasattr(shape, "elem_shape") else value[:, 0]
    return out


class DeviceMemory:
    """Buffers of the card's memory, each a NumPy array at a device address."""

    def __init__(self):
        self.regions: list[tuple[int, np.ndarray]] = []

    def add(self, address: int, array: np.ndarray) -> None:
        self.regions.append((address, array))

    def remove(self, address: int) -> None:
        self.regions = [(base, array) for base, array in self.regions if base != address]

    def view(self, address: int, length: int) -> np.ndarray:
        """``length`` bytes from ``address`` (within one buffer), as a writable view."""
        for base, array in self.regions:
            if base <= address and address + length <= base + array.nbytes:
                return array.view(np.uint8).reshape(-1)[address - base:address - base + length]
        raise KeyError(f"{length} bytes at {address:#x} are in no buffer")


class KernelModel:
    """The kernel's behaviour on a :class:`DeviceMemory`, one run per :meth:`run`; ``cu``
    is the compute unit it models, whose banks its ports reach."""

    def __init__(self, config: KernelConfig, memory: DeviceMemory, cu: int = 0):
        self.config = config
        self.memory = memory
        self.cu = cu
        self.registers = dict.fromkeys((r.offset for r in REGMAP), 0)

    # --- memory through ports ---------------------------------------------------------------
    def _read(self, port: str, address: int, length: int, fault: tuple) -> np.ndarray:
        try:
            if not bank_of(port, self.cu).contains(address, length):
                raise KeyError(address)
            return self.memory.view(address, length)
        except KeyError:
            raise _Fault("AXI_READ", *fault) from None

    def _write(self, port: str, address: int, data: np.ndarray, fault: tuple) -> None:
        try:
            if not bank_of(port, self.cu).contains(address, data.nbytes):
                raise KeyError(address)
            self.memory.view(address, data.nbytes)[:] = data.view(np.uint8).reshape(-1)
        except KeyError:
            raise _Fault("AXI_WRITE", *fault) from None

    def _records(self, port, base, stream, count, fault) -> np.ndarray:
        cfg = self.config
        rb = cfg.record_bytes(stream)
        raw = self._read(port, base, cfg.words(stream, count) * cfg.word_bytes, fault)
        return raw[:count * rb].reshape(count, rb)

    # --- registers ----------------------------------------------------------------------------
    def arg(self, name: str) -> int:
        reg = REGMAP[name]
        return sum(self.registers[o] << (32 * n) for n, o in enumerate(reg.words))

    def _set(self, name: str, value: int) -> None:
        for n, offset in enumerate(REGMAP[name].words):
            self.registers[offset] = (value >> (32 * n)) & 0xFFFFFFFF

    # --- a run --------------------------------------------------------------------------------
    def run(self) -> None:
        """Execute the program on every image; write the status block and set the
        status registers to it."""
        n = self.arg("images")
        block = dict.fromkeys(("status", "error_at", "images_done", "cycles", "mac_cycles",
                               "skipped", "stall_cycles"), 0)
        costs = []
        try:
            steps, fault = self._fetch() if n else ([], None)
            self._execute(steps, n, costs)
            if fault is not None:
                raise fault
            records = [{"cycles": n * (cost.fixed + cost.busy), "busy": n * cost.busy,
                        "mac_cycles": n * cost.mac_cycles, "skipped": n * cost.skipped,
                        "stall_cycles": 0} for cost in costs]
            block["cycles"] = RUN_FIXED + n * END_FIXED + sum(r["cycles"] for r in records)
            block["mac_cycles"] = sum(r["mac_cycles"] for r in records)
            block["skipped"] = sum(r["skipped"] for r in records)
            block["images_done"] = n
            if records:
                self._write_counters(records, len(steps))
        except _Fault as fault:
            self._fault(block, fault)
            block["mac_cycles"] = sum(cost.mac_cycles for cost in costs)
            block["skipped"] = sum(cost.skipped for cost in costs)
        try:
            self._write_block(block)
        except _Fault:
            pass            # lost, as the kernel's: the driver finds no block
        for name, value in block.items():
            self._set(name, value)

    def _fault(self, block: dict, fault: _Fault) -> None:
        status, where = REGMAP["status"], REGMAP["error_at"]
        block["status"] = status.field_named(fault.bit).mask
        block["error_at"] = ((fault.pc << where.field_named("PC").bit) |
                             (fault.opcode << where.field_named("OPCODE").bit))
        block["images_done"] = block["cycles"] = block["stall_cycles"] = 0

    def _fetch(self) -> tuple[list, _Fault | None]:
        """The descriptors before ``END``, and the fault that ends the program instead
        of an ``END`` (raised once the descriptors before it have run)."""
        steps = []
        base = self.arg("program")
        for pc in range(self.config.max_program):
            try:
                raw = self._read("m_axi_program", base + pc * DESCRIPTOR_BYTES,
                                 DESCRIPTOR_BYTES, (pc, 0))
            except _Fault as fault:
                return steps, fault
            opcode, args = decode(raw.tobytes())
            if opcode not in Opcode.__members__.values():
                return steps, _Fault("BAD_DESCRIPTOR", pc, opcode)
            if opcode == Opcode.END:
                return steps, None
            steps.append((Opcode(opcode), args))
        return steps, _Fault("BAD_DESCRIPTOR", self.config.max_program, 0)

    def _write_counters(self, records: list[dict], count: int) -> None:
        cfg = self.config
        rb = cfg.record_bytes("counters")
        raw = np.zeros((cfg.words("counters", count) * cfg.word_bytes,), np.uint8)
        for index, record in enumerate(records):
            value = COUNTERS.const(record).as_bits()
            raw[index * rb:(index + 1) * rb] = np.frombuffer(value.to_bytes(rb, "little"),
                                                             np.uint8)
        self._write("m_axi_data", self.arg("counters") + cfg.status_bytes, raw,
                    (count, Opcode.END))

    def _write_block(self, block: dict) -> None:
        size = self.config.status_bytes
        value = STATUS_BLOCK.const({"magic": STATUS_MAGIC, **block}).as_bits()
        raw = np.frombuffer(value.to_bytes(size, "little"), np.uint8).copy()
        self._write("m_axi_data", self.arg("counters"), raw, (0, Opcode.END))

    def _execute(self, steps: list, n: int, costs: list) -> None:
        """Run ``steps`` on the ``n`` images; append each one's per-image cost to
        ``costs`` once it has finished."""
        maps: dict[int, np.ndarray] = {}
        vectors: dict[int, np.ndarray] = {}
        watchdog = self.arg("watchdog")
        for pc, (opcode, args) in enumerate(steps):
            run = getattr(self, f"_{opcode.name.lower()}")
            cost = run(pc, args, n, maps, vectors)
            if watchdog and cost.fixed + cost.busy > watchdog:
                raise _Fault("WATCHDOG", pc, opcode)
            costs.append(cost)

    # --- ops ------------------------------------------------------------------------------------
    def _bad(self, pc, opcode):
        return _Fault("BAD_DESCRIPTOR", pc, opcode)

    def _map_shape(self, pc, opcode, args) -> tuple[int, int, int]:
        c = self.config.conv
        shape = (args.channels, args.height, args.width)
        limits = (c.max_channels, c.max_height, c.max_width)
        if any(not 1 <= v <= limit for v, limit in zip(shape, limits, strict=True)):
            raise self._bad(pc, opcode)
        return shape

    def _per_image(self, pc, opcode, args, stream, port, base_name, n, count):
        io = args.io
        if io.records != count:
            raise self._bad(pc, opcode)
        return np.stack([self._records(port, self.arg(base_name) + io.offset + i * io.stride,
                                       stream, count, (pc, opcode)) for i in range(n)])

    def _load_map(self, pc, args, n, maps, vectors):
        c, h, w = self._map_shape(pc, Opcode.LOAD_MAP, args)
        lanes = self.config.conv.lanes
        groups = -(-c // lanes)
        raw = self._per_image(pc, Opcode.LOAD_MAP, args, "act", "m_axi_data", "inputs", n,
                              groups * h * w)
        beats = raw[..., :lanes].view(np.int8).reshape(n, groups, h, w, lanes)
        maps[args.buf] = beats.transpose(0, 1, 4, 2, 3).reshape(n, groups * lanes, h, w)[:, :c]
        return kernel_cost.load_map_cost(c, h, w, self.config)

    def _store_map(self, pc, args, n, maps, vectors):
        c, h, w = self._map_shape(pc, Opcode.STORE_MAP, args)
        x = self._map(pc, Opcode.STORE_MAP, maps, args.buf, (c, h, w))
        lanes = self.config.conv.lanes
        groups = -(-c // lanes)
        rb = self.config.record_bytes("act")
        if args.io.records != groups * h * w:
            raise self._bad(pc, Opcode.STORE_MAP)
        padded = np.zeros((n, groups * lanes, h, w), np.int8)
        padded[:, :c] = x
        out = np.zeros((n, groups, h, w, rb), np.int8)
        out[..., :lanes] = padded.reshape(n, groups, lanes, h, w).transpose(0, 1, 3, 4, 2)
        self._per_image_write(pc, Opcode.STORE_MAP, args.io, out.reshape(n, -1), "act")
        return kernel_cost.store_map_cost(c, h, w, self.config)

    def _per_image_write(self, pc, opcode, io, data: np.ndarray, stream: str) -> None:
        cfg = self.config
        words = cfg.words(stream, io.records) * cfg.word_bytes
        for i, row in enumerate(data.view(np.uint8)):
            padded = np.zeros(words, np.uint8)
            padded[:len(row)] = row
            self._write("m_axi_data", self.arg("outputs") + io.offset + i * io.stride, padded,
                        (pc, opcode))

    def _map(self, pc, opcode, maps, buf, shape) -> np.ndarray:
        x = maps.get(buf)
        if x is None or x.shape[1:] != tuple(shape):
            raise self._bad(pc, opcode)
        return x

    def _conv(self, pc, args, n, maps, vectors):
        cfg = self.config
        lanes = cfg.conv.lanes
        try:
            layer = ConvLayer(args.c_in, args.c_out, args.height, args.width,
                              args.stride).check(cfg.conv)
        except ConvConfigError:
            raise self._bad(pc, Opcode.CONV) from None
        x = self._map(pc, Opcode.CONV, maps, args.buf, (layer.c_in, layer.height, layer.width))
        groups = layer.groups(cfg.conv)
        fault = (pc, Opcode.CONV)
        counts = {"weights": layer.c_out * groups, "requant": layer.c_out}
        bh, bw = -(-layer.out_height // 3), -(-layer.out_width // 3)
        if args.skip:
            counts["mask"] = layer.c_out * bh * bw
        for name, count in counts.items():
            if getattr(args, name).records != count:
                raise self._bad(*fault)
        base = self.arg("program")
        raw = self._records("m_axi_program", base + args.weights.offset, "weights",
                            counts["weights"], fault)
        taps = raw[:, :lanes * 9].view(np.int8).reshape(layer.c_out, groups * lanes, 3, 3)
        w = taps[:, :layer.c_in]
        q = fields(self._records("m_axi_program", base + args.requant.offset, "requant",
                                 layer.c_out, fault), REQUANT_LAYOUT)
        mask = mean = void = None
        if args.skip:
            m = fields(self._records("m_axi_program", base + args.mask.offset, "mask",
                                     counts["mask"], fault), MASK_LAYOUT)
            bits = (m["skip"][:, None] >> np.arange(9)) & 1
            order = (0, 1, 3, 2, 4)
            mask = bits.reshape(layer.c_out, bh, bw, 3, 3).transpose(order).reshape(
                layer.c_out, 3 * bh, 3 * bw)[:, :layer.out_height, :layer.out_width]
            mean = m["mean"].reshape(layer.c_out, bh, bw, 3, 3).transpose(order).reshape(
                layer.c_out, 3 * bh, 3 * bw)[:, :layer.out_height, :layer.out_width]
            # A void beat replaces every element of its block, whatever its skip bits;
            # the skipped count is the skip bits', as the array counts them.
            void = m["void"].astype(bool).reshape(layer.c_out, bh, bw)
            skipped = int(mask.sum())
            mask = mask.astype(bool) | np.repeat(np.repeat(void, 3, axis=1), 3, axis=2)[
                :, :layer.out_height, :layer.out_width]
            mean = np.where(mask, mean, 0).astype(np.int8)
        y = np.concatenate([golden.conv3x3(x[i:i + 64], w, q["bias"], q["mult"], q["shift"],
                                           stride=layer.stride, mask=mask, mean=mean,
                                           relu=bool(args.relu))
                            for i in range(0, n, 64)])
        maps[args.buf ^ 1] = y
        cost = kernel_cost.conv_cost(layer, mask, cfg, void)
        return cost if mask is None else dataclasses.replace(cost, skipped=skipped)

    def _pool(self, pc, args, n, maps, vectors):
        c, h, w = self._map_shape(pc, Opcode.POOL, args)
        if h < 2 or w < 2:
            raise self._bad(pc, Opcode.POOL)
        maps[args.buf ^ 1] = golden.maxpool2x2(
            self._map(pc, Opcode.POOL, maps, args.buf, (c, h, w)))
        return kernel_cost.pool_cost(c, h, w, self.config)

    def _flatten(self, pc, args, n, maps, vectors):
        c, h, w = self._map_shape(pc, Opcode.FLATTEN, args)
        hwc = bool(args.hwc)
        if c * h * w > self.config.vector_bytes or \
                (hwc and not self.config.flattens_channel_last(c)):
            raise self._bad(pc, Opcode.FLATTEN)
        x = self._map(pc, Opcode.FLATTEN, maps, args.buf, (c, h, w))
        # Channel-last: x[(y * W + x) * C + c].
        vectors[args.dst] = (x.transpose(0, 2, 3, 1) if hwc else x).reshape(n, -1)
        return kernel_cost.flatten_cost(c, h, w, self.config, hwc=hwc)

    def _load_vec(self, pc, args, n, maps, vectors):
        count = args.io.records
        if not 1 <= count <= self.config.vector_words:
            raise self._bad(pc, Opcode.LOAD_VEC)
        raw = self._per_image(pc, Opcode.LOAD_VEC, args, "x", "m_axi_data", "inputs", n, count)
        xb = self.config.dense.x_bytes
        vectors[args.dst] = raw[..., :xb].view(np.int8).reshape(n, -1)
        return kernel_cost.load_vector_cost(count)

    def _dense(self, pc, args, n, maps, vectors):
        cfg = self.config
        fault = (pc, Opcode.DENSE)
        try:
            if args.int8:
                layer = DenseLayer(args.n_seg, args.n_out, 256, 1, "int8", bool(args.relu),
                                   bool(args.logits))
            else:
                layer = DenseLayer(args.n_seg * args.s, args.n_out, 1 << args.index_bits,
                                   args.s, "codebook", bool(args.relu), bool(args.logits))
            layer.check(cfg.dense)
        except ValueError:
            raise self._bad(*fault) from None
        beats = stream_beats(layer, cfg.dense)
        records = dense_records(beats, layer.mode == "int8")
        if (args.x_records, args.indices.records, args.codebook.records,
                args.params.records) != (beats["x"], records["indices"], records["codebook"],
                                         beats["params"]):
            raise self._bad(*fault)
        x = vectors.get(args.src)
        if x is None or x.shape[1] < layer.n_in:
            raise self._bad(*fault)
        x = x[:, :layer.n_in]
        base = self.arg("program")
        xb = cfg.dense.x_bytes
        indices = self.arg("indices") + args.indices.offset
        p = fields(self._records("m_axi_program", base + args.params.offset, "params",
                                 layer.n_out, fault), PARAMS)
        if layer.mode == "int8":
            macs = cfg.dense.macs
            raw = self._records("m_axi_indices", indices, "codebook", records["indices"],
                                fault)[:, :macs].reshape(-1)
            w = decode_weights(raw, layer.n_out, layer.n_in, cfg.dense)
            acc = golden.dense_acc(x, w, p["bias"])
        else:
            index_bytes = self._records("m_axi_indices", indices, "indices", beats["indices"],
                                        fault)[:, :xb].reshape(-1)
            macs = cfg.dense.macs
            blocks = max(1, layer.k // macs)
            raw = self._records("m_axi_program", base + args.codebook.offset, "codebook",
                                beats["codebook"], fault)[:, :macs].view(np.int8)
            codebooks = raw.reshape(layer.n_seg, blocks, layer.s, macs).transpose(
                0, 1, 3, 2).reshape(layer.n_seg, blocks * macs, layer.s)[:, :layer.k]
            run = -(-layer.n_out * layer.index_bits // 8)
            indices = unpack_indices(index_bytes[:layer.n_seg * run], layer.index_bits,
                                     layer.n_out, layer.n_seg)
            acc = golden.dense_codebook_acc(x, codebooks, indices, p["bias"])
        if layer.logits:
            y = acc.astype(np.int32)
        else:
            y = golden.requantize(acc, p["mult"], p["shift"], layer.relu, channel_axis=1)
        if args.to_memory:
            lanes = cfg.dense.lanes
            groups = -(-layer.n_out // lanes)
            rb = cfg.record_bytes("out")
            out = np.zeros((n, groups, rb), np.uint8)
            if layer.logits:
                words = np.zeros((n, groups * lanes), "<i4")
                words[:, :layer.n_out] = y
                out[:, :, :4 * lanes] = words.view(np.uint8).reshape(n, groups, 4 * lanes)
            else:
                octets = np.zeros((n, groups * lanes), np.int8)
                octets[:, :layer.n_out] = y
                out[:, :, :lanes] = octets.view(np.uint8).reshape(n, groups, lanes)
            if args.out.records != groups:
                raise self._bad(*fault)
            self._per_image_write(pc, Opcode.DENSE, args.out, out.reshape(n, -1), "out")
        else:
            vectors[args.dst] = y
        return kernel_cost.dense_cost(layer, cfg)
