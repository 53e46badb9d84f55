# amaranth: UnusedElaboratable=no
"""The control registers (velcro.hw.kernel.csr) over AXI4-Lite: ap_ctrl_hs, interrupts and
arguments."""

from velcro.hw.kernel.csr import ControlRegisters
from velcro.hw.kernel.regmap import REGMAP


class Lite:
    """AXI4-Lite manager transactions in a testbench."""

    def __init__(self, ctx, bus):
        self.ctx, self.bus = ctx, bus

    async def write(self, address, data, strobe=0xF):
        ctx, bus = self.ctx, self.bus
        ctx.set(bus.awaddr, address)
        ctx.set(bus.wdata, data)
        ctx.set(bus.wstrb, strobe)
        ctx.set(bus.awvalid, 1)
        ctx.set(bus.wvalid, 1)
        ctx.set(bus.bready, 1)
        while not ctx.get(bus.awready):
            await ctx.tick()
        await ctx.tick()
        ctx.set(bus.awvalid, 0)
        ctx.set(bus.wvalid, 0)
        while not ctx.get(bus.bvalid):
            await ctx.tick()
        assert ctx.get(bus.bresp) == 0
        await ctx.tick()

    async def read(self, address):
        ctx, bus = self.ctx, self.bus
        ctx.set(bus.araddr, address)
        ctx.set(bus.arvalid, 1)
        ctx.set(bus.rready, 1)
        while not ctx.get(bus.arready):
            await ctx.tick()
        await ctx.tick()
        ctx.set(bus.arvalid, 0)
        while not ctx.get(bus.rvalid):
            await ctx.tick()
        value = ctx.get(bus.rdata)
        await ctx.tick()
        return value


CTRL = REGMAP["CTRL"]


BIT = {f.name: f.mask for f in CTRL.fields}


def test_control_block_follows_ap_ctrl_hs(simulate):
    dut = ControlRegisters()

    async def bench(ctx):
        lite = Lite(ctx, dut.bus)
        ctx.set(dut.ap_idle, 1)
        assert await lite.read(CTRL.offset) == BIT["AP_IDLE"]
        await lite.write(CTRL.offset, BIT["AP_START"])
        assert ctx.get(dut.ap_start)
        ctx.set(dut.ap_idle, 0)
        # The kernel runs; AP_START stays up until the kernel is ready.
        assert await lite.read(CTRL.offset) == BIT["AP_START"]
        ctx.set(dut.ap_done, 1)
        ctx.set(dut.ap_ready, 1)
        await ctx.tick()
        ctx.set(dut.ap_done, 0)
        ctx.set(dut.ap_ready, 0)
        ctx.set(dut.ap_idle, 1)
        assert not ctx.get(dut.ap_start)
        # Done and ready read once, then clear.
        assert await lite.read(CTRL.offset) == BIT["AP_DONE"] | BIT["AP_READY"] | BIT["AP_IDLE"]
        assert await lite.read(CTRL.offset) == BIT["AP_IDLE"]
        # With AUTO_RESTART the kernel is started again when ready.
        await lite.write(CTRL.offset, BIT["AP_START"] | BIT["AUTO_RESTART"])
        ctx.set(dut.ap_ready, 1)
        await ctx.tick()
        ctx.set(dut.ap_ready, 0)
        assert ctx.get(dut.ap_start)
        await lite.write(CTRL.offset, 0)
        ctx.set(dut.ap_ready, 1)
        await ctx.tick()
        assert not ctx.get(dut.ap_start)

    simulate(dut, bench)


def test_interrupt_needs_both_enables_and_clears_by_toggle(simulate):
    dut = ControlRegisters()
    isr, ier, gie = REGMAP["ISR"], REGMAP["IER"], REGMAP["GIE"]
    done = ier.field_named("DONE").mask

    async def pulse_done(ctx):
        ctx.set(dut.ap_done, 1)
        await ctx.tick()
        ctx.set(dut.ap_done, 0)

    async def bench(ctx):
        lite = Lite(ctx, dut.bus)
        await pulse_done(ctx)
        assert await lite.read(isr.offset) == 0 and not ctx.get(dut.interrupt)
        await lite.write(ier.offset, done)
        await pulse_done(ctx)
        assert await lite.read(isr.offset) == done
        assert not ctx.get(dut.interrupt)
        await lite.write(gie.offset, 1)
        assert ctx.get(dut.interrupt)
        await lite.write(isr.offset, done)
        assert await lite.read(isr.offset) == 0 and not ctx.get(dut.interrupt)

    simulate(dut, bench)


def test_arguments_take_byte_strobes_and_status_reads_back(simulate):
    dut = ControlRegisters()
    program, images, cycles = REGMAP["program"], REGMAP["images"], REGMAP["cycles"]

    async def bench(ctx):
        lite = Lite(ctx, dut.bus)
        await lite.write(program.words[0], 0x89ABCDEF)
        await lite.write(program.words[1], 0x01234567)
        await lite.write(program.words[1], 0xFF00FF00, strobe=0b1010)
        assert ctx.get(dut.args.program) == 0xFF23FF67_89ABCDEF
        await lite.write(images.offset, 100)
        assert ctx.get(dut.args.images) == 100
        assert await lite.read(program.words[1]) == 0xFF23FF67
        ctx.set(dut.status.cycles, 0x5_0000_0007)
        assert [await lite.read(o) for o in cycles.words] == [7, 5]
        # Status registers ignore writes; unmapped words read zero.
        await lite.write(cycles.offset, 0)
        assert await lite.read(cycles.offset) == 7
        assert await lite.read(0xFFC) == 0

    simulate(dut, bench)

