"""``velcro build verilog|xo|xclbin|estimate``: hardware artefacts.

``verilog`` writes the engines' Verilog; ``xo`` and ``xclbin`` run the Vitis flow of
:mod:`velcro.sw.build.bitstream` for the shipped kernel; ``estimate`` synthesizes it with
Yosys and reports its share of the U280 (:mod:`velcro.sw.build.utilization`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..build.utilization import BUDGET
from ..errors import VelcroError

#: Where ``xo`` and ``xclbin`` write, relative to the working directory.
BUILD_FOLDER = Path("bitstreams") / "build"


def register(sub) -> None:
    p = sub.add_parser("build", help="generate hardware artefacts")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    q = targets.add_parser("verilog", help="write the Verilog of every engine at the shipped "
                           "configuration (one <engine>.v per engine)")
    q.add_argument("--out", type=Path, required=True, help="output folder")
    q.add_argument("--engine", action="append", metavar="NAME",
                   help="only this engine (repeatable; default: all)")
    q.set_defaults(func=cmd_verilog, needs_torch=False)
    for target, what in (("xo", "package the kernel as velcro_kernel.xo (Vivado)"),
                         ("xclbin", "link velcro_u280.xclbin for the Alveo U280 (Vivado, "
                          "v++)")):
        q = targets.add_parser(target, help=f"{what}; without the tools, write the inputs "
                               "and stop")
        q.add_argument("--out", type=Path, default=BUILD_FOLDER,
                       help=f"build folder (default: {BUILD_FOLDER})")
        q.add_argument("--force", action="store_true", help="rebuild even if up to date")
        if target == "xclbin":
            add_cus(q, "compute units to link, each with its own HBM channels")
            q.add_argument("--target", dest="link", choices=("hw", "hw_emu"), default="hw",
                           help="hw: the card (default); hw_emu: hardware emulation, "
                           "velcro_u280.hw_emu.xclbin and emconfig.json for XRT's emulator")
        q.set_defaults(func=cmd_vitis, needs_torch=False)
    q = targets.add_parser("estimate", help="Yosys resource estimate of the kernel against "
                           "the U280's capacity")
    q.add_argument("--json", type=Path, help="also write the figures as JSON")
    q.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="Yosys processes at a time, for the three parts synthesized "
                   "apart: dense engine, conv array, rest (default: %(default)s)")
    add_cus(q, "also say whether this many compute units fit the U280, every resource "
            f"class under {round(100 * BUDGET)} %%")
    q.add_argument("--max-lut-levels", type=int, metavar="N",
                   help="fail (exit 2, after the report is printed and written) if any part "
                   "has a path of more than N LUT levels between registers")
    q.set_defaults(func=cmd_estimate, needs_torch=False)


def add_cus(parser, what: str) -> None:
    from velcro.hw.kernel.connectivity import MAX_CUS

    parser.add_argument("--cus", type=int, default=1, metavar="N",
                        help=f"{what} (1 to {MAX_CUS}; default: 1)")


def check_cus(cus: int) -> int:
    """``--cus`` if a design can hold it, else a :class:`VelcroError`."""
    from velcro.hw.kernel.connectivity import check_cus as check

    try:
        return check(cus)
    except ValueError as e:
        raise VelcroError(f"--cus: {e}") from None


def cmd_verilog(args) -> None:
    from velcro.hw.engines import ENGINES, engine

    try:
        selected = [engine(name) for name in args.engine] if args.engine else list(ENGINES)
    except KeyError as e:
        raise VelcroError(e.args[0]) from None
    for unit in selected:
        start = time.perf_counter()
        path = write_verilog(unit.make(), unit.name, args.out)
        print(f"{path}  ({time.perf_counter() - start:.0f} s)  {unit.summary}")


def write_verilog(component, name: str, out: Path) -> Path:
    """Write the synthesis Verilog of ``component`` as ``out/<name>.v`` (atomically)."""
    from amaranth.back import verilog

    from ..files import write_text

    return write_text(Path(out) / f"{name}.v", verilog.convert(component, name=name,
                                                                emit_src=False))


def _shipped_kernel():
    # Looked up at call time, so that a test can substitute a smaller kernel.
    from velcro.hw.kernel import config as kernel_config

    return kernel_config.SHIPPED


def cmd_vitis(args) -> None:
    from ..build.bitstream import build_xclbin, build_xo, generate

    start = time.perf_counter()
    folder = generate(args.out, _shipped_kernel(), check_cus(getattr(args, "cus", 1)))
    for path in folder.inputs:
        print(path)
    print(f"[build] inputs written ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.target == "xo":
        product, built = folder.xo, build_xo(folder, force=args.force)
    else:
        product = folder.xclbin_for(args.link)
        built = build_xclbin(folder, force=args.force, target=args.link)
    print(f"{product}{'' if built else '  (up to date)'}")


def cmd_estimate(args) -> None:
    from ..build.utilization import compute_units, estimate, table
    from ..build.yosys import YosysError
    from ..errors import ToolError
    from ..files import write_json

    if args.jobs < 1:
        raise VelcroError(f"--jobs must be at least 1, not {args.jobs}")
    limit = args.max_lut_levels
    if limit is not None and limit < 1:
        raise VelcroError(f"--max-lut-levels must be at least 1, not {limit}")
    cus = check_cus(args.cus)
    try:
        report = estimate(_shipped_kernel(), jobs=args.jobs)
    except YosysError as e:
        # The first line names the step, the last one Yosys's own complaint.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ToolError(" ".join(dict.fromkeys((lines[0], lines[-1])))) from None
    report["compute_units"] = compute_units(report, cus)
    print(table(report))
    print(f"[estimate] {report['seconds']:.0f} s")
    if args.json:
        write_json(args.json, report)
    if limit is not None and report["max_lut_levels"] > limit:
        from velcro.hw.kernel.connectivity import KERNEL_NAME

        deep = [(name, part["depth"]) for name, part in report["parts"].items()
                if name != KERNEL_NAME and "depth" in part]
        name, depth = max(deep, key=lambda item: item[1]["lut_levels"])
        path = depth["paths"][0] if depth["paths"] else {}
        raise VelcroError(f"logic depth: {name} has {depth['lut_levels']} LUT levels between "
                          f"registers, over --max-lut-levels {limit} "
                          f"({path.get('from', '?')} -> {path.get('to', '?')})")
