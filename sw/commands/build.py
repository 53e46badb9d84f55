"""``velcro build verilog``: the Verilog of the hardware engines."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import VelcroError


def register(sub) -> None:
    p = sub.add_parser("build", help="generate hardware artefacts")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    q = targets.add_parser("verilog", help="write the Verilog of every engine at the shipped "
                           "configuration (one <engine>.v per engine)")
    q.add_argument("--out", type=Path, required=True, help="output folder")
    q.add_argument("--engine", action="append", metavar="NAME",
                   help="only this engine (repeatable; default: all)")
    q.set_defaults(func=cmd_verilog)


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
