"""The Vitis build of ``velcro_kernel`` for the Alveo U280: ``velcro build xo|xclbin``.

:func:`generate` writes every input of the flow into one folder (``bitstreams/build``
by default): the kernel's Verilog, ``kernel.xml``, the Vivado packaging script and the
``v++`` link configuration (:mod:`velcro.sw.build.vitis`). :func:`build_xo` then runs
Vivado in batch mode on the script, which ends in ``package_xo``; :func:`build_xclbin`
runs ``v++ -l -t hw`` for the U280 platform on the XO file.

Files are written atomically, and left untouched when their text has not changed, so
that an XO file newer than its inputs is known to be current and is not packaged
again (``force`` rebuilds). A missing tool is found before anything long starts and
ends the build with a :class:`~velcro.sw.errors.ToolError` naming it, after the inputs
are written: they can be carried to a machine that has the tools.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from velcro.hw.kernel.config import KernelConfig
from velcro.hw.kernel.connectivity import CLOCK_HZ, KERNEL_NAME

from ..errors import ToolError
from ..files import write_text
from .vitis import PLATFORM, link_config, package_tcl

__all__ = ["BuildFolder", "build_xclbin", "build_xo", "generate", "write_if_changed"]

VIVADO = "vivado"
VPP = "v++"
EMCONFIGUTIL = "emconfigutil"

#: ``v++`` link targets: the card, and hardware emulation (the RTL under XRT's emulator).
TARGETS = ("hw", "hw_emu")


@dataclass(frozen=True)
class BuildFolder:
    """The files of the flow in ``path``, generated (first four) and built (last two)."""

    path: Path

    @property
    def verilog(self) -> Path:
        return self.path / f"{KERNEL_NAME}.v"

    @property
    def kernel_xml(self) -> Path:
        return self.path / "kernel.xml"

    @property
    def package_tcl(self) -> Path:
        return self.path / "package_xo.tcl"

    @property
    def link_cfg(self) -> Path:
        return self.path / "link.cfg"

    @property
    def xo(self) -> Path:
        return self.path / f"{KERNEL_NAME}.xo"

    @property
    def xclbin(self) -> Path:
        return self.xclbin_for("hw")

    def xclbin_for(self, target: str) -> Path:
        """The linked bitstream of ``target`` (:data:`TARGETS`)."""
        return self.path / ("velcro_u280.xclbin" if target == "hw"
                            else f"velcro_u280.{target}.xclbin")

    @property
    def emconfig(self) -> Path:
        """The emulation configuration XRT reads in ``hw_emu`` runs."""
        return self.path / "emconfig.json"

    @property
    def inputs(self) -> tuple[Path, ...]:
        return (self.verilog, self.kernel_xml, self.package_tcl, self.link_cfg)


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically unless it already holds it; True if written."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    write_text(path, text)
    return True


def generate(out: Path, config: KernelConfig, cus: int = 1) -> BuildFolder:
    """Write the Verilog, ``kernel.xml``, ``package_xo.tcl`` and ``link.cfg`` (``cus``
    compute units) into ``out``. The XO file does not depend on ``cus``: another count
    only rewrites ``link.cfg``, and the next link runs again."""
    from amaranth.back import verilog

    from velcro.hw.kernel.top import VelcroKernel

    from .kernel_xml import kernel_xml

    folder = BuildFolder(Path(out))
    write_if_changed(folder.verilog, verilog.convert(VelcroKernel(config), name=KERNEL_NAME,
                                                     emit_src=False))
    write_if_changed(folder.kernel_xml, kernel_xml(config.data_width))
    write_if_changed(folder.package_tcl, package_tcl(
        [folder.verilog.name], kernel_xml=folder.kernel_xml.name, xo=folder.xo.name))
    write_if_changed(folder.link_cfg, link_config(cus))
    return folder


def _current(target: Path, sources) -> bool:
    return target.is_file() and all(target.stat().st_mtime >= s.stat().st_mtime
                                    for s in sources)


def _require(tools: list[str], folder: BuildFolder) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise ToolError(f"{' and '.join(missing)} not found on PATH (source the settings64.sh "
                        f"of Vivado/Vitis); the inputs are written in {folder.path}")


def _run(tool: str, args: list[str], folder: BuildFolder, log: Path, product: Path) -> None:
    print(f"[build] {tool} {' '.join(args)}", flush=True)
    # A product left by an earlier run must not pass for this run's.
    product.unlink(missing_ok=True)
    result = subprocess.run([tool, *args], cwd=folder.path)
    if result.returncode != 0 or not product.is_file():
        raise ToolError(f"{tool} failed (exit {result.returncode}) without writing "
                        f"{product.name}; see {log}")


def _vivado(folder: BuildFolder) -> None:
    log = folder.path / "vivado.log"
    _run(VIVADO, ["-mode", "batch", "-nojournal", "-log", log.name, "-source",
                  folder.package_tcl.name], folder, log, folder.xo)


def _xo_sources(folder: BuildFolder) -> tuple[Path, ...]:
    return (folder.verilog, folder.kernel_xml, folder.package_tcl)


def build_xo(folder: BuildFolder, *, force: bool = False) -> bool:
    """Package the kernel into ``velcro_kernel.xo`` with Vivado; False if it was current."""
    if not force and _current(folder.xo, _xo_sources(folder)):
        return False
    _require([VIVADO], folder)
    _vivado(folder)
    return True


def build_xclbin(folder: BuildFolder, *, force: bool = False, target: str = "hw") -> bool:
    """Link the bitstream of ``target`` with ``v++`` (packaging the XO file first if it is
    not current); False if it was current. ``hw_emu`` also writes ``emconfig.json`` with
    ``emconfigutil``, which an emulation run needs beside the xclbin."""
    if target not in TARGETS:
        raise ToolError(f"unknown link target {target!r}; one of {', '.join(TARGETS)}")
    product = folder.xclbin_for(target)
    emulated = target != "hw"
    xo_stale = force or not _current(folder.xo, _xo_sources(folder))
    if not xo_stale and _current(product, (folder.xo, folder.link_cfg)) and \
            (not emulated or folder.emconfig.is_file()):
        return False
    tools = ([VIVADO] if xo_stale else []) + [VPP] + ([EMCONFIGUTIL] if emulated else [])
    _require(tools, folder)
    if xo_stale:
        _vivado(folder)
    # Each target keeps its own scratch and log folders, so one link never reuses another's.
    suffix = f"_{target}" if emulated else ""
    log_dir = folder.path / f"logs{suffix}"
    _run(VPP, ["-l", "-t", target, "--platform", PLATFORM,
               "--kernel_frequency", str(CLOCK_HZ // 1_000_000),
               "--config", folder.link_cfg.name, "--temp_dir", f"_x{suffix}",
               "--log_dir", log_dir.name,
               "--report_dir", "reports", "-o", product.name, folder.xo.name],
         folder, log_dir, product)
    if emulated:
        _run(EMCONFIGUTIL, ["--platform", PLATFORM, "--od", "."], folder, folder.path,
             folder.emconfig)
    return True
