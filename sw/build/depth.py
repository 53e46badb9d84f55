"""Logic depth of a synthesized engine: LUT levels between registers.

:func:`lut_levels` reads the JSON netlist Yosys writes after ``synth_xilinx`` (one
flattened module of UltraScale+ primitives) and finds, for every timing endpoint, the
largest number of LUTs a signal passes through since it left a timing start point.
The rule, chosen to match what limits the clock in Vivado's timing reports:

* Start points: flip-flop outputs (``FD*``), block RAM and UltraRAM outputs
  (``RAMB*``, ``URAM*``, registered reads), DSP48E2 outputs when the slice holds its
  ``M`` or ``P`` register, module inputs and constants.
* End points: every input of those cells and every module output.
* ``LUT1`` .. ``LUT6`` count one level each. A distributed RAM or shift register
  (``RAM*M``, ``RAM*X1*``, ``SRL*``) counts one level from its address inputs to its
  outputs; its data input is an end point.
* Carry chains (``CARRY4``/``CARRY8``), the wide-function muxes (``MUXF7``..``F9``),
  inverters and buffers count no level: a carry chain's delay per stage is a small
  fraction of a LUT and its routing. The carry cells on the deepest path are reported
  beside it (``carry``), so that a long adder is not hidden.
* A DSP48E2 without ``M`` and ``P`` registers passes its inputs to its outputs at no
  level (its internal multiplier and adder are hard logic).
* Any other cell, such as an engine synthesized apart and seen as a black box, is a
  start and end point.

The depth is per netlist, so for an engine synthesized apart from the rest of the
kernel a path that crosses its boundary ends there: the boundary is counted as a
register on both sides.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .utilization import LUT_MEMORY_CELL

__all__ = ["DEEPEST", "lut_levels"]

#: Paths reported per netlist, deepest first.
DEEPEST = 5
#: Named nets listed along a path, at most.
THROUGH = 12

_LUT = re.compile(r"LUT[1-6]")
_REGISTER = re.compile(r"FD[CPRS]E|RAMB\w*|URAM\w*")
_MEMORY_ADDRESS = re.compile(r"A(DDR)?[A-H]?\d*|DPRA\d*")
_CARRY = re.compile(r"CARRY[48]")
_WIRE = re.compile(r"MUXF[789]|INV|[IO]BUF\w*|BUFG\w*|GND|VCC|DSP48E2")


def _dsp_registered(cell: dict) -> bool:
    parameters = cell.get("parameters", {})
    return any(int(str(parameters.get(name, "0")), 2) for name in ("MREG", "PREG"))


def _kind(cell: dict) -> str:
    """``register``, ``lut``, ``memory`` (LUT RAM), ``carry`` or ``wire`` (no level)."""
    kind = cell["type"]
    if _REGISTER.fullmatch(kind) or (kind == "DSP48E2" and _dsp_registered(cell)):
        return "register"
    if _LUT.fullmatch(kind):
        return "lut"
    if LUT_MEMORY_CELL.fullmatch(kind):
        return "memory"
    if _CARRY.fullmatch(kind):
        return "carry"
    if _WIRE.fullmatch(kind):
        return "wire"
    # Anything else (an engine synthesized apart, seen as a black box) is a boundary.
    return "register"


def _names(module: dict) -> dict[int, str]:
    """A readable name for each bit: a public net name where there is one."""
    # Per bit (rank, length, label): public names first, then the shortest.
    names: dict[int, tuple[int, int, str]] = {}
    for name, net in module.get("netnames", {}).items():
        rank = 1 if net.get("hide_name") or name.startswith("$") else 0
        for i, bit in enumerate(net["bits"]):
            if isinstance(bit, int):
                label = name if len(net["bits"]) == 1 else f"{name}[{i}]"
                key = (rank, len(label))
                if bit not in names or key < names[bit][:2]:
                    names[bit] = (*key, label)
    # A buffer's two sides are one signal: a register behind an output buffer takes the
    # port's name.
    for cell in module.get("cells", {}).values():
        if re.fullmatch(r"[IO]BUF\w*|BUFG\w*", cell["type"]):
            ends = [bit for bits in cell.get("connections", {}).values() for bit in bits
                    if isinstance(bit, int)]
            named = [names[bit] for bit in ends if bit in names and names[bit][0] == 0]
            for bit in ends:
                if named and names.get(bit, (1,))[0] == 1:
                    names[bit] = named[0]
    return {bit: label for bit, (_, _, label) in names.items()}


def lut_levels(netlist: dict | str | Path, top: str | None = None,
               deepest: int = DEEPEST) -> dict:
    """The logic depth of module ``top`` of a Yosys JSON ``netlist`` (dict or path).

    Returns ``{"lut_levels", "carry", "paths"}``: the most LUT levels on any path, the
    carry cells on that path, and the ``deepest`` paths as ``{"from", "to",
    "lut_levels", "carry", "through"}`` (net names of the start and end points, and
    the named nets between them in order), deepest first.
    Raises ``ValueError`` for a netlist without the module or with a combinational loop.
    """
    if not isinstance(netlist, dict):
        netlist = json.loads(Path(netlist).read_text())
    modules = netlist.get("modules", {})
    if top is None:
        tops = [name for name, m in modules.items()
                if int(str(m.get("attributes", {}).get("top", "0")), 2)]
        if len(tops) != 1:
            raise ValueError(f"name the top module: the netlist marks {len(tops)} as top")
        top = tops[0]
    if top not in modules:
        raise ValueError(f"the netlist has no module {top!r}")
    module = modules[top]
    cells = list(module.get("cells", {}).values())
    kinds = [_kind(cell) for cell in cells]

    driver: dict[int, int] = {}          # bit -> combinational cell driving it
    comb_inputs: list[list[int]] = []    # per cell: input bits that reach its outputs
    for n, (cell, kind) in enumerate(zip(cells, kinds, strict=True)):
        directions = cell.get("port_directions", {})
        inputs: list[int] = []
        for port, bits in cell.get("connections", {}).items():
            if directions.get(port) == "output":
                if kind != "register":
                    for bit in bits:
                        if isinstance(bit, int):
                            driver[bit] = n
            elif kind != "register" and (kind != "memory" or _MEMORY_ADDRESS.fullmatch(port)):
                inputs.extend(bit for bit in bits if isinstance(bit, int))
        comb_inputs.append(inputs)

    # Arrival at each combinational cell's outputs: (LUT levels, carry cells, source bit),
    # by an iterative depth-first walk (paths run to thousands of cells).
    arrival: dict[int, tuple[int, int, int]] = {}
    via: dict[int, int | None] = {}     # the input bit each cell's deepest path comes by
    state: dict[int, int] = {}          # 1 = on the walk's stack, 2 = done

    def at_bit(bit: int) -> tuple[int, int, int]:
        n = driver.get(bit)
        return (0, 0, bit) if n is None else arrival[n]

    for root in range(len(cells)):
        if kinds[root] == "register" or root in state:
            continue
        stack = [root]
        while stack:
            n = stack[-1]
            if state.get(n) == 2:
                stack.pop()
                continue
            if n not in state:
                state[n] = 1
                pending = [driver[b] for b in comb_inputs[n]
                           if b in driver and state.get(driver[b]) != 2]
                for p in pending:
                    if state.get(p) == 1:
                        raise ValueError(f"combinational loop through a {cells[p]['type']} "
                                         f"cell of {top}")
                    stack.append(p)
                if pending:
                    continue
            best_bit = max(comb_inputs[n], default=None, key=lambda b: at_bit(b)[:2])
            best = (0, 0, -1) if best_bit is None else at_bit(best_bit)
            via[n] = best_bit
            lut = kinds[n] in ("lut", "memory")
            arrival[n] = (best[0] + lut, best[1] + (kinds[n] == "carry"), best[2])
            state[n] = 2
            stack.pop()

    names = _names(module)
    ends: dict[str, tuple[int, int, int, int]] = {}

    def end(label: str, bits) -> None:
        for bit in bits:
            if isinstance(bit, int):
                got = at_bit(bit)
                if got[:2] > ends.get(label, (-1, -1))[:2]:
                    ends[label] = (*got, bit)

    def through(bit: int) -> list[str]:
        """The public net names a path passes, from its start to its end."""
        seen: list[str] = []
        while bit is not None and bit in driver:
            label = names.get(bit)
            if label and not label.startswith("$") and label not in seen:
                seen.append(label)
            bit = via[driver[bit]]
        return seen[::-1][:THROUGH]

    for cell, kind in zip(cells, kinds, strict=True):
        directions = cell.get("port_directions", {})
        if kind == "register":
            q = [b for port, bits in cell["connections"].items()
                 if directions.get(port) == "output" for b in bits if isinstance(b, int)]
            label = names.get(q[0], cell["type"]) if q else cell["type"]
            end(re.sub(r"\[\d+\]$", "", label), [b for port, bits in cell["connections"].items()
                        if directions.get(port) == "input" for b in bits])
        elif kind == "memory":
            end(cell["type"], [b for port, bits in cell["connections"].items()
                               if directions.get(port) == "input"
                               and not _MEMORY_ADDRESS.fullmatch(port) for b in bits])
    for name, port in module.get("ports", {}).items():
        if port["direction"] == "output":
            end(name, port["bits"])
    ranked = sorted(ends.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))
    paths = [{"from": names.get(source, "input") if source >= 0 else "constant", "to": to,
              "lut_levels": levels, "carry": carry, "through": through(bit)}
             for to, (levels, carry, source, bit) in ranked[:deepest]]
    worst = ranked[0][1] if ranked else (0, 0)
    return {"lut_levels": worst[0], "carry": worst[1], "paths": paths}
