"""A multi-channel AXI4 read DMA: several word streams served by one manager port.

Each channel takes commands (a byte address and a number of data-width words) and
delivers the words in order on its own stream through its own FIFO. One AXI4 read
port serves all channels:

* a channel asks for a burst when its FIFO has room for all of it, counting the
  words already requested (so read data is never refused and ``rready`` never waits
  on a consumer), from the cycle after it takes a command; bursts end on multiples
  of ``max_burst`` words, which also keeps them inside a 4 KiB page;
* requests from ready channels are granted in round-robin order, one address per
  cycle at most, and up to ``max_outstanding`` bursts are in flight;
* all bursts carry one ID, so data returns in request order, and a FIFO of channel
  numbers says where each burst goes.

A response other than ``OKAY`` sets ``error`` (sticky until ``clear``); the data is
delivered anyway and the sequencer decides. ``flush`` ends every transfer: no new
request is made, commands are dropped, the FIFOs are emptied, the data of bursts
already requested is read and discarded, and ``idle`` rises once none is left in
flight; the port is then clean for the next run.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, ResetInserter, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from .bus import axi4_read_signature, burst_words, drive_fixed

__all__ = ["COMMAND", "BlockRamFifo", "ReadDma"]

#: A transfer: byte address (a multiple of the word size) and words to read.
COMMAND = data.StructLayout({"addr": 64, "words": 32})


class BlockRamFifo(fifo.SyncFIFOBuffered):
    """:class:`~amaranth.lib.fifo.SyncFIFOBuffered` whose storage asks for block RAM
    (``ram_style = "block"``, which ``synth_xilinx`` and Vivado honour).

    Its storage has a synchronous read port, so block RAM behaves alike; left to
    themselves, the tools put a FIFO of a few dozen wide words in distributed RAM,
    about 8 LUTs per 14 bits of 32 words.
    """

    def elaborate(self, platform):
        m = super().elaborate(platform)
        if self.depth > 1:
            m.submodules.storage.attrs["ram_style"] = "block"
        return m


class ReadDma(wiring.Component):
    """AXI4 reads on behalf of named channels.

    Parameters
    ----------
    data_width : int
        AXI data width (bits per word).
    channels : dict of str to int
        Channel name -> FIFO depth in words (at least ``max_burst``).
    max_burst : int
        Longest burst in words (a power of two; ``max_burst * data_width / 8`` must not
        exceed 4096).
    max_outstanding : int
        Bursts in flight at most.
    block_ram : collection of str
        Channels whose FIFO is kept in block RAM (:class:`BlockRamFifo`).

    Attributes
    ----------
    axi : Out(axi4_read_signature)
    <name>_cmd : In(stream of COMMAND), per channel
        Taken when the channel has requested all of its previous command.
    <name> : Out(stream of data_width), per channel
    flush : In(1)
    idle : Out(1)
        No request pending or in flight.
    error : Out(1)
    clear : In(1)
        Clear ``error``.
    """

    def __init__(self, *, data_width: int, channels: dict[str, int], max_burst: int = 16,
                 max_outstanding: int = 4, block_ram=()):
        if not channels:
            raise ValueError("channels must name at least one channel")
        exact_log2(max_burst)
        if max_burst * data_width // 8 > 4096:
            raise ValueError(f"bursts of {max_burst} words of {data_width} bits cross 4 KiB "
                             "pages")
        for name, depth in channels.items():
            if not isinstance(depth, int) or depth < max_burst:
                raise ValueError(f"channel {name!r}: FIFO depth must be at least max_burst = "
                                 f"{max_burst} words, not {depth!r}")
        unknown = set(block_ram) - set(channels)
        if unknown:
            raise ValueError(f"block_ram names no channel: {', '.join(sorted(unknown))}")
        self.data_width = data_width
        self.channels = dict(channels)
        self.block_ram = frozenset(block_ram)
        self.max_burst = max_burst
        self.max_outstanding = max_outstanding
        members = {"axi": Out(axi4_read_signature(data_width=data_width)),
                   "flush": In(1), "idle": Out(1), "error": Out(1), "clear": In(1)}
        for name in channels:
            members[f"{name}_cmd"] = In(stream.Signature(COMMAND))
            members[name] = Out(stream.Signature(data_width))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        names = list(self.channels)
        n = len(names)
        word_bytes = self.data_width // 8
        word_shift = exact_log2(word_bytes)
        drive_fixed(m, axi)
        m.d.comb += axi.arsize.eq(word_shift)

        # --- the request register (AXI: stable until accepted) ------------------------
        pending = Signal()
        ar_chan = Signal(range(n))
        ar_addr = Signal(64)
        ar_len = Signal(8)
        m.d.comb += [axi.arvalid.eq(pending), axi.araddr.eq(ar_addr), axi.arlen.eq(ar_len)]
        m.submodules.tags = tags = fifo.SyncFIFO(width=max(1, ceil_log2(n)),
                                                 depth=self.max_outstanding)
        accepted = pending & axi.arready
        m.d.comb += [tags.w_en.eq(accepted), tags.w_data.eq(ar_chan)]
        with m.If(accepted):
            m.d.sync += pending.eq(0)

        # --- channels -----------------------------------------------------------------------
        can, length, issue, addrs = [], [], [], []
        rr = Signal(range(n))
        for index, name in enumerate(names):
            depth = self.channels[name]
            cmd, out = getattr(self, f"{name}_cmd"), getattr(self, name)
            kind = BlockRamFifo if name in self.block_ram else fifo.SyncFIFOBuffered
            buf = ResetInserter(self.flush)(kind(width=self.data_width, depth=depth))
            m.submodules[f"fifo_{name}"] = buf
            remaining = Signal(32, name=f"remaining_{name}")
            more = Signal(name=f"more_{name}")          # remaining != 0, registered
            addr = Signal(64, name=f"addr_{name}")
            space = Signal(range(depth + 1), init=depth, name=f"space_{name}")
            m.d.comb += cmd.ready.eq(~more & ~self.flush)
            # This channel's next burst (burst_words), registered beside ``remaining`` and
            # ``addr``.
            def burst_of(words, address):
                return burst_words(words, address, max_burst=self.max_burst,
                                   word_bytes=word_bytes)

            burst = Signal(range(self.max_burst + 1), name=f"burst_{name}")
            # Room in the FIFO for the next burst, registered. It lags the channel by one
            # cycle, which never lets a burst overflow: after a grant no request is made
            # for a cycle (the request register is full), space only grows otherwise, and
            # the cycle after a command (``fresh``) makes no request.
            room = Signal(init=1, name=f"room_{name}")
            fresh = Signal(name=f"fresh_{name}")
            m.d.sync += [room.eq(space >= burst), fresh.eq(cmd.valid & cmd.ready)]
            ready = Signal(name=f"can_{name}")
            m.d.comb += ready.eq(more & room & ~fresh & ~self.flush)
            grant = Signal(name=f"grant_{name}")
            can.append(ready)
            length.append(burst)
            issue.append(grant)
            addrs.append(addr)

            pop = out.valid & out.ready
            m.d.comb += [out.valid.eq(buf.r_rdy), out.payload.eq(buf.r_data),
                         buf.r_en.eq(out.ready)]
            with m.If(self.flush):
                m.d.sync += [remaining.eq(0), more.eq(0), burst.eq(0), space.eq(depth)]
            with m.Elif(cmd.valid & cmd.ready):
                m.d.sync += [remaining.eq(cmd.payload.words), more.eq(cmd.payload.words != 0),
                             addr.eq(cmd.payload.addr),
                             burst.eq(burst_of(cmd.payload.words, cmd.payload.addr))]
            with m.Elif(grant):
                m.d.sync += [remaining.eq(remaining - burst), more.eq(remaining != burst),
                             burst.eq(burst_of(remaining - burst,
                                               addr + (burst << word_shift))),
                             addr.eq(addr + (burst << word_shift))]
            with m.If(~self.flush):
                m.d.sync += space.eq(space - Mux(grant, burst, 0) + pop)

            # Read data for this channel (FIFO room was reserved by the request).
            beat = axi.rvalid & axi.rready & (tags.r_data == index)
            m.d.comb += [buf.w_en.eq(beat & ~self.flush), buf.w_data.eq(axi.rdata)]

        # --- round-robin grant of one request per cycle -------------------------------------
        # Channel i is granted if it can request and no channel after rr (cyclically)
        # and before i can: one flat condition per channel. The request registers take
        # the granted channel's address and length through a mux on its number.
        free = ~pending & tags.w_rdy & ~self.flush
        for index in range(n):
            turns = []
            for start in range(n):
                before = [(start + k) % n for k in range((index - start) % n)]
                turns.append((rr == start) & ~Cat(can[k] for k in before).any()
                             if before else (rr == start))
            m.d.comb += issue[index].eq(free & can[index] & Cat(*turns).any())
        chosen = Signal(range(n))
        m.d.comb += chosen.eq(Cat(Cat(issue[i] for i in range(n) if i >> b & 1).any()
                                  for b in range(len(chosen))))
        granted = Signal()
        m.d.comb += granted.eq(Cat(*issue).any())
        with m.If(granted):
            m.d.sync += [pending.eq(1), ar_chan.eq(chosen), ar_addr.eq(Array(addrs)[chosen]),
                         ar_len.eq(Array(length)[chosen] - 1),
                         rr.eq(Mux(chosen == n - 1, 0, chosen + 1))]

        # --- read data --------------------------------------------------------------------
        m.d.comb += [axi.rready.eq(tags.r_rdy),
                     tags.r_en.eq(axi.rvalid & axi.rready & axi.rlast)]
        with m.If(self.clear):
            m.d.sync += self.error.eq(0)
        with m.If(axi.rvalid & axi.rready & (axi.rresp != 0)):
            m.d.sync += self.error.eq(1)
        m.d.comb += self.idle.eq(~pending & ~tags.r_rdy)
        return m
