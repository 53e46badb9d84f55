"""cocotb bench of ``velcro_kernel``: the host driver, run inside the simulator.

The payload (:func:`velcro.sim.runner.load_payload`) holds the kernel configuration,
a package, the AXI pause probability, a seed, the memory's ``latency`` (and
optionally ``write_latency``; both default to
:data:`~velcro.sim.backend.DEFAULT_LATENCY` cycles) and a list of *actions*, run in
order on one simulated card:

``{"run": images, "timeout": s}``
    ``Accelerator.run`` on uint8 images; the outcome holds the logits, the
    per-descriptor counters and the run totals, or the exception it raised, and the
    bytes of the last status block the kernel wrote (``block``).
``{"watchdog": cycles}``
    The per-descriptor limit the driver gives the kernel from now on (0: none).
``{"fail": (argument, offset, length)}``, ``{"fail_writes": port}``, ``{"heal": True}``
    Make the bytes ``offset .. offset + length`` of the buffer passed as kernel
    argument ``argument`` (of the first device stage), or every write through
    ``port``, answer ``SLVERR``; remove every such fault.
``{"poke": (argument, offset, bytes)}``
    Overwrite bytes of that buffer on the host and sync them to the device.
``{"reload": True}``
    Load the package again.
``{"stall": port}``
    Hold the read data of ``port`` forever.

The driver is the runtime's own (:class:`~velcro.sw.runtime.accelerator.Accelerator`
over :class:`~velcro.sim.backend.SimPlatform`); it runs in a thread started by
:func:`cocotb.task.bridge` and waits for bus transactions through
:func:`cocotb.task.resume`. Every outcome also gives the simulated cycles, the wall
time and the bytes the kernel moved over its memory ports (``bytes``) during its
action; the result, the channel-cycles of AXI pause injected over the session
(``pause_cycles``).
"""

from __future__ import annotations

import time

import cocotb
import numpy as np
from cocotb.task import bridge

from velcro.hw.kernel.regmap import REGMAP
from velcro.sw.errors import DeviceError
from velcro.sw.runtime.accelerator import Accelerator

from . import runner
from .backend import CLOCK_PS, DEFAULT_LATENCY, KernelTB, SimPlatform


def _cycles() -> int:
    from cocotb.simtime import get_sim_time

    return int(get_sim_time("ps")) // CLOCK_PS


def _session(platform: SimPlatform, payload: dict) -> dict:
    """The synchronous part: the driver's calls, one outcome per action."""
    accelerator = Accelerator(platform, payload["config"], "sim")
    accelerator.load(payload["package"])
    outcomes = []
    for action in payload["actions"]:
        start_cycles, start = _cycles(), time.perf_counter()
        start_bytes = platform.tb.bytes_moved
        outcome = {}
        if "run" in action:
            try:
                logits = accelerator.run(np.asarray(action["run"]), timeout=action.get("timeout"))
                outcome["logits"] = logits
                outcome["counters"] = accelerator.last_steps
            except DeviceError as e:
                outcome["error"] = e
            outcome["totals"] = dict(accelerator.last_totals)
            outcome["block"] = accelerator.driver.last_block
        elif "watchdog" in action:
            accelerator.driver.watchdog = action["watchdog"]
        elif "fail" in action:
            argument, offset, length = action["fail"]
            buffer = accelerator.buffers(0)[argument]
            platform.tb.fail(REGMAP[argument].port, buffer.device_address + offset, length)
        elif "fail_writes" in action:
            platform.tb.fail_writes(action["fail_writes"])
        elif "heal" in action:
            platform.tb.heal()
        elif "poke" in action:
            argument, offset, raw = action["poke"]
            buffer = accelerator.buffers(0)[argument]
            buffer[offset:offset + len(raw)] = np.frombuffer(raw, np.uint8)
            buffer.sync_to_device()
        elif "reload" in action:
            accelerator.load(payload["package"])
        elif "stall" in action:
            platform.tb.stall(action["stall"])
        outcome["cycles"] = _cycles() - start_cycles
        outcome["bytes"] = platform.tb.bytes_moved - start_bytes
        outcome["seconds"] = time.perf_counter() - start
        outcomes.append(outcome)
    return {"outcomes": outcomes,
            "port_errors": {p: v.errors for p, v in platform.tb.views.items()}}


@cocotb.test()
async def kernel_session(dut):
    """Every action of the payload, on one simulated card."""
    payload = runner.load_payload()
    tb = KernelTB(dut, pause=payload.get("pause", 0.0), seed=payload.get("seed", 0),
                  latency=payload.get("latency", DEFAULT_LATENCY),
                  write_latency=payload.get("write_latency"))
    await tb.reset()
    start = time.perf_counter()
    result = await bridge(_session)(SimPlatform(tb), payload)
    result["sim_cycles"] = _cycles()
    result["pause_cycles"] = tb.pause_cycles
    result["sim_seconds"] = time.perf_counter() - start
    runner.save_result(result)
