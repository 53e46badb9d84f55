"""A stand-in for XRT's ``pyxrt`` over a fake card, for the ``alveo`` backend's tests.

:func:`build` gives a module with the names ``pyxrt`` binds in XRT 2.14 (``"2.14"``)
or in the latest release, 2.20 (``"2.20"``): the classes the backend and ``velcro
doctor`` use (``device``, ``xclbin``, ``kernel``, ``run``, ``bo``, ``uuid``, the
enums) with every method and overload the real class has in that release, and the
module functions of that release. The AIE, ``module``, ``ext``, ``runlist`` and
``graph`` bindings are left out. Every class has ``__slots__`` and no
``__getattr__``, so what the real bindings lack (``kernel.read_register``,
``run.abort``) raises ``AttributeError``; arguments are checked the way pybind11
checks them (a scalar argument is a C ``int``: ``2**31`` is a ``TypeError``).

Behind the module a :class:`FakeCard` records every buffer, sync, argument and run.
Buffers have a host copy (``map``) and a device copy that only ``sync`` moves data
between; with ``FakeCard.kernel`` set, a started run executes the descriptor program
in device memory through the kernel's golden model, as the compute unit would.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import numpy as np

from velcro.hw.kernel.connectivity import BANKS, CHANNELS_PER_CU, CONNECTIVITY, KERNEL_NAME
from velcro.hw.kernel.regmap import REGMAP
from velcro.sw.runtime.backends.kernel_model import DeviceMemory, KernelModel

VERSIONS = ("2.14", "2.20")
STATES = ("ERT_CMD_STATE_NEW", "ERT_CMD_STATE_QUEUED", "ERT_CMD_STATE_COMPLETED",
          "ERT_CMD_STATE_ERROR", "ERT_CMD_STATE_ABORT", "ERT_CMD_STATE_SUBMITTED",
          "ERT_CMD_STATE_TIMEOUT", "ERT_CMD_STATE_NORESPONSE", "ERT_CMD_STATE_SKERROR",
          "ERT_CMD_STATE_SKCRASHED")
VALUES = {"ERT_CMD_STATE_NEW": 1, "ERT_CMD_STATE_QUEUED": 2, "ERT_CMD_STATE_COMPLETED": 4,
          "ERT_CMD_STATE_ERROR": 5, "ERT_CMD_STATE_ABORT": 6, "ERT_CMD_STATE_SUBMITTED": 7,
          "ERT_CMD_STATE_TIMEOUT": 8, "ERT_CMD_STATE_NORESPONSE": 9,
          "ERT_CMD_STATE_SKERROR": 10, "ERT_CMD_STATE_SKCRASHED": 11}
INFO = ("bdf", "interface_uuid", "kdma", "max_clock_frequency_mhz", "m2m", "name", "nodma",
        "offline", "electrical", "thermal", "mechanical", "memory", "platform", "pcie_info",
        "host", "dynamic_regions", "vmr")


@dataclass
class FakeXclbin:
    """What a fake ``.xclbin`` file holds (:meth:`FakeCard.write_xclbin`)."""

    xsa: str = "xilinx_u280_gen3x16_xdma_1_202211_1"
    kernels: tuple = ((KERNEL_NAME, len(REGMAP.arguments)),)
    #: Compute units of each kernel (``velcro_kernel_1`` ...).
    cus: int = 1
    uuid: str = "00000000-0000-0000-0000-00000000beef"


@dataclass
class FakeCard:
    """The cards behind the fake module, and what was done to them.

    Attributes
    ----------
    devices : list of (bdf, shell)
    final_state : str
        The state a started run ends in.
    polls : int or None
        ``run.state()`` calls before the run ends (``None``: it never ends).
    kernel : KernelConfig or None
        When set, a started run executes the program through the kernel's model.
    events : list of tuple
        ``("bo", id, size, flags, group)``, ``("sync", id, direction, size, offset)``,
        ``("set_arg", index, value)``, ``("start",)``, ``("free", id)``, ``("wait", ms)``.
    """

    devices: list = field(default_factory=lambda: [("0000:3b:00.1",
                                                     "xilinx_u280_gen3x16_xdma_base_1")])
    final_state: str = "ERT_CMD_STATE_COMPLETED"
    polls: int | None = 0
    events: list = field(default_factory=list)
    xclbins: dict = field(default_factory=dict)
    loaded: object = None
    kernel: object = None
    device_memory: dict = field(default_factory=dict)

    def place(self, group: int, size: int) -> int:
        """A page-aligned device address for ``size`` bytes in bank ``group``."""
        top = max((a + s.size for a, s in self.device_memory.values()
                   if BANKS[group].contains(a, 1)), default=BANKS[group].base)
        return -(-top // 4096) * 4096

    def execute(self, arguments: dict, cu: int = 0) -> None:
        """Run the program the arguments name, in device memory, as compute unit ``cu``."""
        memory = DeviceMemory()
        for address, array in self.device_memory.values():
            memory.add(address, array)
        model = KernelModel(self.kernel, memory, cu)
        for index, value in arguments.items():
            reg = REGMAP.arguments[index]
            value = value & ((1 << reg.width) - 1)
            for n, offset in enumerate(reg.words):
                model.registers[offset] = (value >> (32 * n)) & 0xFFFFFFFF
        model.run()

    def write_xclbin(self, path, **content):
        """A file at ``path`` the fake ``xclbin(path)`` reads as ``FakeXclbin(**content)``."""
        path.write_bytes(b"xclbin2\0")
        self.xclbins[str(path)] = FakeXclbin(**content)
        return path

    def of(self, kind: str) -> list:
        return [e for e in self.events if e[0] == kind]


def _overload(name, args, *signatures):
    """The index of the first of ``signatures`` (tuples of types) ``args`` match."""
    for n, signature in enumerate(signatures):
        if len(args) == len(signature) and all(
                isinstance(a, t) and not (t is int and isinstance(a, bool))
                for a, t in zip(args, signature, strict=True)):
            return n
    raise TypeError(f"{name}(): incompatible function arguments: {args!r}")


def _enum(name: str, values: dict):
    """A pybind11-like enum class whose members are its attributes (a member may shadow
    ``name``, as ``xrt_info_device.name`` does in pybind11)."""

    class Enum:
        __slots__ = ("_name", "_value")

        def __init__(self, member, value):
            self._name, self._value = member, value

        name = property(lambda self: self._name)
        value = property(lambda self: self._value)

        def __repr__(self):
            return f"<{name}.{self._name}: {self._value}>"

        def __eq__(self, other):
            return type(other) is type(self) and other._value == self._value

        def __hash__(self):
            return hash((name, self._value))

        def __int__(self):
            return self._value

    Enum.__name__ = Enum.__qualname__ = name
    for member, value in values.items():
        setattr(Enum, member, Enum(member, value))
    return Enum


def build(version: str = "2.20", card: FakeCard | None = None) -> types.ModuleType:
    """A ``pyxrt`` module of XRT ``version`` (one of :data:`VERSIONS`) over ``card``."""
    assert version in VERSIONS
    card = card or FakeCard()
    modern = version != "2.14"
    m = types.ModuleType("pyxrt", "Pybind11 module for XRT")
    m.card = card
    m.XCL_BO_FLAGS_NONE = 0
    m.xclBOSyncDirection = _enum("xclBOSyncDirection", {
        "XCL_BO_SYNC_BO_TO_DEVICE": 0, "XCL_BO_SYNC_BO_FROM_DEVICE": 1,
        "XCL_BO_SYNC_BO_GMIO_TO_AIE": 2, "XCL_BO_SYNC_BO_AIE_TO_GMIO": 3})
    m.ert_cmd_state = _enum("ert_cmd_state", {s: VALUES[s] for s in STATES})
    m.xrt_info_device = _enum("xrt_info_device", {k: n for n, k in enumerate(INFO)})
    if modern:
        m.xrt_msg_level = _enum("xrt_msg_level", {k: n for n, k in enumerate(
            ("emergency", "alert", "critical", "error", "warning", "notice", "info",
             "debug"))})
        m.enumerate_devices = lambda: len(card.devices)
        m.log_message = lambda level, tag, message: None

    class uuid:
        __slots__ = ("text",)

        def __init__(self, text):
            self.text = str(text)

        def to_string(self):
            return self.text

    class xclbin:
        __slots__ = ("content",)

        class xclbinkernel:
            __slots__ = ("name", "args")

            def __init__(self, name="", args=0):
                self.name, self.args = name, args

            def get_name(self):
                return self.name

            def get_num_args(self):
                return self.args

        class xclbinmem:
            __slots__ = ("bank",)

            def __init__(self, bank=None):
                self.bank = bank

            def get_tag(self):
                return self.bank.link_name

            def get_base_address(self):
                return self.bank.base

            def get_size_kb(self):
                return self.bank.size >> 10

            def get_used(self):
                return self.bank.index in CONNECTIVITY.values()

            def get_index(self):
                return self.bank.index

        class xclbinip:
            __slots__ = ()

            def get_name(self):
                return "velcro_kernel:velcro_kernel_1"

        def __init__(self, *args):
            which = _overload("xclbin", args, (), (str,))
            if which == 1 and args[0] not in card.xclbins:
                raise RuntimeError(f"Failed to open xclbin file '{args[0]}'")
            self.content = card.xclbins[args[0]] if which else None

        def get_kernels(self):
            return [self.xclbinkernel(n, a) for n, a in self.content.kernels]

        def get_xsa_name(self):
            return self.content.xsa

        def get_uuid(self):
            return uuid(self.content.uuid)

        def get_mems(self):
            return [self.xclbinmem(b) for b in BANKS]

        if modern:
            def get_axlf(self):
                raise NotImplementedError("an axlf pointer has no fake")
        else:
            def get_ips(self, *name):
                return [self.xclbinip()]

    class device:
        __slots__ = ("index",)

        def __init__(self, *args):
            which = _overload("device", args, (), (int,), (str,))
            bdfs = [bdf for bdf, _ in card.devices]
            index = {0: 0, 1: args[0] if args else 0,
                     2: bdfs.index(args[0]) if args and args[0] in bdfs else -1}[which]
            if not 0 <= index < len(card.devices):
                raise RuntimeError(f"No such device '{args[0] if args else index}'")
            self.index = index

        def load_xclbin(self, image):
            _overload("load_xclbin", (image,), (str,), (xclbin,))
            image = xclbin(image) if isinstance(image, str) else image
            card.loaded = image.content
            return image.get_uuid()

        def get_xclbin_uuid(self):
            return uuid(card.loaded.uuid if card.loaded else "0" * 32)

        def get_info(self, key):
            _overload("get_info", (key,), (m.xrt_info_device,))
            bdf, shell = card.devices[self.index]
            return {"bdf": bdf, "name": shell}.get(key._name, "NA")

        if modern:
            def register_xclbin(self, image):
                _overload("register_xclbin", (image,), (xclbin,))
                return image.get_uuid()

    class hw_context:
        __slots__ = ("device", "uuid")

        def __init__(self, *args):
            which = _overload("hw_context", args, (), (device, uuid))
            self.device, self.uuid = args if which else (None, None)

    class kernel:
        __slots__ = ("name", "cu")
        cu_access_mode = _enum("cu_access_mode", {"exclusive": 0, "shared": 1, "none": 2})
        exclusive, shared, none = (cu_access_mode.exclusive, cu_access_mode.shared,
                                   cu_access_mode.none)

        def __init__(self, *args):
            signatures = [(device, uuid, str, self.cu_access_mode), (device, uuid, str)]
            if modern:
                signatures.append((hw_context, str))
            _overload("kernel", args, *signatures)
            self.name = args[-2] if len(args) == 4 else args[-1]
            # XRT's "kernel:{cu}" names one compute unit of the kernel.
            name, _, unit = self.name.partition(":")
            cus = [f"{name}_{n}" for n in range(1, card.loaded.cus + 1)] if card.loaded else []
            if card.loaded is None or name not in [n for n, _ in card.loaded.kernels] or \
                    unit and unit.strip("{}") not in cus:
                raise RuntimeError(f"No compute units matching '{self.name}'")
            self.cu = cus.index(unit.strip("{}")) if unit else 0

        def __call__(self, *args):
            r = run(self)
            for position, item in enumerate(args):
                r.set_arg(position, item)
            r.start()
            return r

        def group_id(self, argnum):
            _overload("group_id", (argnum,), (int,))
            reg = REGMAP.arguments[argnum]
            return CONNECTIVITY[reg.port] + CHANNELS_PER_CU * self.cu if reg.pointer else -1

    class run:
        __slots__ = ("kernel", "polled", "started", "arguments")

        def __init__(self, *args):
            _overload("run", args, (), (kernel,))
            self.kernel, self.polled, self.started = (args or (None,))[0], 0, False
            self.arguments = {}

        def start(self):
            card.events.append(("start",))
            self.started = True
            if card.kernel is not None:
                card.execute(self.arguments, self.kernel.cu)

        def set_arg(self, index, item):
            which = _overload("set_arg", (index, item), (int, bo), (int, int))
            if which == 1 and not -(1 << 31) <= item < 1 << 31:
                raise TypeError("set_arg(): incompatible function arguments (C int)")
            card.events.append(("set_arg", index, item.ident if which == 0 else item))
            self.arguments[index] = item.address() if which == 0 else item

        def state(self):
            if not self.started:
                return m.ert_cmd_state.ERT_CMD_STATE_NEW
            self.polled += 1
            if card.polls is not None and self.polled > card.polls:
                return getattr(m.ert_cmd_state, card.final_state)
            return m.ert_cmd_state.ERT_CMD_STATE_QUEUED

        def wait(self, *timeout_ms):
            _overload("wait", timeout_ms, (), (int,))
            card.events.append(("wait", *timeout_ms))
            state = self.state()
            ended = state._value in (4, 5, 6, 8, 9, 10, 11)
            return state if ended else m.ert_cmd_state.ERT_CMD_STATE_TIMEOUT

        def add_callback(self, state, callback, data):
            raise NotImplementedError("callbacks have no fake")

        if modern:
            def wait2(self, *timeout):
                self.wait()

    class bo:
        __slots__ = ("ident", "memory", "group", "at", "__weakref__")
        flags = _enum("flags", {"normal": 0, "cacheable": 1, "device_only": 2,
                                "host_only": 3, "p2p": 4, "svm": 5})
        normal, cacheable, device_only = flags.normal, flags.cacheable, flags.device_only
        host_only, p2p, svm = flags.host_only, flags.p2p, flags.svm

        def __init__(self, *args):
            which = _overload("bo", args, (device, int, self.flags, int), (bo, int, int))
            if which == 1:
                raise NotImplementedError("sub-buffers have no fake")
            _, size, flags, group = args
            self.ident = len(card.of("bo"))
            self.memory = np.zeros(size, np.uint8)
            self.group = group
            self.at = card.place(group, size)
            card.device_memory[self.ident] = (self.at, np.zeros(size, np.uint8))
            card.events.append(("bo", self.ident, size, flags._name, group))

        def __del__(self):
            card.events.append(("free", self.ident))
            card.device_memory.pop(self.ident, None)

        def write(self, buffer, seek):
            data = np.frombuffer(memoryview(buffer).cast("B"), np.uint8)
            self.memory[seek:seek + len(data)] = data

        def read(self, size, skip):
            return self.memory[skip:skip + size].copy()

        def sync(self, *args):
            signatures = [(m.xclBOSyncDirection, int, int)]
            if modern:
                signatures.append((m.xclBOSyncDirection,))
            _overload("sync", args, *signatures)
            size, offset = args[1:] if len(args) == 3 else (self.memory.size, 0)
            card.events.append(("sync", self.ident, args[0]._name, size, offset))
            device = card.device_memory[self.ident][1]
            if args[0]._name == "XCL_BO_SYNC_BO_TO_DEVICE":
                device[offset:offset + size] = self.memory[offset:offset + size]
            elif args[0]._name == "XCL_BO_SYNC_BO_FROM_DEVICE":
                self.memory[offset:offset + size] = device[offset:offset + size]

        def map(self):
            return memoryview(self.memory)

        def size(self):
            return self.memory.size

        def address(self):
            return self.at

    m.uuid, m.xclbin, m.device, m.kernel, m.run, m.bo = uuid, xclbin, device, kernel, run, bo
    if modern:
        m.hw_context = hw_context
    return m
