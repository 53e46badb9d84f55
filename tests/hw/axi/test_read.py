# amaranth: UnusedElaboratable=no
"""The read DMA's FIFOs (velcro.hw.axi.read): which memory they ask for, and that the
block-RAM FIFO behaves as Amaranth's buffered FIFO."""

import random
import re

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import fifo
from amaranth.sim import Simulator

from velcro.hw.axi.read import BlockRamFifo, ReadDma
from velcro.hw.axi.resident import ResidentReads


def _styles(component, ports) -> list[str]:
    """The ``ram_style`` attributes in the Verilog of ``component``."""
    return re.findall(r'ram_style\s*=\s*"(\w+)"', verilog.convert(component, ports=ports))


def test_block_ram_fifo_passes_the_same_words_in_the_same_cycles_as_the_buffered_fifo():
    m = Module()
    m.submodules.ref = ref = fifo.SyncFIFOBuffered(width=16, depth=8)
    m.submodules.dut = dut = BlockRamFifo(width=16, depth=8)
    rng = random.Random(3)
    seen = {"ref": [], "dut": []}

    async def bench(ctx):
        for cycle in range(600):
            push, pop, word = rng.random() < 0.6, rng.random() < 0.5, rng.randrange(1 << 16)
            for f in (ref, dut):
                ctx.set(f.w_en, push)
                ctx.set(f.w_data, word)
                ctx.set(f.r_en, pop)
            assert ctx.get(dut.w_rdy) == ctx.get(ref.w_rdy)
            assert ctx.get(dut.r_rdy) == ctx.get(ref.r_rdy)
            assert ctx.get(dut.level) == ctx.get(ref.level)
            for name, f in (("ref", ref), ("dut", dut)):
                if pop and ctx.get(f.r_rdy):
                    seen[name].append((cycle, ctx.get(f.r_data)))
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(seen["dut"]) > 200 and seen["dut"] == seen["ref"]


def test_the_dma_asks_for_block_ram_for_the_channels_it_is_told():
    def dma(block_ram):
        return ReadDma(data_width=64, channels={"a": 16, "b": 32}, max_burst=4,
                       block_ram=block_ram)

    plain, one = dma(()), dma(("b",))
    assert "block" not in _styles(plain, [plain.flush])
    assert _styles(one, [one.flush]).count("block") == 1
    with pytest.raises(ValueError, match="block_ram names no channel: c"):
        dma(("a", "c"))


@pytest.mark.parametrize("style", ["ultra", "block"])
def test_the_constant_copy_asks_for_the_memory_it_is_given(style):
    copy = ResidentReads(data_width=64, words=32, ram_style=style)
    assert _styles(copy, [copy.hold]) == [style]


def test_the_constant_copy_refuses_another_memory():
    with pytest.raises(ValueError, match="ram_style must be 'ultra' or 'block', not 'lut'"):
        ResidentReads(data_width=64, words=32, ram_style="lut")
