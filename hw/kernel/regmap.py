"""The kernel's control register map, written once as data.

Every consumer reads this module: the AXI4-Lite register bank of the RTL
(:class:`~velcro.hw.kernel.csr.ControlRegisters`), ``kernel.xml`` for the Vitis flow
(:mod:`velcro.sw.build.kernel_xml`) and the host driver (:mod:`velcro.sw.runtime`), which
asks for a register by name and never types an offset.

Layout (Vitis ``ap_ctrl_hs`` conventions, UG1393 "Control Requirements for
XRT-Managed Kernels"):

``0x00 CTRL``
    ``AP_START`` (bit 0, set by the host, cleared by the kernel's ``ap_ready`` unless
    ``AUTO_RESTART``), ``AP_DONE`` (bit 1, set at the end of a run, cleared on read),
    ``AP_IDLE`` (bit 2), ``AP_READY`` (bit 3, set with ``AP_DONE``: the kernel takes
    its arguments only at the start, so it is ready for new ones when it is done;
    cleared on read), ``AUTO_RESTART`` (bit 7).
``0x04 GIE``, ``0x08 IER``, ``0x0C ISR``
    Global interrupt enable; enables and status (toggle on write) of the ``done``
    (bit 0) and ``ready`` (bit 1) interrupts. ``interrupt = GIE & |(ISR & IER)``.
``0x10 ...`` arguments
    Written by the host before ``AP_START`` (``kernel.xml`` ``<arg>``s, in this
    order). 64-bit values take two words, low word first, 8-byte aligned.
after the arguments: status
    Read-only, updated by the kernel during a run and stable after it: error bits,
    where the error happened, images finished, and the performance counters of the
    whole run (64-bit). They are not kernel arguments, so ``kernel.xml`` does not
    list them and XRT's scheduler never writes them. The kernel also writes them to
    device memory at the end of every run, as the status block at the start of the
    ``counters`` buffer (:data:`~velcro.hw.kernel.config.STATUS_BLOCK`), for hosts
    that cannot read registers.

Arguments that are device-memory pointers name the ``m_axi`` port that reads or
writes through them (:data:`PORTS`); buffers must be allocated in a memory bank that
port is connected to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["ADDR_BITS", "Field", "PORTS", "REGMAP", "Register", "RegisterMap", "Status"]

#: Address bits of ``s_axi_control`` (a 4 KiB window).
ADDR_BITS = 12

#: The kernel's ``m_axi`` ports and what flows through each.
PORTS = MappingProxyType({
    "m_axi_program": "descriptor program and network constants (conv weights, "
                     "requantization, skip masks and means; dense codebooks and "
                     "parameters); read only",
    "m_axi_indices": "dense index streams (int8 weights in int8 mode); read only",
    "m_axi_data": "input tensors (read), results and per-layer counters (written)",
})


@dataclass(frozen=True)
class Field:
    """A bit field of a register.

    Attributes
    ----------
    name : str
    bit : int
        Lowest bit.
    width : int
    access : str
        ``"rw"``, ``"ro"``, ``"cor"`` (clear on read), ``"tow"`` (toggle on write).
    doc : str
    """

    name: str
    bit: int
    width: int = 1
    access: str = "rw"
    doc: str = ""

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.bit


@dataclass(frozen=True)
class Register:
    """One register of the map.

    Attributes
    ----------
    name : str
    offset : int
        Byte offset of the (low) word.
    width : int
        32 or 64 bits.
    kind : str
        ``"control"``, ``"argument"`` or ``"status"``.
    ctype : str
        C type of an argument as ``kernel.xml`` declares it (``"void*"`` for device
        pointers).
    port : str or None
        The ``m_axi`` port a pointer argument is used on.
    doc : str
    fields : tuple of Field
    """

    name: str
    offset: int
    width: int
    kind: str
    ctype: str = "unsigned int"
    port: str | None = None
    doc: str = ""
    fields: tuple[Field, ...] = ()

    @property
    def words(self) -> tuple[int, ...]:
        """Byte offsets of the 32-bit words, low word first."""
        return tuple(self.offset + 4 * n for n in range(self.width // 32))

    @property
    def pointer(self) -> bool:
        return self.port is not None

    def field_named(self, name: str) -> Field:
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        raise KeyError(f"register {self.name} has no field {name!r}; fields: "
                       f"{', '.join(f.name for f in self.fields)}")


@dataclass(frozen=True)
class Argument:
    """An argument before placement: name, width, C type, port, documentation."""

    name: str
    width: int
    ctype: str
    port: str | None = None
    doc: str = ""


@dataclass(frozen=True)
class Status:
    """A read-only status register before placement."""

    name: str
    width: int
    doc: str = ""
    fields: tuple[Field, ...] = ()


@dataclass(frozen=True)
class RegisterMap:
    """Registers placed at their offsets; frozen, looked up by name.

    Build one with :meth:`build`; :data:`REGMAP` is the kernel's.
    """

    registers: tuple[Register, ...]
    addr_bits: int = ADDR_BITS
    _by_name: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self._by_name.update({r.name: r for r in self.registers})
        if len(self._by_name) != len(self.registers):
            raise ValueError("register names must be unique")
        end = max(r.offset + r.width // 8 for r in self.registers)
        if end > 1 << self.addr_bits:
            raise ValueError(f"registers end at {end:#x}, beyond the {self.addr_bits}-bit "
                             "address window")

    @classmethod
    def build(cls, control: tuple[Register, ...], arguments: tuple[Argument, ...],
              status: tuple[Status, ...], *, first_argument: int = 0x10) -> RegisterMap:
        """Place ``arguments`` from ``first_argument``, then ``status``, each aligned to
        its own size (a 64-bit value starts on an 8-byte boundary)."""
        registers = list(control)
        offset = first_argument
        for item in (*arguments, *status):
            if item.width not in (32, 64):
                raise ValueError(f"{item.name}: registers are 32 or 64 bits, not {item.width}")
            size = item.width // 8
            offset = -(-offset // size) * size
            if isinstance(item, Argument):
                registers.append(Register(item.name, offset, item.width, "argument",
                                          item.ctype, item.port, item.doc))
            else:
                registers.append(Register(item.name, offset, item.width, "status",
                                          doc=item.doc, fields=item.fields))
            offset += size
        return cls(tuple(registers))

    def __getitem__(self, name: str) -> Register:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no register {name!r}; registers: "
                           f"{', '.join(self._by_name)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self.registers)

    def of_kind(self, kind: str) -> tuple[Register, ...]:
        return tuple(r for r in self.registers if r.kind == kind)

    @property
    def arguments(self) -> tuple[Register, ...]:
        return self.of_kind("argument")

    @property
    def status(self) -> tuple[Register, ...]:
        return self.of_kind("status")

    @property
    def size(self) -> int:
        """Bytes of the address window."""
        return 1 << self.addr_bits


CONTROL = (
    Register("CTRL", 0x00, 32, "control", doc="block-level control (ap_ctrl_hs)", fields=(
        Field("AP_START", 0, access="rw", doc="start a run; cleared when the kernel is "
              "ready unless AUTO_RESTART"),
        Field("AP_DONE", 1, access="cor", doc="the run has finished"),
        Field("AP_IDLE", 2, access="ro", doc="no run in progress"),
        Field("AP_READY", 3, access="cor", doc="ready for new arguments"),
        Field("AUTO_RESTART", 7, access="rw", doc="start again when done"),
    )),
    Register("GIE", 0x04, 32, "control", doc="global interrupt enable",
             fields=(Field("ENABLE", 0),)),
    Register("IER", 0x08, 32, "control", doc="interrupt enables",
             fields=(Field("DONE", 0), Field("READY", 1))),
    Register("ISR", 0x0C, 32, "control", doc="interrupt status (toggle on write)",
             fields=(Field("DONE", 0, access="tow"), Field("READY", 1, access="tow"))),
)

ARGUMENTS = (
    Argument("program", 64, "void*", "m_axi_program",
             "descriptor program followed by the network constants"),
    Argument("indices", 64, "void*", "m_axi_indices", "dense index streams"),
    Argument("inputs", 64, "void*", "m_axi_data", "input tensors, one per image"),
    Argument("outputs", 64, "void*", "m_axi_data", "results, one per image"),
    Argument("counters", 64, "void*", "m_axi_data",
             "status block and per-descriptor counters, written at the end of the run"),
    Argument("images", 32, "unsigned int", doc="images of this run"),
    Argument("watchdog", 32, "unsigned int",
             doc="most cycles one descriptor may take before the run is ended with an "
                 "error (0: no limit)"),
)

#: Error bits of the ``status`` register.
ERRORS = (
    Field("AXI_READ", 0, access="ro", doc="a read returned an error response"),
    Field("AXI_WRITE", 1, access="ro", doc="a write returned an error response"),
    Field("BAD_DESCRIPTOR", 2, access="ro",
          doc="unknown opcode, parameters the hardware cannot run, or stream lengths "
              "that do not match the layer"),
    Field("WATCHDOG", 3, access="ro", doc="a descriptor took more than watchdog cycles"),
)

STATUS = (
    Status("status", 32, "error bits of the last run (0: success)", ERRORS),
    Status("error_at", 32, "where the first error happened", (
        Field("PC", 0, 16, "ro", "descriptor index"),
        Field("OPCODE", 16, 8, "ro", "opcode of that descriptor"),
    )),
    Status("images_done", 32, "images finished in the last run"),
    Status("cycles", 64, "cycles from start to done"),
    Status("mac_cycles", 64, "cycles in which the conv array's multipliers computed"),
    Status("skipped", 64, "output elements replaced by their VELCRO means"),
    Status("stall_cycles", 64, "cycles spent waiting for device memory"),
)

REGMAP = RegisterMap.build(CONTROL, ARGUMENTS, STATUS)
"""The register map of ``velcro_kernel``."""
