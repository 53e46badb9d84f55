"""``velcro bench hw``: cycle figures of the engines in RTL simulation, simulator speed, and
the Yosys resource estimate of every engine.

Every simulated figure comes from a cocotb run of the generated Verilog at the shipped
configuration, in which outputs are checked bit-exactly against the golden model and
cycle counts against the engine's cost model (a mismatch stops the benchmark).

Conv array figures:

``conv_utilization``
    Ideal MAC cycles (``C_in * C_out * H * W * 9`` over ``9 * lanes`` multipliers)
    divided by the measured cycles of a 64x64, 16 -> 16 channel layer without skipping.
``skip_ratio_cycles_50``
    Cycles of that layer with half its output elements skipped (uniformly at random)
    over its cycles with none skipped.
``conv_cycles_reference``
    Cycles of each conv layer of the reference CNN, without and with VELCRO masks
    replacing 40 % of each layer's elements.
``conv_dsp_per_multiplier``
    DSP48E2 slices of the synthesized array over its multipliers (9 per lane and
    one in the requantizer).

Simulator speed (``sim_*_cycles_per_s``) is simulated cycles over the wall time of
the cocotb test, bench included.

Dense engine figures (:func:`velcro.sim.dense_bench.figures`):

``dense_cycles_over_bound``
    Measured cycles of a 1024 x 256 PQ layer (k = 256, s = 4, one codebook per
    segment) over its index-bandwidth bound, total index bits / index-stream bits per
    cycle; ``dense_cycles`` and ``dense_index_bound`` are the two terms.
``dense_<mode>_<fc1|fc2>_cycles``
    Cycles of the reference CNN's dense layers in int8 mode and compressed by
    ``velcro.sw.vq.methods`` (``pq``: k = 16, s = 4; ``km``: scalar k-means, k = 16), each
    with its ratio to its own index bound.
``dense_<simulator>_cycles_per_s``
    Simulated cycles per second of the shipped dense engine.

Kernel figures (:func:`kernel_figures`), from the runtime's ``sim`` device running the
reference CNN exported for ``footwear`` on the shipped kernel, one validation image,
without and with VELCRO (a uniform 40 % threshold):

``kernel_cycles_reference``
    Per descriptor: measured cycles and the kernel cost model's (fixed + busy), each
    without and with VELCRO.
``kernel_cycles_per_image``, ``kernel_cycles_per_image_velcro``
    Whole-network cycles per image; ``kernel_images_per_s_300mhz`` projects them.
``kernel_sim_verilator_cycles_per_s``
    Simulated cycles per second of the kernel with its bus models.
``kernel_C``, ``kernel_velcro_C``
    The fraction of conv outputs each of the two packages replaces by means.
"""

from __future__ import annotations

import sys
import time

import numpy as np

HELP = "conv/dense engine cycles in RTL simulation, simulator speed, Yosys resources"

VELCRO_THRESHOLD = 40.0


def add_arguments(parser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="stimulus seed")
    parser.add_argument("--no-yosys", action="store_true", help="skip the resource estimate")
    parser.add_argument("--no-icarus", action="store_true",
                        help="skip the Icarus speed measurement")
    parser.add_argument("--no-kernel", action="store_true",
                        help="skip the whole-kernel simulation of the reference CNN")


def _log(message: str) -> None:
    print(f"[bench hw] {message}", file=sys.stderr, flush=True)


def _conv_model(simulator: str):
    from velcro.hw.conv.array import ConvArray
    from velcro.hw.conv.config import SHIPPED
    from velcro.sim import runner

    _log(f"building the shipped conv array for {simulator}")
    return runner.build(f"conv_array-{SHIPPED.name}", lambda: ConvArray(SHIPPED),
                        simulator=simulator)


def _run_conv(model, cases: list[dict], seed: int) -> dict:
    from velcro.hw.conv.config import SHIPPED

    result = model.run("velcro.sim.conv_bench", {"lanes": SHIPPED.lanes, "cases": cases,
                                                  "seed": seed})
    return result


def conv_figures(seed: int) -> dict:
    """Utilization, skip ratio and reference-layer cycles of the shipped conv array."""
    from velcro.hw.conv.config import SHIPPED, ConvLayer
    from velcro.hw.conv.cost import ideal_mac_cycles
    from velcro.sim.conv_cases import finish_case, layer_spec, random_mask, reference_cases

    rng = np.random.default_rng(seed)
    layer = ConvLayer(16, 16, 64, 64)
    x = rng.integers(-128, 128, (16, 64, 64)).astype(np.int8)
    spec = layer_spec(layer, rng, skip=0.0)
    half = dict(spec, mask=random_mask(rng, spec["mask"].shape, 0.5))
    cases = [finish_case("utilization_64x64_16to16", x, [spec], SHIPPED),
             finish_case("skip50_64x64_16to16", x, [half], SHIPPED)]
    reference = reference_cases(SHIPPED, threshold=VELCRO_THRESHOLD)[:4]
    unmasked = [dict(case, name=case["name"] + "_unmasked") for case in
                reference_cases(SHIPPED, threshold=0.0)[:4]]
    model = _conv_model("verilator")
    _log("simulating the utilization, skip and reference layers (Verilator)")
    result = _run_conv(model, cases + reference + unmasked, seed)
    cycles = {record["name"]: record["layers"][0]["cycles"] for record in result["cases"]}
    full, skipped = cycles["utilization_64x64_16to16"], cycles["skip50_64x64_16to16"]
    per_layer = {}
    for plain, masked in zip(unmasked, reference, strict=True):
        name = masked["name"].removeprefix("reference_")
        shape = masked["layers"][0]["layer"]
        per_layer[name] = {
            "shape": f"{shape.c_in}->{shape.c_out} {shape.height}x{shape.width} "
                     f"stride {shape.stride}",
            "cycles": cycles[plain["name"]],
            "cycles_velcro": cycles[masked["name"]],
            "skipped_fraction": round(float(masked["layers"][0]["mask"].mean()), 3),
        }
    return {
        "conv_utilization": round(ideal_mac_cycles(layer, SHIPPED) / full, 4),
        "conv_cycles_64x64_16to16": full,
        "skip_ratio_cycles_50": round(skipped / full, 4),
        "conv_cycles_reference": per_layer,
        "conv_verilator_build_s": model.build_seconds,
        "sim_verilator_cycles_per_s": round(result["sim_cycles"] / result["sim_seconds"]),
    }


def icarus_speed(seed: int) -> dict:
    """Cycles per second of the shipped conv array under Icarus, on a small layer."""
    from velcro.hw.conv.config import SHIPPED, ConvLayer
    from velcro.sim.conv_cases import random_case

    rng = np.random.default_rng(seed)
    model = _conv_model("icarus")
    case = random_case("icarus_speed_16to4_16x16", ConvLayer(16, 4, 16, 16), rng, SHIPPED, 0.25)
    _log("simulating a 16x16 layer (Icarus)")
    result = _run_conv(model, [case], seed)
    return {"conv_icarus_build_s": model.build_seconds,
            "sim_icarus_cycles_per_s": round(result["sim_cycles"] / result["sim_seconds"])}


def dense_figures(seed: int, icarus: bool) -> dict:
    """Index-bound ratio, reference-layer cycles and simulator speed of the dense engine."""
    from velcro.sim.dense_bench import figures

    _log("building and simulating the shipped dense engine"
         + (" (Verilator, Icarus)" if icarus else " (Verilator)"))
    return figures(simulators=("verilator", "icarus") if icarus else ("verilator",), seed=seed)


def kernel_figures() -> dict:
    """Cycles of the reference CNN on the shipped kernel, without and with VELCRO."""
    from velcro.hw.kernel.config import SHIPPED
    from velcro.hw.kernel.connectivity import CLOCK_HZ
    from velcro.sim.backend import SimAccelerator

    from ..data import make_task
    from ..export import export
    from ..models import load_reference
    from ..runtime.partition import partition
    from ..runtime.program import compile_segment

    task = make_task("footwear")
    image = task.split("validation").images[:1]
    model = load_reference()
    figures, layers = {}, {}
    for suffix, thresholds in (("", None), ("_velcro", [VELCRO_THRESHOLD] * 4)):
        package = export(model, task, thresholds)
        program = compile_segment(list(partition(package, SHIPPED)[0].layers), SHIPPED)
        _log(f"simulating the kernel on the reference CNN{suffix.replace('_', ' with ')}")
        device = SimAccelerator(SHIPPED, simulator="verilator")
        device.load(package)
        device.run(image)
        for step, counters in zip(program.steps, device.counters(), strict=False):
            entry = layers.setdefault(step.name, {"op": step.opcode.name})
            entry[f"cycles{suffix}"] = counters.cycles
            entry[f"model{suffix}"] = step.cost.fixed + step.cost.busy
        figures[f"kernel_cycles_per_image{suffix}"] = device.totals["cycles"]
        figures[f"kernel{suffix}_C"] = round(package.C, 4)
        figures["kernel_sim_verilator_cycles_per_s"] = round(
            device.sim["cycles"] / device.sim["seconds"])
    figures["kernel_cycles_reference"] = layers
    figures["kernel_images_per_s_300mhz"] = round(
        CLOCK_HZ / figures["kernel_cycles_per_image_velcro"], 1)
    figures["kernel_velcro_cycle_ratio"] = round(
        figures["kernel_cycles_per_image_velcro"] / figures["kernel_cycles_per_image"], 4)
    return figures


def resources() -> dict:
    """Yosys ``synth_xilinx -family xcup`` figures of every engine."""
    from velcro.hw.engines import ENGINES

    from ..build.yosys import synthesize

    figures = {}
    for unit in ENGINES:
        _log(f"yosys synth_xilinx -family xcup on {unit.name} (minutes)")
        figures[unit.name] = synthesize(unit.make(), unit.name)
    return figures


def run(args) -> dict:
    start = time.perf_counter()
    result = conv_figures(args.seed)
    if not args.no_icarus:
        result.update(icarus_speed(args.seed))
    result.update(dense_figures(args.seed, icarus=not args.no_icarus))
    if not args.no_kernel:
        result.update(kernel_figures())
    if not args.no_yosys:
        for name, figures in resources().items():
            result[f"yosys_{name}"] = {key: value for key, value in figures.items()
                                       if key != "cells"}
            if name == "conv_array":
                from velcro.hw.conv.config import SHIPPED
                from velcro.hw.conv.cost import resource_estimate

                multipliers = resource_estimate(SHIPPED)["multipliers"]
                result["conv_multipliers"] = multipliers
                result["conv_dsp_per_multiplier"] = round(figures["dsp48e2"] / multipliers, 3)
    result["bench_seconds"] = round(time.perf_counter() - start)
    return result
