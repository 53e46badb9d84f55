"""Parameters of ``velcro_kernel`` and the record formats they imply.

:class:`KernelConfig` fixes the engines (a :class:`~velcro.hw.conv.config.ConvArrayConfig`
and a :class:`~velcro.hw.dense.config.DenseConfig`), the AXI data width and the sizes
of the kernel's own buffers, and names every stream that crosses device memory with
its payload width. The host packs buffers from the same names
(:meth:`KernelConfig.record_bytes`), so the hardware and the runtime cannot disagree
on a format. Like the engines' configurations, this module needs no simulator and
validates on construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from amaranth.lib import data

from ..conv.config import SHIPPED as CONV_SHIPPED
from ..conv.config import ConvArrayConfig
from ..conv.format import MASK_LAYOUT, REQUANT_LAYOUT, activations_layout, weights_layout
from ..dense.config import SHIPPED as DENSE_SHIPPED
from ..dense.config import DenseConfig
from ..dense.requant import PARAMS
from .descriptor import DESCRIPTOR_BYTES
from .records import record_bytes, words_for

__all__ = ["COUNTERS", "CONFIGS", "KernelConfig", "SHIPPED", "SMALL", "STATUS_BLOCK",
           "STATUS_MAGIC", "STREAMS"]

#: One record per descriptor, written at the end of a run that succeeds, after the
#: status block (:data:`STATUS_BLOCK`): the descriptor's totals over all images of
#: the run.
COUNTERS = data.StructLayout({
    "cycles": 64,        # from fetching the descriptor to finishing it
    "busy": 64,          # engine running (the cost model's cycles, plus start cycles)
    "mac_cycles": 64,    # conv array multipliers computing
    "skipped": 64,       # output elements replaced by VELCRO means
    "stall_cycles": 64,  # waiting for device memory
})

#: The status block: one record at the start of the ``counters`` buffer
#: (:attr:`KernelConfig.status_bytes`), written at the end of every run, whether it
#: succeeded, faulted or hit the watchdog, after the per-descriptor records (which
#: follow it, and are written only by a run that succeeds) and after the DMAs of a
#: faulted run are flushed. It holds what the status registers hold at ``ap_done``,
#: except for the wait for its own write: ``cycles`` and ``stall_cycles`` leave that
#: wait out, so ``cycles - stall_cycles`` is the registers' figure. ``magic`` is
#: :data:`STATUS_MAGIC`, which tells a written block from the zeros of a buffer the
#: kernel could not write.
STATUS_BLOCK = data.StructLayout({
    "magic": 32,
    "status": 32,        # error bits (the ``status`` register; 0: success)
    "error_at": 32,      # descriptor index and opcode of the first error
    "images_done": 32,
    "cycles": 64,
    "mac_cycles": 64,
    "skipped": 64,
    "stall_cycles": 64,
})
#: The ``magic`` word of every status block: ``"VELC"`` in ASCII.
STATUS_MAGIC = 0x564C4543

#: Streams in device memory, by name (see :meth:`KernelConfig.payload_bits`).
STREAMS = ("descriptor", "act", "weights", "requant", "mask", "x", "indices", "codebook",
           "params", "out", "counters", "status")


@dataclass(frozen=True)
class KernelConfig:
    """What ``velcro_kernel`` is built with.

    Parameters
    ----------
    conv : ConvArrayConfig
    dense : DenseConfig
        Must have ``max_k = 256`` (int8 mode; output beats then match activation
        words) and a ``width`` of at most ``data_width``.
    data_width : int
        Bits of every ``m_axi`` port: 256 or 512.
    max_burst : int
        Longest AXI burst in words.
    max_program : int
        Most descriptors before ``END`` (one counter record each).
    resident_program, resident_indices : int
        Words of the on-chip copies of the ``program`` and ``indices`` buffers
        (:mod:`velcro.hw.axi.resident`), which answer every image's reads of them after
        a run's first: 0 (no copy) or a power of two of at least ``max_burst``. Reads
        beyond the copy go to device memory for every image.
    """

    conv: ConvArrayConfig = field(default=CONV_SHIPPED)
    dense: DenseConfig = field(default=DENSE_SHIPPED)
    data_width: int = 512
    max_burst: int = 16
    max_program: int = 32
    resident_program: int = 4096
    resident_indices: int = 8192

    def __post_init__(self):
        if not isinstance(self.conv, ConvArrayConfig):
            raise TypeError(f"conv must be a ConvArrayConfig, not {self.conv!r}")
        if not isinstance(self.dense, DenseConfig):
            raise TypeError(f"dense must be a DenseConfig, not {self.dense!r}")
        if self.data_width not in (256, 512):
            raise ValueError(f"data_width must be 256 or 512, not {self.data_width!r}")
        if self.dense.max_k != 256:
            raise ValueError(f"the kernel's dense engine needs max_k = 256 (int8 layers), "
                             f"not {self.dense.max_k}")
        if self.dense.width > self.data_width:
            raise ValueError(f"dense width {self.dense.width} exceeds data_width "
                             f"{self.data_width}")
        if 8 * self.conv.lanes > self.data_width:
            raise ValueError(f"{self.conv.lanes} lanes of activations exceed data_width "
                             f"{self.data_width}")
        burst = self.max_burst
        if burst < 2 or burst & (burst - 1) or burst * self.word_bytes > 4096:
            raise ValueError(f"max_burst must be a power of two from 2 with bursts inside 4 "
                             f"KiB, not {burst!r}")
        for name in ("resident_program", "resident_indices"):
            words = getattr(self, name)
            if not isinstance(words, int) or words and (words < burst or words & (words - 1)):
                raise ValueError(f"{name} must be 0 or a power of two of at least max_burst = "
                                 f"{burst} words, not {words!r}")
        if not isinstance(self.max_program, int) or not 2 <= self.max_program <= 1 << 15:
            raise ValueError(f"max_program must be an integer from 2 to 32768, not "
                             f"{self.max_program!r}")

    @property
    def word_bytes(self) -> int:
        return self.data_width // 8

    def payload_bits(self, stream: str) -> int:
        """Payload bits of one beat of ``stream`` (one of :data:`STREAMS`)."""
        lanes = self.conv.lanes
        sizes = {
            "descriptor": 8 * DESCRIPTOR_BYTES,
            "act": activations_layout(lanes).size,
            "weights": weights_layout(lanes).size,
            "requant": REQUANT_LAYOUT.size,
            "mask": MASK_LAYOUT.size,
            "x": self.dense.width,
            "indices": self.dense.width,
            "codebook": 8 * self.dense.macs,
            "params": PARAMS.size,
            "out": 32 * self.dense.lanes,
            "counters": COUNTERS.size,
            "status": STATUS_BLOCK.size,
        }
        try:
            return sizes[stream]
        except KeyError:
            raise KeyError(f"no stream {stream!r}; streams: {', '.join(STREAMS)}") from None

    def record_bytes(self, stream: str) -> int:
        """Bytes of one record of ``stream`` in device memory."""
        return record_bytes(self.payload_bits(stream), self.word_bytes)

    def words(self, stream: str, records: int) -> int:
        """AXI words holding ``records`` records of ``stream``."""
        return words_for(records, self.payload_bits(stream), self.word_bytes)

    def flattens_channel_last(self, channels: int) -> bool:
        """Whether ``FLATTEN`` may write ``channels`` channels channel-last (``hwc``):
        whole channel groups, each beat no wider than an activation-buffer word."""
        lanes = self.conv.lanes
        return channels % lanes == 0 and 8 * lanes <= self.dense.width

    @property
    def status_bytes(self) -> int:
        """Bytes of the status block, a whole number of words: the per-descriptor
        counter records start this far into the ``counters`` buffer."""
        return self.words("status", 1) * self.word_bytes

    @property
    def vector_words(self) -> int:
        """Words of one half of the activation buffer (dense inputs and outputs)."""
        xb = self.dense.x_bytes
        return -(-max(self.dense.max_n_in, self.dense.max_n_out) // xb)

    @property
    def vector_bytes(self) -> int:
        return self.vector_words * self.dense.x_bytes

    @property
    def weight_fifo_depth(self) -> int:
        """Kernel beats held ahead of the conv array: two output channels' worth."""
        return max(2, 2 * self.conv.max_groups)

    @property
    def name(self) -> str:
        copies = f"_r{self.resident_program}_{self.resident_indices}" \
            if self.resident_program or self.resident_indices else ""
        return f"kernel_{self.conv.name}_{self.dense.name()}_d{self.data_width}{copies}" \
            .replace("-", "_")


SHIPPED = KernelConfig()
"""The kernel that goes on the card: shipped engines, 512-bit ports."""

SMALL = KernelConfig(ConvArrayConfig(lanes=8, max_height=28, max_width=28, max_channels=64),
                     DenseConfig(width=64, max_k=256, max_s=4, macs=16, max_n_in=1024,
                                 max_n_out=256), data_width=256, max_program=16,
                     resident_program=0, resident_indices=0)
"""A smaller kernel that still runs the reference CNN: half the conv lanes, a quarter
of the dense MACs, 256-bit ports and no on-chip copies of the constants (every image
reads them from device memory); what Icarus simulates in reasonable time."""

#: Kernel configurations by the name ``velcro run --kernel`` takes.
CONFIGS = {"shipped": SHIPPED, "small": SMALL}
