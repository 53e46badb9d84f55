"""The ``s_axi_control`` register bank: AXI4-Lite, ``ap_ctrl_hs`` block and kernel arguments.

Generated from a :class:`~velcro.hw.kernel.regmap.RegisterMap`: every argument becomes a
field of the ``args`` member (read/write, byte strobes honoured), every status
register a field of the ``status`` member (read-only), and the control block at
``0x00``-``0x0C`` behaves as the register map describes it. Nothing here knows an
offset that the map does not give.

The bus side takes a write when address and data are both valid (a subordinate may
wait for both), answers ``OKAY`` to every access (unmapped words read as zero and
ignore writes), and holds each response until it is taken.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..axi.bus import axi4_lite_signature
from .regmap import REGMAP, RegisterMap

__all__ = ["ControlRegisters", "register_layout"]


def register_layout(registers) -> data.StructLayout:
    """One field per register, named and sized as the register."""
    return data.StructLayout({r.name: r.width for r in registers})


class ControlRegisters(wiring.Component):
    """AXI4-Lite register bank of the kernel.

    Parameters
    ----------
    regmap : RegisterMap

    Attributes
    ----------
    bus : In(axi4_lite_signature)
        ``s_axi_control``.
    ap_start : Out(1)
        The host asked for a run (level; held until ``ap_ready``).
    ap_done, ap_ready : In(1)
        One-cycle pulses from the kernel at the end of a run.
    ap_idle : In(1)
        No run in progress.
    interrupt : Out(1)
    args : Out(struct of the arguments)
    status : In(struct of the status registers)
    """

    def __init__(self, regmap: RegisterMap = REGMAP):
        if not isinstance(regmap, RegisterMap):
            raise TypeError(f"regmap must be a RegisterMap, not {regmap!r}")
        self.regmap = regmap
        super().__init__({
            "bus": In(axi4_lite_signature(addr_width=regmap.addr_bits)),
            "ap_start": Out(1),
            "ap_done": In(1),
            "ap_ready": In(1),
            "ap_idle": In(1),
            "interrupt": Out(1),
            "args": Out(register_layout(regmap.arguments)),
            "status": In(register_layout(regmap.status)),
        })

    def elaborate(self, platform):
        m = Module()
        rm, bus = self.regmap, self.bus
        ctrl, ier, isr = rm["CTRL"], rm["IER"], rm["ISR"]
        bit = {name: ctrl.field_named(name).bit
               for name in ("AP_START", "AP_DONE", "AP_IDLE", "AP_READY", "AUTO_RESTART")}

        ap_start = Signal()
        auto_restart = Signal()
        done = Signal()
        ready = Signal()
        gie = Signal()
        ier_bits = Signal(2)
        isr_bits = Signal(2)
        isr_done, isr_ready = ier.field_named("DONE").bit, ier.field_named("READY").bit

        # --- write channel --------------------------------------------------------------
        bvalid = Signal()
        take_write = Signal()
        m.d.comb += [
            take_write.eq(bus.awvalid & bus.wvalid & ~bvalid),
            bus.awready.eq(take_write), bus.wready.eq(take_write),
            bus.bvalid.eq(bvalid), bus.bresp.eq(0),
        ]
        with m.If(take_write):
            m.d.sync += bvalid.eq(1)
        with m.Elif(bus.bready):
            m.d.sync += bvalid.eq(0)
        wword = bus.awaddr[2:]
        strobe = bus.wstrb

        def masked(old):
            """``old`` (a 32-bit word) with the strobed bytes of ``wdata`` written."""
            return Cat(Mux(strobe[b], bus.wdata[8 * b:8 * b + 8], old[8 * b:8 * b + 8])
                       for b in range(4))

        # --- control block ----------------------------------------------------------------
        with m.If(self.ap_ready):
            m.d.sync += ap_start.eq(auto_restart)
        with m.If(take_write & (wword == ctrl.offset // 4) & strobe[0]):
            with m.If(bus.wdata[bit["AP_START"]]):
                m.d.sync += ap_start.eq(1)
            m.d.sync += auto_restart.eq(bus.wdata[bit["AUTO_RESTART"]])
        with m.If(take_write & strobe[0]):
            with m.Switch(wword):
                with m.Case(rm["GIE"].offset // 4):
                    m.d.sync += gie.eq(bus.wdata[0])
                with m.Case(ier.offset // 4):
                    m.d.sync += ier_bits.eq(bus.wdata[:2])
        # Interrupt status: set by enabled events, toggled by writes of ones.
        toggle = Mux(take_write & strobe[0] & (wword == isr.offset // 4), bus.wdata[:2], 0)
        events = Cat(self.ap_done & ier_bits[isr_done], self.ap_ready & ier_bits[isr_ready])
        m.d.sync += isr_bits.eq((isr_bits ^ toggle) | events)
        m.d.comb += [self.ap_start.eq(ap_start),
                     self.interrupt.eq(gie & (isr_bits & ier_bits).any())]

        # --- arguments ----------------------------------------------------------------------
        for reg in rm.arguments:
            value = Value.cast(self.args[reg.name])
            for n, offset in enumerate(reg.words):
                word = value[32 * n:32 * n + 32]
                with m.If(take_write & (wword == offset // 4)):
                    m.d.sync += word.eq(masked(word))

        # --- read channel ---------------------------------------------------------------------
        rvalid = Signal()
        rdata = Signal(32)
        take_read = Signal()
        m.d.comb += [
            take_read.eq(bus.arvalid & ~rvalid),
            bus.arready.eq(take_read),
            bus.rvalid.eq(rvalid), bus.rdata.eq(rdata), bus.rresp.eq(0),
        ]
        with m.If(take_read):
            m.d.sync += rvalid.eq(1)
        with m.Elif(bus.rready):
            m.d.sync += rvalid.eq(0)
        ctrl_value = Signal(32)
        m.d.comb += [ctrl_value[bit["AP_START"]].eq(ap_start),
                     ctrl_value[bit["AP_DONE"]].eq(done),
                     ctrl_value[bit["AP_IDLE"]].eq(self.ap_idle),
                     ctrl_value[bit["AP_READY"]].eq(ready),
                     ctrl_value[bit["AUTO_RESTART"]].eq(auto_restart)]
        words = {ctrl.offset: ctrl_value, rm["GIE"].offset: gie, ier.offset: ier_bits,
                 isr.offset: isr_bits}
        for reg in (*rm.arguments, *rm.status):
            group = self.args if reg.kind == "argument" else self.status
            value = Value.cast(group[reg.name])
            for n, offset in enumerate(reg.words):
                words[offset] = value[32 * n:32 * n + 32]
        rword = bus.araddr[2:]
        with m.If(take_read):
            with m.Switch(rword):
                for offset, value in words.items():
                    with m.Case(offset // 4):
                        m.d.sync += rdata.eq(value)
                with m.Default():
                    m.d.sync += rdata.eq(Const(0, 32))

        # Done and ready are cleared by reading CTRL; an event in the same cycle wins.
        read_ctrl = take_read & (rword == ctrl.offset // 4)
        with m.If(self.ap_done):
            m.d.sync += done.eq(1)
        with m.Elif(read_ctrl):
            m.d.sync += done.eq(0)
        with m.If(self.ap_ready):
            m.d.sync += ready.eq(1)
        with m.Elif(read_ctrl):
            m.d.sync += ready.eq(0)
        return m
