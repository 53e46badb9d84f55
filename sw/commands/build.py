"""``velcro build verilog|xo|xclbin``: hardware artefacts.

``verilog`` writes the engines' Verilog; ``xo`` and ``xclbin`` run the Vitis flow of
:mod:`velcro.sw.bitstream` for the shipped kernel.
"""

from __future__ import annotations

import time
from pathlib import Path

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
    q.set_defaults(func=cmd_verilog)
    for target, what in (("xo", "package the kernel as velcro_kernel.xo (Vivado)"),
                         ("xclbin", "link velcro_u280.xclbin for the Alveo U280 (Vivado, "
                          "v++)")):
        q = targets.add_parser(target, help=f"{what}; without the tools, write the inputs "
                               "and stop")
        q.add_argument("--out", type=Path, default=BUILD_FOLDER,
                       help=f"build folder (default: {BUILD_FOLDER})")
        q.add_argument("--force", action="store_true", help="rebuild even if up to date")
        q.set_defaults(func=cmd_vitis)


def cmd_verilog(args) -> None:
    from ...hw.engines import ENGINES, engine

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

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.v"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(verilog.convert(component, name=name, emit_src=False))
    tmp.replace(path)
    return path


def _shipped_kernel():
    # Looked up at call time, so that a test can substitute a smaller kernel.
    from ...hw import kernel_config

    return kernel_config.SHIPPED


def cmd_vitis(args) -> None:
    from ..bitstream import build_xclbin, build_xo, generate

    start = time.perf_counter()
    folder = generate(args.out, _shipped_kernel())
    for path in folder.inputs:
        print(path)
    print(f"[build] inputs written ({time.perf_counter() - start:.0f} s)", flush=True)
    build = build_xo if args.target == "xo" else build_xclbin
    product = folder.xo if args.target == "xo" else folder.xclbin
    built = build(folder, force=args.force)
    print(f"{product}{'' if built else '  (up to date)'}")
