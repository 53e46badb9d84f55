"""The ``alveo`` backend: the driver on a U280 through XRT's ``pyxrt`` or PYNQ 3.0.1.

Two Python bindings can drive the card, and which one works depends on the XRT
installed (:data:`BACKENDS`):

``pyxrt``
    XRT's own bindings, shipped with XRT in ``$XILINX_XRT/python`` and built for one
    Python version. Any XRT release with them works.
``pynq``
    PYNQ 3.0.1, the last PYNQ release that drives Alveo cards. It calls XRT's legacy
    ``xcl*`` C functions, which XRT 2.17 no longer exports: it works with XRT 2.14 to
    2.16 only (:data:`PYNQ_XRT`), and with NumPy 1 only (its buffers set
    ``ndarray.device``, a read-only property from NumPy 2).

:func:`open_platform` takes the one asked for, or with ``auto`` the first that can
work with the XRT found (:func:`choose_backend`), and both adapters present the PYNQ
surface the driver uses (:mod:`velcro.sw.runtime.driver`). The adapters are thin:
everything below them (programs, layouts, registers, buffers, the watchdog) is the
driver's and is tested against the RTL and the golden model. What they add:

- a run handle whose ``done`` is true in every terminal state of XRT's command
  states (:data:`TERMINAL`) and raises a :class:`~velcro.sw.errors.DeviceError`
  naming the state when it is not ``ERT_CMD_STATE_COMPLETED``;
- ``handle.abort()`` for a run that has timed out. Neither binding can stop a
  started run (``pyxrt`` does not bind ``xrt::run::abort``, PYNQ 3.0.1 has no abort
  command), so it waits :data:`ABORT_GRACE` seconds for the run to end and says
  whether it did; until every run has ended, freeing a buffer only parks it, so the
  kernel never writes into memory that was handed back to XRT;
- ``pyxrt`` passes scalar arguments as C ``int``: 32-bit unsigned values are passed
  as the ``int`` with the same bits, anything wider is refused.

A bitstream of several compute units (``velcro build xclbin --cus N``) is opened with
``cus=N``: ``pyxrt`` opens each unit as its own kernel object by XRT's
``kernel:{unit}`` name and takes each unit's banks from its arguments' memory groups;
PYNQ takes the overlay's IP of each unit's name. A missing unit is a
:class:`~velcro.sw.errors.DeviceError` that says which ``--cus`` to link.

``pyxrt`` cannot read or write a compute unit's registers (XRT 2.12 removed
``read_register``): through it the kernel's ``read`` raises a
:class:`~velcro.sw.errors.DeviceError`.

Without a usable binding, without a card, or without the bitstream, opening fails
with a :class:`~velcro.sw.errors.DeviceError` that says which.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from velcro.hw.kernel.connectivity import KERNEL_NAME, bank_of, instance
from velcro.hw.kernel.regmap import REGMAP
from velcro.sw.errors import DeviceError

from ..driver import Platform

__all__ = ["ABORT_GRACE", "BACKENDS", "DEFAULT_XCLBIN", "PYNQ_XRT", "TERMINAL",
           "XrtInstall", "choose_backend", "find_xrt", "open_platform", "probe"]

#: Where the bitstream flow leaves the bitstream; ``$VELCRO_XCLBIN`` overrides.
DEFAULT_XCLBIN = Path("bitstreams/build/velcro_u280.xclbin")
#: ``--backend`` choices; ``$VELCRO_BACKEND`` gives the default.
BACKENDS = ("auto", "pyxrt", "pynq")
#: The XRT releases (major, minor) PYNQ 3.0.1 works with, first and last.
PYNQ_XRT = ((2, 14), (2, 16))
#: Where XRT installs itself when ``$XILINX_XRT`` is not set (its ``setup.sh`` sets it).
XRT_ROOT = Path("/opt/xilinx/xrt")
#: XRT's command states in which a run has ended, by their value in ``ert.h``.
TERMINAL = {4: "ERT_CMD_STATE_COMPLETED", 5: "ERT_CMD_STATE_ERROR",
            6: "ERT_CMD_STATE_ABORT", 8: "ERT_CMD_STATE_TIMEOUT",
            9: "ERT_CMD_STATE_NORESPONSE", 10: "ERT_CMD_STATE_SKERROR",
            11: "ERT_CMD_STATE_SKCRASHED"}
#: NumPy's version: PYNQ 3.0.1's buffers set ``ndarray.device``, read-only from NumPy 2.
NUMPY_VERSION = np.__version__
#: Seconds ``handle.abort()`` waits for a timed-out run to end.
ABORT_GRACE = 1.0
MATRIX = ("pyxrt: any XRT that ships it (source $XILINX_XRT/setup.sh); "
          "PYNQ 3.0.1: XRT 2.14 to 2.16 and NumPy < 2")


# --- the installed XRT, and which backend can drive it ------------------------------------
@dataclass(frozen=True)
class XrtInstall:
    """The XRT installation found.

    Attributes
    ----------
    path : Path or None
        Its folder (``$XILINX_XRT``, else :data:`XRT_ROOT` when it exists).
    version : str or None
        ``BUILD_VERSION`` of its ``version.json`` (``"2.14.354"``).
    """

    path: Path | None
    version: str | None

    @property
    def release(self) -> tuple[int, int] | None:
        """``(major, minor)`` of :attr:`version`."""
        match = re.match(r"(\d+)\.(\d+)", self.version or "")
        return (int(match.group(1)), int(match.group(2))) if match else None

    @property
    def runs_pynq(self) -> bool:
        """Whether PYNQ 3.0.1 works with this XRT."""
        return self.release is not None and PYNQ_XRT[0] <= self.release <= PYNQ_XRT[1]

    def describe(self) -> str:
        if self.path is None:
            return f"no XRT installation ($XILINX_XRT unset, no {XRT_ROOT})"
        if self.version is None:
            return f"XRT of unknown version at {self.path} (no readable version.json)"
        return f"XRT {self.version} at {self.path}"


def find_xrt(environ=None) -> XrtInstall:
    """The XRT of ``$XILINX_XRT`` (from ``environ``, default ``os.environ``) or at
    :data:`XRT_ROOT`, with the version its ``version.json`` records."""
    environ = os.environ if environ is None else environ
    path = Path(environ["XILINX_XRT"]) if environ.get("XILINX_XRT") else XRT_ROOT
    if not path.is_dir():
        return XrtInstall(None, None)
    try:
        version = json.loads((path / "version.json").read_text()).get("BUILD_VERSION")
    except (OSError, ValueError, AttributeError):
        version = None
    return XrtInstall(path, str(version) if version else None)


def probe(module: str) -> str | None:
    """``None`` when ``module`` imports, else why not (one line)."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            return "not installed"
        return f"ModuleNotFoundError: {e}"
    except Exception as e:
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def choose_backend(requested: str, xrt: XrtInstall, why=probe) -> str:
    """``"pyxrt"`` or ``"pynq"`` for ``requested`` (one of :data:`BACKENDS`), given the
    XRT installed and ``why(module)`` (:func:`probe`)."""
    if requested not in BACKENDS:
        raise DeviceError(f"no backend {requested!r}; choose {', '.join(BACKENDS)}")
    reasons = {}
    if requested in ("auto", "pyxrt"):
        reasons["pyxrt"] = why("pyxrt")
        if reasons["pyxrt"] is None:
            return "pyxrt"
    if requested in ("auto", "pynq"):
        reasons["pynq"] = why("pynq")
        if reasons["pynq"] is None and not xrt.runs_pynq and (
                requested == "auto" or xrt.release is not None):
            reasons["pynq"] = "PYNQ 3.0.1 works with XRT 2.14 to 2.16 only"
        elif reasons["pynq"] is None and int(NUMPY_VERSION.split(".")[0]) >= 2:
            reasons["pynq"] = f"PYNQ 3.0.1 needs NumPy < 2, not {NUMPY_VERSION}"
        if reasons["pynq"] is None:
            return "pynq"
    because = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
    raise DeviceError(f"no backend can drive the card with {xrt.describe()}: {because}; "
                      f"supported: {MATRIX} (velcro doctor says more)")


def open_platform(index: int = 0, *, xclbin: Path | str | None = None,
                  backend: str | None = None, cus: int = 1) -> Platform:
    """The platform of card ``index`` with ``xclbin`` (default :data:`DEFAULT_XCLBIN`)
    through ``backend`` (default ``$VELCRO_BACKEND``, else ``auto``), driving ``cus``
    of its compute units."""
    path = Path(xclbin or os.environ.get("VELCRO_XCLBIN", DEFAULT_XCLBIN))
    where = f"alveo:{index}"
    if not path.is_file():
        raise DeviceError(f"{where}: no bitstream at {path} (name it with --xclbin or "
                          "$VELCRO_XCLBIN)")
    requested = backend or os.environ.get("VELCRO_BACKEND") or "auto"
    try:
        name = choose_backend(requested, find_xrt())
    except DeviceError as e:
        raise DeviceError(f"{where}: {e}") from None
    platform, label = (XrtPlatform, "pyxrt") if name == "pyxrt" else (PynqPlatform,
                                                                      "PYNQ 3.0.1")
    try:
        return platform(index, path, cus)
    except DeviceError:
        raise
    except Exception as e:
        raise DeviceError(f"{where}: {label} failed: {type(e).__name__}: {e}") from None


# --- what both adapters share: runs, and buffers that outlive a stuck run -------------------
class _Runs:
    """The runs not yet ended, and the buffers freed while one was running."""

    def __init__(self):
        self.running = set()
        self.parked = []

    def free(self, release) -> None:
        """Call ``release`` now, or once every run has ended."""
        if self.running:
            self.parked.append(release)
        else:
            release()

    def ended(self, handle) -> None:
        self.running.discard(handle)
        if not self.running:
            parked, self.parked = self.parked, []
            for release in parked:
                release()


class _Handle:
    """A started run: ``done`` polls it, ``abort()`` gives up on it."""

    def __init__(self, runs: _Runs, state, wait):
        self._runs, self._state, self._wait = runs, state, wait
        runs.running.add(self)

    def _ended(self, state: int | None) -> bool:
        if state not in TERMINAL:
            return False
        self._runs.ended(self)
        if state != 4:
            raise DeviceError(f"the kernel run ended in {TERMINAL[state]}")
        return True

    @property
    def done(self) -> bool:
        """Whether the run has ended; raises if it ended in any state but completed."""
        return self._ended(self._state())

    def abort(self) -> bool:
        """Give up on the run: wait up to :data:`ABORT_GRACE` s for it to end; whether
        it did. Buffers freed before it ends stay allocated."""
        deadline = time.monotonic() + ABORT_GRACE
        state = self._state()
        while state not in TERMINAL and time.monotonic() < deadline:
            # A wait that times out says ERT_CMD_STATE_TIMEOUT: the state is asked again.
            self._wait(max(deadline - time.monotonic(), 1e-3))
            state = self._state()
        try:
            return self._ended(state)
        except DeviceError:
            return True


def _c_int(name: str, value) -> int:
    """``value`` of 32-bit unsigned scalar ``name`` as the C ``int`` with its bits."""
    if REGMAP[name].width != 32 or not 0 <= int(value) < 1 << 32:
        raise DeviceError(f"kernel argument {name} = {value} does not fit the 32-bit "
                          "unsigned scalar pyxrt passes as a C int")
    value = int(value)
    return value - (1 << 32) if value >= 1 << 31 else value


# --- PYNQ 3.0.1 ------------------------------------------------------------------------------
class PynqPlatform(Platform):
    """Card ``index`` through PYNQ 3.0.1 (``Overlay``, ``allocate``, ERT-scheduled starts),
    with ``cus`` compute units, each the overlay's IP of its instance name."""

    def __init__(self, index: int, path: Path, cus: int = 1):
        import pynq

        devices = pynq.Device.devices
        if index >= len(devices):
            raise DeviceError(f"alveo:{index}: PYNQ finds {len(devices)} Alveo card(s)")
        self.device = devices[index]
        self._pynq = pynq
        self._runs = _Runs()
        loaded = pynq.Overlay(str(path), device=self.device)

        class Overlay:
            def __getattr__(self, name):
                return getattr(loaded, name)

        self.overlay = Overlay()
        for cu in range(cus):
            try:
                ip = getattr(loaded, instance(cu))
            except AttributeError:
                raise DeviceError(f"alveo:{index}: {path} has no compute unit "
                                  f"{instance(cu)}; link {cus} with 'velcro build xclbin "
                                  f"--cus {cus}'") from None
            setattr(self.overlay, instance(cu), self._unit(ip))

    def _unit(self, ip):
        """The instance the driver starts runs on, over PYNQ's ``ip``."""
        device, runs = self.device, self._runs

        class Kernel:
            read = staticmethod(ip.read)
            write = staticmethod(ip.write)

            @staticmethod
            def start(**arguments):
                handle = ip.start(**arguments)

                def state():
                    # ERT completions are collected only when events are handled.
                    if not handle.done:
                        device._handle_events(10)
                    if not handle.done:
                        return None
                    failed = handle._future.exception()
                    if failed is None:
                        return 4
                    # PYNQ ends a run in any state from COMPLETED up: "Execution failed: 5".
                    found = re.search(r"(\d+)\s*$", str(failed))
                    return int(found.group(1)) if found else 5

                def wait(seconds):
                    device._handle_events(max(int(seconds * 1000), 1))
                return _Handle(runs, state, wait)

        return Kernel()

    def allocate(self, shape, dtype, target):
        buf = self._pynq.allocate(shape, dtype, target=target)
        release = type(buf).freebuffer
        # PYNQ frees at once; a buffer freed while a run may still use it waits for it.
        buf.freebuffer = lambda: self._runs.free(lambda: release(buf))
        return buf

    def clock(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        if not self._runs.running:
            self.device.close()


# --- pyxrt -----------------------------------------------------------------------------------
class XrtPlatform(Platform):
    """Card ``index`` through ``pyxrt`` (XRT's native API, XRT 2.14 and later), with ``cus``
    compute units, each opened by its name (``velcro_kernel:{velcro_kernel_2}``)."""

    def __init__(self, index: int, path: Path, cus: int = 1):
        import pyxrt

        self._pyxrt = pyxrt
        self._runs = _Runs()
        self.device = pyxrt.device(index)
        uuid = self.device.load_xclbin(pyxrt.xclbin(str(path)))

        class Overlay:
            pass

        self.overlay = Overlay()
        for cu in range(cus):
            try:
                kernel = pyxrt.kernel(self.device, uuid, f"{KERNEL_NAME}:{{{instance(cu)}}}",
                                      pyxrt.kernel.cu_access_mode.exclusive)
            except RuntimeError as e:
                raise DeviceError(f"alveo:{index}: {path} has no compute unit "
                                  f"{instance(cu)} ({e}); link {cus} with 'velcro build "
                                  f"xclbin --cus {cus}'") from None
            arguments = [r.name for r in REGMAP.arguments]
            for reg in REGMAP.arguments:
                if reg.pointer:
                    setattr(self.overlay, bank_of(reg.port, cu).name,
                            _XrtBank(kernel.group_id(arguments.index(reg.name))))
            setattr(self.overlay, instance(cu), self._unit(kernel))

    def _unit(self, kernel):
        """The instance the driver starts runs on, over ``pyxrt``'s ``kernel``. No register
        access (pyxrt has none): the driver reads the status block, and anything that asks
        for a register gets an error saying so."""
        pyxrt, runs = self._pyxrt, self._runs
        arguments = [r.name for r in REGMAP.arguments]
        states = {getattr(pyxrt.ert_cmd_state, name): value
                  for value, name in TERMINAL.items()}

        class Kernel:
            @staticmethod
            def read(offset):
                raise DeviceError(f"pyxrt cannot read the kernel's registers (offset "
                                  f"{offset:#x}): XRT removed register access from it")

            @staticmethod
            def write(offset, value):
                raise DeviceError(f"pyxrt cannot write the kernel's registers (offset "
                                  f"{offset:#x}): XRT passes arguments through runs only")

            @staticmethod
            def start(**values):
                run = pyxrt.run(kernel)
                for position, name in enumerate(arguments):
                    value = values[name]
                    run.set_arg(position, value.bo if REGMAP[name].pointer
                                else _c_int(name, value))
                run.start()
                return _Handle(runs, lambda: states.get(run.state()),
                               lambda seconds: run.wait(max(int(seconds * 1000), 1)))

        return Kernel()

    def allocate(self, shape, dtype, target):
        pyxrt = self._pyxrt
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        bo = pyxrt.bo(self.device, size, pyxrt.bo.normal, target.group)
        array = np.frombuffer(bo.map(), np.uint8, size).view(dtype).reshape(shape).view(_XrtBuffer)
        array.bo = bo
        array.runs = self._runs
        array.device_address = bo.address()
        array.directions = (pyxrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE,
                            pyxrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE)
        return array

    def clock(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _XrtBank:
    """A bank as ``pyxrt`` names it: the memory group of a kernel argument."""

    def __init__(self, group):
        self.group = group


class _XrtBuffer(np.ndarray):
    """A ``pyxrt.bo`` mapped as an array, with PYNQ's buffer methods."""

    def sync_to_device(self) -> None:
        self.bo.sync(self.directions[0], self.nbytes, 0)

    def sync_from_device(self) -> None:
        self.bo.sync(self.directions[1], self.nbytes, 0)

    def freebuffer(self) -> None:
        # XRT frees the buffer object with its last reference.
        bo, self.bo = self.bo, None
        if bo is not None:
            self.runs.free(lambda: bo)
