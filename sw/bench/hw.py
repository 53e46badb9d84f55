"""``velcro bench hw``: cycle figures of the engines in RTL simulation, simulator speed, and
the Yosys resource estimate of every engine.

Every simulated figure comes from a cocotb run of the generated Verilog at the shipped
configuration, in which outputs are checked bit-exactly against the golden model and
cycle counts against the engine's cost model (a mismatch stops the benchmark).

Conv array figures:

``conv_utilization``
    Ideal MAC cycles (``C_in * C_out * H * W * 9`` over the ``9 * lanes * slots``
    products per cycle)
    divided by the measured cycles of a 64x64, 16 -> 16 channel layer without skipping.
``skip_ratio_cycles_50``
    Cycles of that layer with half its output elements skipped (uniformly at random)
    over its cycles with none skipped.
``conv_cycles_reference``
    Cycles of each conv layer of the reference CNN, without and with VELCRO masks
    replacing 40 % of each layer's elements.
``conv_dsp_per_multiplier``
    DSP48E2 slices of the synthesized array over its multipliers (9 per lane, each
    computing both slots' products, and one in each slot's requantizer).

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

Kernel figures (:func:`kernel_figures`), from the runtime's ``sim`` device (Verilator)
running the reference CNN exported for ``footwear`` on the shipped kernel, without
VELCRO and with a C = 0.4 plan: the same threshold T_k = 40 in every conv layer
replaces 40 % of each layer's output elements by their means, so the plan's C (and its
MAC-weighted C) is 0.40. Every package runs twice: on the first validation image
without memory latency, and on the first :data:`IMAGES` (``images``) in one run with
the memory model's HBM-like latency (:data:`~velcro.sim.backend.DEFAULT_LATENCY`
cycles); the figures per image are those of that run unless stated otherwise. Every run is checked
(:func:`check_run`): logits bit-exact against the golden model, and per descriptor
the MAC cycles, skips and cycles against the kernel cost model (busy cycles exactly
without latency, at least the model's with it). A disagreement fails the benchmark
with a one-line :class:`~velcro.sw.errors.DeviceError` (exit code 2). Figures with
``_velcro`` are those of the C = 0.4 plan; the others are without VELCRO.

``cycles_per_image``, ``cycles_per_image_velcro``
    Whole-network kernel cycles per image under the latency, the run's first image
    (which fills the on-chip copies of the constants) and its fixed cycles included;
    ``..._no_latency``: the one-image run without latency.
``stall_cycles_per_image``, ``stall_fraction``
    The kernel's ``stall_cycles`` under the latency, and their share of the cycles.
``velcro_cycle_saving``, ``velcro_saving_over_mac_weighted_C``
    ``1 - cycles_per_image_velcro / cycles_per_image``, and that divided by the plan's
    MAC-weighted C (``mac_weighted_C_velcro``: the share of the conv MACs the plan
    skips); 1 would mean every skipped MAC saves its full share of the cycles.
``hbm_bytes_per_image``, ``hbm_bytes_first_image``
    Bytes read and written over the kernel's memory ports, counted by the memory
    model (whole words read, strobed bytes written): what the run of ``images``
    moves beyond the one-image run, per further image, and what the one-image run
    moves (the constants it fetches, its descriptors, counters and status block
    included). The bytes do not depend on the latency. On the shipped kernel the
    constants stay on chip after the first image (:mod:`velcro.hw.axi.resident`), so
    each further image moves its input and its output.
``cus_that_fit``, ``cus_limited_by``
    Whole kernels (compute units) the XCU280 holds by the Yosys estimate of the
    shipped kernel with every resource class under 80 % of the device and each unit
    on its own HBM channels (:func:`velcro.sw.build.utilization.cus_that_fit`), and
    the resource class (or ``HBM``) that limits them; ``None`` with ``--no-yosys``.
``card_images_per_s_300mhz``, ``..._velcro``
    ``cus_that_fit * 300e6 / cycles_per_image``: every compute unit at 300 MHz, none
    slowing another down (``None`` without the estimate).
``energy_pj_per_image``, ``energy_per_image`` (and ``_velcro``)
    An estimate, not a measurement: activity counts of the checked run times
    published energies per event (:func:`energy_estimate`, :data:`ENERGY_PJ`).
``kernel_cycles_reference``
    Per descriptor: the cost model's cycles (fixed + busy), the measured cycles
    without and with latency and the stall cycles with it.
``kernel_sim_verilator_cycles_per_s``
    Simulated cycles per second of the kernel with its bus models.

``max_lut_levels``, ``lut_levels``
    The logic depth of the synthesized engines: the most LUT levels between registers
    in any of them, and per engine (:func:`velcro.sw.build.depth.lut_levels` states the
    rule: carry chains, wide muxes and DSP-internal paths count no level). Each
    engine's deepest paths are in its ``yosys_<engine>`` record under ``depth``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

HELP = "conv/dense engine cycles in RTL simulation, simulator speed, Yosys resources"

VELCRO_THRESHOLD = 40.0
#: Validation images of the kernel figures.
IMAGES = 4


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


def check_run(package, config, images: np.ndarray, logits: np.ndarray, steps, totals: dict,
              *, exact: bool, what: str = "kernel") -> None:
    """Check one kernel run of ``package`` on ``images`` against the models.

    The logits must equal the golden model's bit for bit. Per descriptor, the kernel's
    counters must agree with the kernel cost model (:mod:`velcro.hw.kernel.cost`, as
    compiled into the program): MAC cycles and skipped elements exactly, ``cycles ==
    fixed + busy + stall``, and ``busy`` equal to the model's with ``exact`` (a run
    whose streams never run dry: no memory latency, no pauses), at least the model's
    otherwise; the run's totals must add up over the descriptors.

    Raises
    ------
    DeviceError
        On the first disagreement, naming it in one line.
    """
    from velcro.hw.kernel.cost import END_FIXED, RUN_FIXED

    from .. import golden
    from ..errors import DeviceError
    from ..runtime.partition import partition
    from ..runtime.program import compile_segment

    n = len(images)
    expected = golden.run(package, images)
    if logits.shape != expected.shape or not np.array_equal(logits, expected):
        wrong = int(np.sum(np.any(np.asarray(logits).reshape(len(logits), -1)
                                  != expected.reshape(len(expected), -1), axis=1)))
        raise DeviceError(f"{what}: the logits of {wrong} of {n} image(s) differ from the "
                          "golden model's")
    stages = partition(package, config)
    if len(stages) != 1 or not stages[0].device:
        raise DeviceError(f"{what}: the package does not run on the kernel in one piece")
    program = compile_segment(list(stages[0].layers), config)
    steps = list(steps)
    if [c.name for c in steps] != [s.name for s in program.steps[:-1]]:
        raise DeviceError(f"{what}: the kernel counted descriptors "
                          f"{[c.name for c in steps]}, the program has "
                          f"{[s.name for s in program.steps[:-1]]}")
    for step, got in zip(program.steps, steps, strict=False):
        cost = step.cost
        checks = (("MAC cycles", got.mac_cycles, n * cost.mac_cycles, True),
                  ("skipped elements", got.skipped, n * cost.skipped, True),
                  ("busy cycles", got.busy, n * cost.busy, exact),
                  ("cycles", got.cycles, n * cost.fixed + got.busy + got.stall_cycles, True))
        for name, measured, modelled, equal in checks:
            if measured != modelled if equal else measured < modelled:
                raise DeviceError(f"{what}: {step.name} ({step.opcode.name}) counted {measured} "
                                  f"{name}, the cost model {'' if equal else 'at least '}"
                                  f"{modelled} for {n} image(s)")
    outside = totals["stall_cycles"] - sum(c.stall_cycles for c in steps)
    want = sum(c.cycles for c in steps) + n * END_FIXED + RUN_FIXED + outside
    if totals["cycles"] != want or totals["skipped"] != sum(c.skipped for c in steps) \
            or totals["images_done"] != n:
        raise DeviceError(f"{what}: the run totals {totals} do not add up over the "
                          f"descriptors ({want} cycles)")


def run_kernel(package, images: np.ndarray, config, *, latency: int) -> dict:
    """One checked run of ``package`` on the ``sim`` device (Verilator) with a memory of
    ``latency`` cycles: logits, per-descriptor counters, totals, bytes moved and the
    simulator's own figures (:func:`check_run` with ``exact`` when ``latency`` is 0)."""
    from velcro.sim.backend import SimAccelerator

    device = SimAccelerator(config, simulator="verilator", latency=latency)
    device.load(package)
    logits = device.run(images)
    record = {"logits": logits, "steps": device.counters(), "totals": dict(device.totals),
              "counts": device.counts(), "sim": dict(device.sim), "latency": latency}
    check_run(package, config, images, logits, record["steps"], record["totals"],
              exact=latency == 0, what=f"{config.name} at latency {latency}")
    return record


def mac_weighted_C(counts) -> float:
    """The fraction of the conv layers' MACs that the plan skips (each replaced element
    weighted by the MACs it would have taken), from per-layer MAC counts."""
    convs = [c for c in counts if c.op == "conv3x3"]
    total = sum(c.macs + c.skipped for c in convs)
    return sum(c.skipped for c in convs) / total if total else 0.0


#: Energy per event of :func:`energy_estimate`, in picojoules. An estimate from published
#: figures, not a measurement of the U280: Horowitz, "Computing's energy problem (and what
#: we can do about it)", ISSCC 2014, 45 nm at 0.9 V (8-bit integer multiply 0.2 pJ, 32-bit
#: integer add 0.1 pJ, 64-bit read of an 8 KB SRAM 10 pJ, taken for writes too), and
#: O'Connor et al., "Fine-Grained DRAM: Energy-Efficient DRAM for Extreme Bandwidth
#: Systems", MICRO 2017 (HBM2 about 3.9 pJ per bit moved).
ENERGY_PJ = {"mac": 0.2 + 0.1, "sram_64bit": 10.0, "hbm_bit": 3.9}


def energy_estimate(record: dict, config, hbm_bytes: float, moved_bytes: float) -> dict:
    """Estimated energy of one image (picojoules) from the activity of a checked run.

    Events, per image: MACs performed (the golden model's count, which the kernel's MAC
    cycles were checked against; codebook lookups count as MACs), on-chip buffer
    accesses and HBM bits (``hbm_bytes``: what an image moves over the memory ports).
    The on-chip accesses are the conv array's feature-buffer reads (each MAC cycle
    reads one word of ``lanes`` bytes from each of the 9 banks of every slot's copy),
    every byte the DMAs
    deliver or write (``moved_bytes``, from device memory or from the on-chip copies
    of the constants) once, for the FIFO or buffer it goes through on chip, and the
    bytes read from the copies (``moved_bytes - hbm_bytes``) once more, in 64-bit
    accesses. Each count is multiplied by its entry of :data:`ENERGY_PJ`.
    """
    n = record["totals"]["images_done"]
    macs = sum(c.macs + c.lookups for c in record["counts"]) / n
    conv_cycles = sum(c.mac_cycles for c in record["steps"] if c.opcode == "CONV") / n
    sram = (conv_cycles * 9 * config.conv.lanes * config.conv.slots + 2 * moved_bytes -
            hbm_bytes) / 8
    parts = {"mac": macs * ENERGY_PJ["mac"], "sram": sram * ENERGY_PJ["sram_64bit"],
             "hbm": hbm_bytes * 8 * ENERGY_PJ["hbm_bit"]}
    return {"pj": round(sum(parts.values())), "parts_pj": {k: round(v) for k, v in
                                                           parts.items()},
            "macs": round(macs), "sram_64bit_accesses": round(sram),
            "hbm_bytes": round(hbm_bytes)}


def kernel_figures(packages: dict | None = None, *, config=None, images: np.ndarray | None = None,
                   latency: int | None = None, fit: int | None = None) -> dict:
    """Checked cycle, traffic and energy figures of the reference CNN on the kernel.

    Parameters
    ----------
    packages : dict, optional
        ``{"plain": package, "velcro": package}``; default the reference CNN exported
        for ``footwear`` without VELCRO and with a uniform 40 % threshold.
    config : KernelConfig, optional
        Default the shipped kernel.
    images : array, optional
        At least two; default the first :data:`IMAGES` validation images of
        ``footwear``. Every package runs on all of them in one run (one kernel call)
        under the latency, and on the first alone without it.
    latency : int, optional
        Memory latency of the figures, default
        :data:`~velcro.sim.backend.DEFAULT_LATENCY`; the one-image run without latency
        is where busy cycles must equal the cost model's.
    fit : int, optional
        Compute units that fit the card
        (:func:`velcro.sw.build.utilization.cus_that_fit`); ``None`` leaves the card
        throughput ``None``.

    Raises
    ------
    DeviceError
        A run's logits or counters disagree with the models (:func:`check_run`).
    """
    from velcro.hw.kernel.config import SHIPPED
    from velcro.sim.backend import DEFAULT_LATENCY

    config = config or SHIPPED
    latency = DEFAULT_LATENCY if latency is None else latency
    if packages is None or images is None:
        from ..data import make_task

        task = make_task("footwear")
        images = task.split("validation").images[:IMAGES] if images is None else images
        if packages is None:
            from ..export import export
            from ..models import load_reference

            model = load_reference()
            packages = {"plain": export(model, task), "velcro":
                        export(model, task, [VELCRO_THRESHOLD] * 4)}
    if len(images) < 2:
        raise ValueError(f"the kernel figures need at least 2 images (the first fills the "
                         f"on-chip copies of the constants), not {len(images)}")
    runs, figures, layers = {}, {"memory_latency_cycles": latency, "images": len(images)}, {}
    for kind, package in packages.items():
        # The first image alone without latency: cycle-exact against the cost model,
        # and the bytes of a one-image run. Then every image under the latency.
        for key, part, delay in (("first", images[:1], 0), ("all", images, latency)):
            _log(f"simulating the {config.name} kernel on the {kind} package, "
                 f"{len(part)} image(s), memory latency {delay} cycles")
            runs[kind, key] = run_kernel(package, part, config, latency=delay)
    n = len(images)
    plain, velcro = runs["plain", "all"], runs["velcro", "all"]
    for kind, suffix in (("plain", ""), ("velcro", "_velcro")):
        run, quick = runs[kind, "all"], runs[kind, "first"]
        for step, slow, fast in zip(compiled_steps(packages[kind], config), run["steps"],
                                    quick["steps"], strict=True):
            entry = layers.setdefault(step.name, {"op": step.opcode.name})
            entry[f"model{suffix}"] = step.cost.fixed + step.cost.busy
            entry[f"cycles_no_latency{suffix}"] = fast.cycles
            entry[f"cycles{suffix}"] = slow.cycles // n
            entry[f"stall{suffix}"] = slow.stall_cycles // n
        figures[f"cycles_per_image{suffix}"] = round(run["totals"]["cycles"] / n, 1)
        figures[f"cycles_per_image_no_latency{suffix}"] = quick["totals"]["cycles"]
        figures[f"stall_cycles_per_image{suffix}"] = round(
            run["totals"]["stall_cycles"] / n, 1)
        figures[f"stall_fraction{suffix}"] = round(
            run["totals"]["stall_cycles"] / run["totals"]["cycles"], 4)
        # What a run of n images moves beyond a run of one, per further image (the
        # bytes do not depend on the latency).
        first = quick["sim"]["bytes"]
        per_image = (run["sim"]["bytes"] - first) / (n - 1)
        figures[f"hbm_bytes_first_image{suffix}"] = first
        figures[f"hbm_bytes_per_image{suffix}"] = round(per_image, 1)
        figures[f"C{suffix}"] = round(packages[kind].C, 4)
        figures[f"mac_weighted_C{suffix}"] = round(mac_weighted_C(run["counts"]), 4)
        energy = energy_estimate(run, config, per_image, first)
        figures[f"energy_pj_per_image{suffix}"] = energy["pj"]
        figures[f"energy_per_image{suffix}"] = energy
    saving = 1 - velcro["totals"]["cycles"] / plain["totals"]["cycles"]
    figures["velcro_cycle_saving"] = round(saving, 4)
    weighted = mac_weighted_C(velcro["counts"])
    figures["velcro_saving_over_mac_weighted_C"] = round(saving / weighted, 4) \
        if weighted else None
    figures.update(card_throughput(figures, fit))
    figures["kernel_cycles_reference"] = layers
    cycles = sum(r["sim"]["cycles"] for r in runs.values())
    seconds = sum(r["sim"]["seconds"] for r in runs.values())
    figures["kernel_sim_verilator_cycles_per_s"] = round(cycles / seconds) if seconds else None
    return figures


def card_throughput(figures: dict, fit: int | None) -> dict:
    """``cus_that_fit`` and the card's images per second at 300 MHz without and with
    VELCRO, from the cycles per image of :func:`kernel_figures` (``None`` without
    ``fit``)."""
    from velcro.hw.kernel.connectivity import CLOCK_HZ

    result = {"cus_that_fit": fit}
    for suffix in ("", "_velcro"):
        result[f"card_images_per_s_300mhz{suffix}"] = None if fit is None else \
            round(fit * CLOCK_HZ / figures[f"cycles_per_image{suffix}"], 1)
    return result


def compiled_steps(package, config) -> list:
    """The kernel descriptors of ``package`` (one device stage) with their cost model."""
    from ..runtime.partition import partition
    from ..runtime.program import compile_segment

    return compile_segment(list(partition(package, config)[0].layers), config).steps[:-1]


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
    fit = None
    if not args.no_yosys:
        from ..build.utilization import resources as utilization

        engines = resources()
        result["lut_levels"] = {name: f["depth"]["lut_levels"] for name, f in engines.items()}
        result["max_lut_levels"] = max(result["lut_levels"].values())
        for name, figures in engines.items():
            result[f"yosys_{name}"] = {key: value for key, value in figures.items()
                                       if key != "cells"}
            if name == "conv_array":
                from velcro.hw.conv.config import SHIPPED
                from velcro.hw.conv.cost import resource_estimate

                multipliers = resource_estimate(SHIPPED)["multipliers"]
                result["conv_multipliers"] = multipliers
                result["conv_dsp_per_multiplier"] = round(figures["dsp48e2"] / multipliers, 3)
            if name == "velcro_kernel":
                from velcro.sw.build.utilization import cus_that_fit

                fit, result["cus_limited_by"] = cus_that_fit(
                    {"resources": utilization(figures)})
    if args.no_kernel:
        result["cus_that_fit"] = fit
    else:
        result.update(card_throughput(result, fit))
    result["bench_seconds"] = round(time.perf_counter() - start)
    return result
