"""Configuration of the conv array and shapes of the layers it runs.

:class:`ConvArrayConfig` fixes what is built (lanes, the largest feature map, the
most channels); :class:`ConvLayer` describes one layer, and
:meth:`ConvLayer.check` says whether a configuration can run it. Both validate on
construction and name the offending parameter, so a bad configuration fails at
elaboration and a layer that does not fit fails before it reaches the hardware.

Geometry shared by the generator, the stream formats and the cost model lives here
too: a feature map is stored in 9 banks addressed by ``(y mod 3, x mod 3)``; a bank
row of a plane holds ``col_blocks = ceil(max_width / 3)`` words, a plane
``row_blocks * col_blocks`` words rounded up to a power of two (so that plane
selection is a bit field), and every bank holds ``2 * max_groups`` planes: two
ping-pong buffers of ``max_groups = ceil(max_channels / lanes)`` channel groups.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from amaranth.utils import ceil_log2

__all__ = ["ConvArrayConfig", "ConvConfigError", "ConvLayer", "Op", "SHIPPED"]


class ConvConfigError(ValueError):
    """A conv-array configuration or a layer shape that cannot be built or run."""


class Op(enum.IntEnum):
    """What one start of the conv array does."""

    LOAD = 0   #: write the ``ifmap`` stream into buffer ``buf``
    CONV = 1   #: convolve buffer ``buf`` into the other buffer
    DRAIN = 2  #: read buffer ``buf`` out on the ``ofmap`` stream
    POOL = 3   #: 2x2 max-pool (stride 2, floor) buffer ``buf`` into the other buffer


def _positive(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConvConfigError(f"{name} must be a positive integer, not {value!r}")
    return value


@dataclass(frozen=True)
class ConvArrayConfig:
    """What the conv array is built for.

    Parameters
    ----------
    lanes : int
        Input-channel lanes, each a 3x3 convolution instance (9 multipliers).
    max_height, max_width : int
        Largest input feature map.
    max_channels : int
        Most input or output channels of a layer (a buffer holds this many planes).
    slots : int
        Output elements of one block computed per cycle, 1 or 2. With 2, every lane
        reads a second window from a copy of the banks and multiplies both by the same
        kernel, two int8 products per DSP48E2 (:class:`~velcro.hw.conv.lane.ConvLane`).
    """

    lanes: int = 16
    max_height: int = 64
    max_width: int = 64
    max_channels: int = 64
    slots: int = 2

    def __post_init__(self):
        for name in ("lanes", "max_height", "max_width", "max_channels"):
            _positive(name, getattr(self, name))
        if not isinstance(self.slots, int) or isinstance(self.slots, bool) or \
                self.slots not in (1, 2):
            raise ConvConfigError(f"slots must be 1 or 2, not {self.slots!r}")

    @property
    def max_groups(self) -> int:
        """Channel groups of ``lanes`` channels in the largest tensor."""
        return -(-self.max_channels // self.lanes)

    @property
    def row_blocks(self) -> int:
        """Rows of a plane in one bank: ``ceil(max_height / 3)``."""
        return -(-self.max_height // 3)

    @property
    def col_blocks(self) -> int:
        """Words per plane row in one bank: ``ceil(max_width / 3)``."""
        return -(-self.max_width // 3)

    @property
    def plane_bits(self) -> int:
        """Address bits of one plane within a bank."""
        return ceil_log2(self.row_blocks * self.col_blocks)

    @property
    def planes(self) -> int:
        """Planes per bank: two buffers of ``max_groups`` groups."""
        return 2 * self.max_groups

    @property
    def bank_depth(self) -> int:
        """Words of one bank (each word holds one int8 per lane)."""
        return self.planes << self.plane_bits

    @property
    def multipliers(self) -> int:
        """int8 products of the MAC array per cycle (``9 * lanes * slots``)."""
        return 9 * self.lanes * self.slots

    @property
    def name(self) -> str:
        """Short identifier, used for build folders and Verilog module names."""
        return (f"l{self.lanes}_h{self.max_height}_w{self.max_width}"
                f"_c{self.max_channels}_s{self.slots}")


SHIPPED = ConvArrayConfig()
"""The configuration that goes on the card: 16 lanes, 64x64, up to 64 channels, two
output elements per cycle."""


@dataclass(frozen=True)
class ConvLayer:
    """Shape of one conv3x3 layer (padding 1) as the conv array runs it.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    height, width : int
        Input feature map.
    stride : int
        1 or 2.
    relu : bool
        Clamp the output to ``[0, 127]`` (else ``[-128, 127]``).
    """

    c_in: int
    c_out: int
    height: int
    width: int
    stride: int = 1
    relu: bool = True

    def __post_init__(self):
        for name in ("c_in", "c_out", "height", "width"):
            _positive(name, getattr(self, name))
        if self.stride not in (1, 2) or isinstance(self.stride, bool):
            raise ConvConfigError(f"stride must be 1 or 2, not {self.stride!r}")

    @property
    def out_height(self) -> int:
        return (self.height - 1) // self.stride + 1

    @property
    def out_width(self) -> int:
        return (self.width - 1) // self.stride + 1

    def groups(self, config: ConvArrayConfig) -> int:
        """Cycles one output element (or pair of them) takes: ``ceil(c_in / lanes)``."""
        return -(-self.c_in // config.lanes)

    def macs(self) -> int:
        """Multiply-accumulates of the layer without skipping."""
        return self.c_in * self.c_out * self.out_height * self.out_width * 9

    def check(self, config: ConvArrayConfig) -> ConvLayer:
        """Return ``self`` if ``config`` can run it, else raise naming the parameter."""
        limits = (("c_in", "max_channels"), ("c_out", "max_channels"),
                  ("height", "max_height"), ("width", "max_width"))
        for name, limit in limits:
            if getattr(self, name) > getattr(config, limit):
                raise ConvConfigError(f"{name} {getattr(self, name)} exceeds the conv array's "
                                      f"{limit} {getattr(config, limit)}")
        return self
