"""``velcro doctor``: whether this machine can run a package on the card, and how to fix it.

One screen, one line per check, each problem followed by its fix: the XRT installed
(version and folder), the Python its ``pyxrt`` was built for against the one running,
which backends import (and why not) and which ``velcro run --backend auto`` takes, the
cards and their shells (through ``pyxrt``, else ``xbutil examine``), and the bitstream:
that it exists, was linked for :data:`~velcro.sw.build.vitis.PLATFORM` and holds this
kernel with its register map's arguments (read with ``pyxrt.xclbin``; without
``pyxrt`` it is not checked). A machine with none of it gets the report too: the
command exits 0 whatever it finds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import printable
from ..files import write_json

#: Seconds ``xbutil examine`` may take.
XBUTIL_TIMEOUT = 30
#: Cards asked for through ``pyxrt`` at most.
MAX_CARDS = 16


def register(sub) -> None:
    p = sub.add_parser(
        "doctor", help="check XRT, the Python bindings, the cards and the bitstream, with "
        "the fix for each problem",
        description="Check what running a package on an Alveo U280 needs: the XRT "
        "installed, the Python its pyxrt was built for, which backends import, the cards "
        "and their shells, and whether the bitstream exists and was built for the "
        "platform and this kernel. Prints one line per check and the fix for each "
        "problem; exits 0 whatever it finds.")
    p.add_argument("--xclbin", type=Path, help="the bitstream to check (default: "
                   "$VELCRO_XCLBIN, else bitstreams/build/velcro_u280.xclbin)")
    p.add_argument("--json", type=Path, help="also write the checks as JSON")
    p.set_defaults(func=cmd_doctor, needs_torch=False)


@dataclass
class Check:
    """One line of the report: ``ok`` true, false (a problem, with its ``fix``) or
    ``None`` (for information, or not checkable here)."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""


def python_tag(path: Path) -> str | None:
    """``"3.10"`` for an extension module named ``pyxrt.cpython-310-x86_64-linux-gnu.so``."""
    match = re.search(r"\.cpython-(\d)(\d+)", path.name)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def xbutil_devices(output: str) -> list[tuple[str, str]]:
    """``(bdf, shell)`` of each card in ``xbutil examine``'s "Devices present" table
    (``[0000:3b:00.1]  :  xilinx_u280_...`` in XRT 2.14, without the colon later)."""
    return re.findall(r"^\s*\[([0-9A-Fa-f:.]+)\]\s+(?::\s+)?(\S+)", output, re.M)


def check_xrt(alveo, xrt) -> list[Check]:
    if xrt.path is None:
        return [Check("XRT", False, xrt.describe(), "install XRT (2.14 or later) for the "
                      "U280 and source /opt/xilinx/xrt/setup.sh")]
    checks = [Check("XRT", xrt.version is not None, xrt.describe(),
                    "" if xrt.version else "reinstall XRT: its version.json is missing")]
    built = sorted((xrt.path / "python").glob("pyxrt*.so"))
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not built:
        checks.append(Check("pyxrt build", None, f"no pyxrt in {xrt.path / 'python'}"))
    else:
        tag = python_tag(built[0])
        checks.append(Check(
            "pyxrt build", tag in (None, running),
            f"{built[0]} is for Python {tag or '(untagged)'}, this is Python {running} "
            f"({sys.executable})",
            "" if tag in (None, running) else f"run velcro under Python {tag} (a venv made "
            f"with python{tag}), or use an XRT built for Python {running}"))
    return checks


def check_backends(alveo, xrt) -> list[Check]:
    checks = []
    for name in ("pyxrt", "pynq"):
        why = alveo.probe(name)
        fix = ""
        if why and name == "pyxrt":
            fix = (f"source {xrt.path}/setup.sh (it puts {xrt.path}/python on PYTHONPATH)"
                   if xrt.path else "install XRT, then source its setup.sh")
        elif why:
            fix = "pip install 'velcro[alveo]' (with XRT 2.14 to 2.16)"
        checks.append(Check(f"import {name}", why is None, why or "imports", fix))
    try:
        chosen = alveo.choose_backend("auto", xrt)
        checks.append(Check("backend", True, f"velcro run --backend auto takes {chosen}"))
    except alveo.DeviceError:
        chosen = None
        checks.append(Check("backend", False, "velcro run --backend auto finds none that "
                            f"works with {xrt.describe()}", f"supported: {alveo.MATRIX}"))
    # Both names are checked; only the "import" lines count as problems.
    for check in checks[:2]:
        if chosen is not None and check.ok is False:
            check.ok = None
    return checks


def pyxrt_devices(pyxrt) -> list[tuple[str, str]]:
    count = pyxrt.enumerate_devices() if hasattr(pyxrt, "enumerate_devices") else MAX_CARDS
    found = []
    for index in range(min(count, MAX_CARDS)):
        try:
            device = pyxrt.device(index)
        except Exception:
            break
        info = pyxrt.xrt_info_device
        found.append((device.get_info(info.bdf), device.get_info(info.name)))
    return found


def check_devices(pyxrt, xrt) -> list[Check]:
    if pyxrt is not None:
        how, devices = "pyxrt", pyxrt_devices(pyxrt)
    else:
        xbutil = shutil.which("xbutil") or (xrt.path and shutil.which(
            "xbutil", path=str(xrt.path / "bin")))
        if not xbutil:
            return [Check("cards", None, "cannot list cards: neither pyxrt nor xbutil is "
                          "here", "source XRT's setup.sh")]
        try:
            out = subprocess.run([xbutil, "examine"], capture_output=True, text=True,
                                 timeout=XBUTIL_TIMEOUT).stdout
        except (OSError, subprocess.SubprocessError) as e:
            return [Check("cards", False, f"xbutil examine failed: {e}", "run xbutil "
                          "examine by hand and fix what it reports")]
        how, devices = "xbutil examine", xbutil_devices(out)
    if not devices:
        return [Check("cards", False, f"{how} finds no card", "check the card is in a "
                      "PCIe slot and its drivers are loaded (xbutil examine, lspci -d 10ee:)")]
    return [Check(f"card {n}", None, f"[{bdf}] {printable(shell)} (via {how})")
            for n, (bdf, shell) in enumerate(devices)]


def check_xclbin(path: Path, pyxrt) -> list[Check]:
    from velcro.hw.kernel.connectivity import KERNEL_NAME
    from velcro.hw.kernel.regmap import REGMAP

    from ..build.vitis import PLATFORM

    if not path.is_file():
        return [Check("bitstream", False, f"no bitstream at {path}", "build it (make -C "
                      "bitstreams xclbin) or name it with --xclbin or $VELCRO_XCLBIN")]
    if pyxrt is None:
        return [Check("bitstream", None, f"{path} exists; cannot check its platform and "
                      "kernel without pyxrt")]
    try:
        image = pyxrt.xclbin(str(path))
        xsa = image.get_xsa_name()
        kernels = {k.get_name(): k.get_num_args() for k in image.get_kernels()}
    except Exception as e:
        return [Check("bitstream", False, f"pyxrt cannot read {path}: {type(e).__name__}: "
                      f"{e}", "rebuild the bitstream")]
    # The header's VBNV, written as the platform's name or as vendor:board:name:version.
    same = re.sub(r"[:.]", "_", xsa) == PLATFORM
    checks = [Check("bitstream platform", same, f"{path} is for {printable(xsa)}",
                    "" if same else f"rebuild it for {PLATFORM}")]
    want = len(REGMAP.arguments)
    if KERNEL_NAME not in kernels:
        checks.append(Check("bitstream kernel", False, f"no kernel {KERNEL_NAME} (it has "
                            f"{', '.join(map(printable, kernels)) or 'none'})",
                            "rebuild it from this velcro"))
    else:
        got = kernels[KERNEL_NAME]
        checks.append(Check("bitstream kernel", got == want, f"{KERNEL_NAME} takes {got} "
                            f"argument(s), the register map {want}",
                            "" if got == want else "rebuild it from this velcro: its "
                            "register map changed"))
    return checks


def run_checks(xclbin: Path | None) -> list[Check]:
    import os

    from ..runtime.backends import alveo

    xrt = alveo.find_xrt()
    checks = check_xrt(alveo, xrt)
    checks += check_backends(alveo, xrt)
    pyxrt = sys.modules.get("pyxrt") if alveo.probe("pyxrt") is None else None
    checks += check_devices(pyxrt, xrt)
    path = Path(xclbin or os.environ.get("VELCRO_XCLBIN") or alveo.DEFAULT_XCLBIN)
    return checks + check_xclbin(path, pyxrt)


def cmd_doctor(args) -> None:
    checks = run_checks(args.xclbin)
    width = max(len(c.name) for c in checks)
    for check in checks:
        mark = {True: "ok", False: "FAIL", None: "--"}[check.ok]
        print(f"{mark:4s}  {check.name:{width}s}  {printable(check.detail)}")
        if check.ok is False and check.fix:
            print(f"{'':4s}  {'':{width}s}  fix: {printable(check.fix)}")
    problems = sum(check.ok is False for check in checks)
    print(f"{problems} problem{'s' * (problems != 1)} found" if problems else
          "no problems found")
    if args.json:
        write_json(args.json, {"checks": [asdict(c) for c in checks], "problems": problems})
        print(f"wrote {args.json}")
