"""Cost model of the dense engine: stream beats and cycles of a layer, from its shape alone.

:func:`expected_cycles` is exact when every input stream offers a beat each cycle and
the output is always ready; :func:`index_bound` is the index-bandwidth lower bound the
engine is measured against; :func:`stream_beats` sizes the transfers of a layer. Like
:mod:`velcro.hw.conv.cost`, this needs neither Amaranth nor a simulator.
"""

from __future__ import annotations

from .config import DenseConfig, DenseLayer

__all__ = ["DRAIN_LATENCY", "expected_cycles", "index_bound", "stream_beats"]

#: Cycles from a row read of the accumulators to its output beat being offered: the
#: read, the bias add and :attr:`velcro.hw.requant.Requantizer.LATENCY` (partial
#: products, rounding sum, shift and clamp).
DRAIN_LATENCY = 5


def int8_blocks(layer: DenseLayer, config: DenseConfig) -> int:
    """Blocks of ``macs`` outputs of an int8 layer (one pass over the input each)."""
    return -(-layer.n_out // config.macs)


def stream_beats(layer: DenseLayer, config: DenseConfig) -> dict[str, int]:
    """Beats each input stream carries for ``layer`` and beats of the output stream.

    In int8 mode the weights travel on the ``codebook`` stream, ``macs`` per beat, and
    there are no indices.
    """
    layer.check(config)
    x = -(-layer.n_in // config.x_bytes)
    if layer.mode == "int8":
        return {"x": x, "indices": 0, "codebook": layer.n_in * int8_blocks(layer, config),
                "params": layer.n_out, "out": -(-layer.n_out // config.lanes)}
    run_bytes = -(-layer.n_out * layer.index_bits // 8)
    blocks = max(1, layer.k // config.macs)
    return {
        "x": x,
        "indices": -(-layer.n_seg * run_bytes // config.x_bytes),
        "codebook": layer.n_seg * blocks * layer.s,
        "params": layer.n_out,
        "out": -(-layer.n_out // config.lanes),
    }


def index_bound(layer: DenseLayer, config: DenseConfig) -> float:
    """The index-bandwidth bound: total index bits / stream bits per cycle.

    No engine fed by a ``width``-bit index stream can finish in fewer cycles. In int8
    mode the bound is that of the weights, ``macs`` bytes per cycle on the codebook
    stream.
    """
    layer.check(config)
    if layer.mode == "int8":
        return layer.n_in * layer.n_out / config.macs
    return layer.n_seg * layer.n_out * layer.index_bits / config.width


def expected_cycles(layer: DenseLayer, config: DenseConfig) -> int:
    """Cycles from accepting the layer's command to its last output beat, both included.

    Exact when every input stream offers a beat each cycle and the output is always
    ready. The engine overlaps two pipelines per segment ``j`` (``n_in / s`` of them)
    through a double-buffered table:

    - the *table builder* spends ``a = max(1, k / macs) * s`` cycles per segment
      (one codebook beat each) and its result is readable 3 cycles after its last
      beat; it writes the first block of segment ``j`` only once the lookups of
      segment ``j - 2`` have released that table, stalling until then;
    - the *lookups* spend ``G = ceil(n_out / lanes)`` cycles per segment, one group of
      ``lanes`` indices per cycle, and release the table the cycle after their last.

    Then the ``G`` accumulator rows drain through bias, requantization and the output
    register, one per cycle, after all parameters have arrived.

    In int8 mode the builder's units issue one input per cycle once the activations
    are stored, ``n_in`` per block of ``macs`` outputs, and write a block's sums 2
    cycles after its last input, into a register whose ``macs / lanes`` rows drain
    one per cycle from the next cycle on (after all parameters); a block's write
    waits for the previous block's last row.
    """
    layer.check(config)
    if layer.mode == "int8":
        return _int8_cycles(layer, config)
    s, n_seg = layer.s, layer.n_seg
    a = max(1, layer.k // config.macs) * s
    groups = -(-layer.n_out // config.lanes)
    # Cycle 0 accepts the command, cycle 1 starts the loaders, cycle 2 takes the first
    # beat of each stream, cycle 3 sees the first activations stored.
    issue = 3
    free = [0, 0]               # first cycle at which each table may be overwritten
    lookups = 4                 # earliest cycle the first index group is registered
    start = 0
    for j in range(n_seg):
        bank = j % 2
        # The first block's write happens 2 cycles after its last beat issues.
        issue += max(0, free[bank] - (issue + s + 1))
        ready = issue + a + 2
        start = max(ready, lookups)
        free[bank] = start + groups
        lookups = start + groups
        issue += a
    final = start + groups - 1
    params_ready = layer.n_out + 2
    drain = max(final + 1, params_ready)
    return drain + groups + DRAIN_LATENCY


def _int8_cycles(layer: DenseLayer, config: DenseConfig) -> int:
    groups = -(-layer.n_out // config.lanes)
    rows_per_block = config.macs // config.lanes
    x_rows = -(-layer.n_in // config.x_bytes)
    params_ready = layer.n_out + 2
    # Cycle 2 stores the first activation row; the first input issues once all are in.
    write = 2 + x_rows + layer.n_in + 1     # the first block's sums written
    free = 0                                # first cycle the register may be rewritten
    drawn = 0                               # rows drained so far
    last_draw = 0
    for _ in range(int8_blocks(layer, config)):
        write = max(write, free)
        rows = min(rows_per_block, groups - drawn)
        first = max(write + 1, params_ready, last_draw + 1)
        last_draw = first + rows - 1
        drawn += rows
        free = last_draw + 1
        write += layer.n_in
    return last_draw + 1 + DRAIN_LATENCY
