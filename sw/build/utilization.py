"""How much of the Alveo U280 the kernel takes: ``velcro build estimate``.

The figures come from Yosys (:func:`velcro.sw.build.yosys.synthesize`, ``synth_xilinx
-family xcup``) run on the whole ``velcro_kernel``, its two engines synthesized apart
from the rest. Against the U280's XCU280 (:data:`U280`, the whole device; the platform's
shell takes a share that no open tool reports):

``LUT``
    LUTs as logic plus LUTs as memory (distributed RAM and shift registers, by the
    number of LUTs each primitive occupies), as Vivado's "CLB LUTs".
``FF``, ``DSP``
    Flip-flops, DSP48E2 slices.
``BRAM36``
    RAMB36E2 blocks plus half the RAMB18E2: among them the on-chip copy of the
    ``program`` buffer and the read FIFOs of several bursts, which ask for block RAM
    (``ram_style = "block"``).
``URAM``
    URAM288 blocks: the conv array's feature banks and the on-chip copy of the
    ``indices`` buffer (:mod:`velcro.hw.axi.resident`), whose memories ask for UltraRAM
    (``ram_style = "ultra"``; ``synth_xilinx`` and Vivado honour both styles).

``compute_units`` (:func:`compute_units`) is the estimate of ``N`` whole kernels, as
``velcro build xclbin --cus N`` links them: ``N`` times every class, whether that keeps
every class under :data:`BUDGET` of the device (the rest is left to the platform's
shell and to routing), and ``cus_that_fit``, the most compute units that do
(:func:`cus_that_fit`), limited by a resource class or by the HBM channels
(:data:`~velcro.hw.kernel.connectivity.MAX_CUS` compute units of two channels each).

``max_lut_levels`` is the deepest logic between registers in any part
(:func:`velcro.sw.build.depth.lut_levels` states how levels are counted); ``parts``
holds each part's ``depth`` with its deepest paths.

``conv_arrays_that_fit`` is how many conv arrays the device would hold next to one
copy of the rest of the kernel (its DMAs, sequencer, dense engine, buffers), limited
by the scarcest resource class (``conv_arrays_limited_by``). ``parts`` has the Yosys
figures of the whole kernel and of each part synthesized on its own.
"""

from __future__ import annotations

import math
import re
import time
from types import MappingProxyType

__all__ = ["BUDGET", "CONV", "DENSE", "U280", "compute_units", "conv_arrays_that_fit",
           "cus_that_fit", "estimate", "lut_count", "resources", "table"]

#: The share of each resource class a design of several compute units may take.
BUDGET = 0.8
#: Resources of the XCU280 on the Alveo U280.
U280 = MappingProxyType({"LUT": 1_303_680, "FF": 2_607_360, "DSP": 9_024, "BRAM36": 2_016,
                         "URAM": 960})

# LUTs occupied by each distributed-RAM and shift-register primitive of UltraScale+.
_LUTS_PER_MEMORY_CELL = MappingProxyType({
    "RAM32X1S": 1, "RAM32X1D": 2, "RAM32M": 4, "RAM32M16": 8,
    "RAM64X1S": 1, "RAM64X1D": 2, "RAM64M": 4, "RAM64M8": 8,
    "RAM128X1S": 2, "RAM128X1D": 4, "RAM256X1S": 4, "RAM256X1D": 8, "RAM512X1S": 8,
    "SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1,
})
#: The engines' names inside ``velcro_kernel``, synthesized apart from the rest.
CONV, DENSE = "conv", "dense"

#: Distributed-RAM and shift-register primitives: LUTs used as memory.
LUT_MEMORY_CELL = re.compile(r"RAM(16|32|64|128|256|512)[XM]\w*|SRL\w*")


def lut_count(cells: dict[str, int]) -> tuple[int, int]:
    """LUTs as logic and LUTs as memory in a Yosys cell histogram."""
    logic = sum(n for cell, n in cells.items() if re.fullmatch(r"LUT[1-6]", cell))
    memory = 0
    for cell, n in cells.items():
        if LUT_MEMORY_CELL.fullmatch(cell):
            if cell not in _LUTS_PER_MEMORY_CELL:
                raise ValueError(f"unknown LUT-memory primitive {cell}; known: "
                                 f"{', '.join(_LUTS_PER_MEMORY_CELL)}")
            memory += n * _LUTS_PER_MEMORY_CELL[cell]
    return logic, memory


def _used(figures: dict) -> dict[str, float]:
    logic, memory = lut_count(figures["cells"])
    bram = figures["bram36"]
    return {"LUT": logic + memory, "FF": figures["ff"], "DSP": figures["dsp48e2"],
            "BRAM36": int(bram) if float(bram).is_integer() else bram, "URAM": figures["uram"]}


def resources(figures: dict) -> dict[str, dict]:
    """``{class: {"used", "available", "percent"}}`` for each class of :data:`U280`."""
    used = _used(figures)
    return {name: {"used": used[name], "available": available,
                   "percent": round(100 * used[name] / available, 3)}
            for name, available in U280.items()}


def cus_that_fit(report: dict, budget: float = BUDGET) -> tuple[int, str]:
    """Compute units whose resources stay under ``budget`` of every class of the U280 by
    an :func:`estimate` report, and what limits them: a resource class, or ``HBM`` when
    the channels run out first."""
    from velcro.hw.kernel.connectivity import MAX_CUS

    best, limit = MAX_CUS, "HBM"
    for name, row in report["resources"].items():
        if row["used"] > 0:
            fit = int(budget * row["available"] // row["used"])
            if fit < best:
                best, limit = fit, name
    return best, limit


def compute_units(report: dict, cus: int, budget: float = BUDGET) -> dict:
    """The estimate of ``cus`` compute units: per class the resources they use (``cus``
    times the kernel's) and their percent of the U280, whether every class stays under
    ``budget`` and the HBM channels suffice (``fits``), and :func:`cus_that_fit`."""
    from velcro.hw.kernel.connectivity import MAX_CUS

    rows = {name: {"used": cus * row["used"],
                   "percent": round(100 * cus * row["used"] / row["available"], 3)}
            for name, row in report["resources"].items()}
    fit, limit = cus_that_fit(report, budget)
    return {"cus": cus, "resources": rows, "budget_percent": round(100 * budget, 1),
            "fits": cus <= MAX_CUS and all(r["percent"] <= 100 * budget for r in rows.values()),
            "cus_that_fit": fit, "cus_limited_by": limit}


def conv_arrays_that_fit(kernel: dict, conv: dict) -> tuple[int, str]:
    """Conv arrays that fit beside one copy of the rest of the kernel, and the limiting class.

    ``kernel`` and ``conv`` are :func:`~velcro.sw.build.yosys.synthesize` figures.
    """
    whole, array = _used(kernel), _used(conv)
    best, limit = math.inf, ""
    for name, available in U280.items():
        if array[name] <= 0:
            continue
        rest = max(0, whole[name] - array[name])
        copies = int((available - rest) // array[name])
        if copies < best:
            best, limit = copies, name
    if limit == "":
        raise ValueError("the conv array uses none of the counted resources")
    return max(0, best), limit


def estimate(config, *, jobs: int = 1) -> dict:
    """Synthesize the kernel built with ``config``; the report.

    The dense engine, the conv array and the rest of the kernel are synthesized
    separately, ``jobs`` Yosys processes at a time: the conv array's figures are then
    its own, and on two cores the dense engine (the longest) runs beside the other two.
    """
    from velcro.hw.kernel.connectivity import KERNEL_NAME
    from velcro.hw.kernel.top import VelcroKernel

    from .yosys import synthesize

    start = time.perf_counter()
    kernel = synthesize(VelcroKernel(config), KERNEL_NAME, apart=(DENSE, CONV), jobs=jobs)
    conv = kernel["parts"][CONV]
    fit, limit = conv_arrays_that_fit(kernel, conv)
    parts = {}
    for name, figures in ((KERNEL_NAME, kernel), *kernel["parts"].items()):
        logic, memory = lut_count(figures["cells"])
        parts[name] = {**{k: v for k, v in figures.items() if k not in ("cells", "parts")},
                       "lut": logic + memory, "lut_logic": logic, "lut_memory": memory}
    return {
        "resources": resources(kernel),
        "conv_arrays_that_fit": fit,
        "conv_arrays_limited_by": limit,
        "conv_array": resources(conv),
        "parts": parts,
        "max_lut_levels": max(part["depth"]["lut_levels"] for part in parts.values()),
        "kernel": config.name,
        "seconds": round(time.perf_counter() - start, 1),
    }


def table(report: dict) -> str:
    """The report as a text table: used, available and percent per class."""
    lines = [f"{'resource':8s} {'kernel':>10s} {'conv array':>11s} {'U280':>10s} {'kernel %':>9s}"]
    for name, row in report["resources"].items():
        conv = report["conv_array"][name]["used"]
        lines.append(f"{name:8s} {row['used']:>10,} {conv:>11,} {row['available']:>10,} "
                     f"{row['percent']:>8.2f}%")
    lines.append(f"conv arrays that fit beside the rest of the kernel: "
                 f"{report['conv_arrays_that_fit']} (limited by "
                 f"{report['conv_arrays_limited_by']})")
    if "max_lut_levels" in report:
        from velcro.hw.kernel.connectivity import KERNEL_NAME

        lines.append(f"logic depth (LUT levels between registers), deepest "
                     f"{report['max_lut_levels']}:")
        for name, part in report["parts"].items():
            if name == KERNEL_NAME or "depth" not in part:
                continue
            depth = part["depth"]
            lines.append(f"  {name:8s} {depth['lut_levels']:>3d} levels, {depth['carry']} carry "
                         f"cells on the deepest path")
            for path in depth["paths"][:3]:
                lines.append(f"           {path['lut_levels']:>3d}  {path['from']} -> "
                             f"{path['to']}" + (f" ({path['carry']} carry)" if path["carry"]
                                                 else ""))
    units = report.get("compute_units")
    if units:
        budget = units["budget_percent"]
        lines.append(f"{units['cus']} compute unit(s): " + ", ".join(
            f"{name} {row['percent']:.2f}%" for name, row in units["resources"].items()) +
            f" -> {'fits' if units['fits'] else 'does NOT fit'} (every class under "
            f"{budget:g}%)")
        lines.append(f"compute units that fit, every class under {budget:g}%: "
                     f"{units['cus_that_fit']} (limited by {units['cus_limited_by']})")
    return "\n".join(lines)
