"""Parameters and layer descriptions of the dense engine.

:class:`DenseConfig` holds the elaboration parameters of
:class:`~velcro.hw.dense.engine.DenseEngine` and validates them; :class:`DenseLayer` is one
layer as the engine sees it at run time (its cost is in :mod:`velcro.hw.dense.cost`).
This module needs neither Amaranth nor a simulator, so host code can size a layer
without the hardware generator.
"""

from __future__ import annotations

from dataclasses import dataclass


def _is_pow2(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        and value & (value - 1) == 0


def _log2(value: int) -> int:
    return value.bit_length() - 1


@dataclass(frozen=True)
class DenseConfig:
    """Elaboration parameters of the dense engine; the defaults are the shipped configuration.

    The shipped engine reads a 128-bit index stream, 16 lookups per cycle, and builds
    tables with 64 multipliers, which in int8 mode are 64 MACs fed by a 512-bit beat
    of weights per cycle. A layer with k = 256 stays at the index-bandwidth
    bound while table building (``k / 64 * s`` cycles per segment) keeps up with the
    lookups (``n_out / 16``), i.e. ``k * s <= 4 * n_out``: the 1024 x 256, k = 256,
    s = 4 layer takes 16 cycles per segment for both. Smaller k are lane-bound at
    ``log2(256) / log2(k)`` times their (smaller) bound; an engine built with
    ``max_k = k`` has ``width / log2(k)`` lanes and reaches it.

    Parameters
    ----------
    width : int
        Bits per beat of the index stream and of the activation stream (the AXI data
        width); a power of two, at least 64.
    max_k : int
        Largest codebook size; a power of two from 2 to 256 whose log2 (the widest
        index) divides ``width``, i.e. 2, 4, 16 or 256. The int8 mode needs 256.
    max_s : int
        Longest segment (codeword length), 1 to 8.
    macs : int
        Multipliers building the per-segment table (the MACs of the int8 mode); a
        power of two, at most ``max_k``, and at least :attr:`lanes` when ``max_k`` is
        256. The codebook stream carries ``macs`` int8 values per beat.
    max_n_in : int
        Most inputs of a layer; a multiple of ``width // 8``.
    max_n_out : int
        Most outputs of a layer; a multiple of :attr:`lanes`.

    Raises
    ------
    ValueError
        Naming the parameter that is out of range.
    """

    width: int = 128
    max_k: int = 256
    max_s: int = 8
    macs: int = 64
    max_n_in: int = 4096
    max_n_out: int = 1024

    def __post_init__(self):
        if not _is_pow2(self.width) or self.width < 64:
            raise ValueError(f"width must be a power of two of at least 64, not {self.width!r}")
        if not _is_pow2(self.max_k) or not 2 <= self.max_k <= 256:
            raise ValueError(f"max_k must be a power of two from 2 to 256, not {self.max_k!r}")
        if self.width % _log2(self.max_k):
            raise ValueError(f"max_k must be 2, 4, 16 or 256 so that its {_log2(self.max_k)}-bit "
                             f"indices tile the {self.width}-bit stream, not {self.max_k!r}")
        if not isinstance(self.max_s, int) or not 1 <= self.max_s <= 8:
            raise ValueError(f"max_s must be an integer from 1 to 8, not {self.max_s!r}")
        if not _is_pow2(self.macs) or self.macs > self.max_k:
            raise ValueError(f"macs must be a power of two of at most max_k = {self.max_k}, "
                             f"not {self.macs!r}")
        if self.int8 and self.macs < self.lanes:
            raise ValueError(f"macs must be at least lanes = {self.lanes} when max_k = 256 "
                             f"(int8 mode drains a block of macs outputs in whole rows), "
                             f"not {self.macs!r}")
        if not isinstance(self.max_n_in, int) or self.max_n_in <= 0 \
                or self.max_n_in % (self.width // 8):
            raise ValueError(f"max_n_in must be a positive multiple of width // 8 = "
                             f"{self.width // 8}, not {self.max_n_in!r}")
        if not isinstance(self.max_n_out, int) or self.max_n_out <= 0 \
                or self.max_n_out % self.lanes:
            raise ValueError(f"max_n_out must be a positive multiple of lanes = {self.lanes}, "
                             f"not {self.max_n_out!r}")

    @property
    def index_bits(self) -> int:
        """Bits of the widest index, ``log2(max_k)``."""
        return _log2(self.max_k)

    @property
    def lanes(self) -> int:
        """Lookups per cycle: as many of the widest indices as one beat holds."""
        return self.width // self.index_bits

    @property
    def int8(self) -> bool:
        """Whether the engine has the int8 mode: engines built for ``max_k = 256``,
        the ones that serve int8 networks."""
        return self.max_k == 256

    @property
    def lut_bits(self) -> int:
        """Width of a table entry: the largest ``|<x_j, c>|`` is ``max_s * 128 * 128``."""
        return (self.max_s * 128 * 128).bit_length() + 1

    @property
    def x_bytes(self) -> int:
        """Activations per beat of the activation stream."""
        return self.width // 8

    @property
    def max_groups(self) -> int:
        """Rows of the accumulator memory: groups of :attr:`lanes` outputs."""
        return self.max_n_out // self.lanes

    @property
    def max_index_beats(self) -> int:
        """Most index-stream beats of one layer (every run padded to a byte)."""
        run_bytes = -(-self.max_n_out * self.index_bits // 8)
        return -(-self.max_n_in * run_bytes // self.x_bytes)

    def name(self) -> str:
        """A short name of the configuration, for build folders and reports."""
        return (f"dense-w{self.width}-k{self.max_k}-s{self.max_s}-m{self.macs}"
                f"-i{self.max_n_in}-o{self.max_n_out}")


@dataclass(frozen=True)
class DenseLayer:
    """One dense layer as the engine runs it.

    Parameters
    ----------
    n_in, n_out : int
        Inputs and outputs.
    k : int
        Codebook size (a power of two from 2); 256 in int8 mode.
    s : int
        Segment length (1 for scalar k-means and in int8 mode); divides ``n_in``.
    mode : str
        ``"codebook"`` (indices into per-segment tables) or ``"int8"`` (int8 weights).
    relu : bool
        Clamp requantized outputs at 0.
    logits : bool
        Emit the int32 accumulators (plus bias) instead of requantized int8.
    """

    n_in: int
    n_out: int
    k: int = 256
    s: int = 1
    mode: str = "codebook"
    relu: bool = True
    logits: bool = False

    def __post_init__(self):
        if self.mode not in ("codebook", "int8"):
            raise ValueError(f"mode must be 'codebook' or 'int8', not {self.mode!r}")
        if self.mode == "int8" and (self.k, self.s) != (256, 1):
            raise ValueError(f"int8 mode streams weights as 8-bit indices: k must be 256 and "
                             f"s 1, not k={self.k!r}, s={self.s!r}")
        if not _is_pow2(self.k) or self.k < 2:
            raise ValueError(f"k must be a power of two of at least 2, not {self.k!r}")
        if not isinstance(self.s, int) or self.s < 1:
            raise ValueError(f"s must be a positive integer, not {self.s!r}")
        for name in ("n_in", "n_out"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.n_in % self.s:
            raise ValueError(f"s = {self.s} must divide n_in = {self.n_in}")

    @property
    def index_bits(self) -> int:
        """Bits per packed index, ``log2(k)``."""
        return _log2(self.k)

    @property
    def n_seg(self) -> int:
        """Segments (one table each): ``n_in / s``."""
        return self.n_in // self.s

    def check(self, config: DenseConfig) -> DenseLayer:
        """Return ``self`` if ``config`` can run it, else raise :class:`ValueError`."""
        if self.mode == "int8" and not config.int8:
            raise ValueError(f"int8 mode needs max_k = 256, not {config.max_k}")
        if self.n_in > config.max_n_in:
            raise ValueError(f"n_in = {self.n_in} exceeds max_n_in = {config.max_n_in}")
        if self.n_out > config.max_n_out:
            raise ValueError(f"n_out = {self.n_out} exceeds max_n_out = {config.max_n_out}")
        if self.k > config.max_k:
            raise ValueError(f"k = {self.k} exceeds max_k = {config.max_k}")
        if self.s > config.max_s:
            raise ValueError(f"s = {self.s} exceeds max_s = {config.max_s}")
        return self


#: The shipped configuration.
SHIPPED = DenseConfig()
