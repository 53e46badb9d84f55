"""``velcro bench`` without a name: every headline figure of the flow, measured in one run.

The figures come from the same functions as the single benchmarks, run on smaller
samples so that the whole suite stays within minutes:

RTL (the shipped kernel in Verilator, the reference CNN exported for ``footwear``,
a few validation images; see :func:`velcro.sw.bench.hw.kernel_figures`)
    Every figure of :func:`~velcro.sw.bench.hw.kernel_figures`: among them
    ``kernel_cycles_reference`` (per descriptor, without and with VELCRO, with the cost
    model's figure beside each), ``cycles_per_image``, ``cycles_per_image_velcro``,
    ``hbm_bytes_per_image`` and ``velcro_cycle_saving`` (1 - cycles with / without);
    besides them ``velcro_C`` (the fraction of conv outputs the VELCRO package
    replaces), ``velcro_saving_over_C`` and ``projected_images_per_s_300mhz`` (one
    compute unit at 300 MHz; the card's figure needs the Yosys estimate of ``velcro
    bench hw``).
Engines (:func:`velcro.sw.bench.hw.conv_figures`, ``dense_figures``)
    ``conv_utilization`` (MAC utilization of a 64x64, 16 -> 16 layer), ``skip_ratio_cycles_50``,
    ``conv_cycles_reference``, ``dense_cycles_over_bound`` and the reference dense layers.
Software (:mod:`velcro.sw.bench.golden`, ``profile``)
    ``golden_images_per_s``, ``torch_images_per_s``, ``profile_images_per_s``,
    ``profile_seconds`` and ``search_seconds`` (the preprocessing split of ``footwear``
    profiled, then a coarse variance search on its search split).
Simulators
    ``sim_verilator_cycles_per_s`` (conv array), ``dense_verilator_cycles_per_s``,
    ``kernel_sim_verilator_cycles_per_s``.

The Yosys resource estimate is ``velcro build estimate``; Icarus speeds are in
``velcro bench hw``.
"""

from __future__ import annotations

import os
import sys
import time


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def software_figures(golden_images: int = 512, profile_images: int = 1000) -> dict:
    """Golden and torch throughput, profiling throughput, profile and search times."""
    from ..data import make_task
    from ..locality.experiment import prepare, run_search
    from ..models import load_reference
    from .golden import bench_golden, reference_package
    from .profile import bench_profile

    _log("golden model and torch throughput")
    package = reference_package()
    task = make_task("footwear")
    images = task.split("validation").images
    images = images[:golden_images] if len(images) >= golden_images else images
    golden = bench_golden(package, images, repeats=2)
    prof = bench_profile(n_images=profile_images, repeats=2)
    _log("profiling and a coarse threshold search on footwear")
    start = time.perf_counter()
    setup = prepare(load_reference(), task, sensitivity=False)
    profiled = time.perf_counter()
    result = run_search(setup, "variance", coarse=True)
    searched = time.perf_counter()
    return {
        "golden_images_per_s": golden["images_per_s"],
        "golden_workers": golden["workers"],
        "torch_images_per_s": prof["inference_images_per_s"],
        "profile_images_per_s": prof["profile_images_per_s"],
        "profile_over_inference": prof["profile_over_inference"],
        "profile_seconds": round(profiled - start, 2),
        "profile_images": setup.n_preprocessing,
        "search_seconds": round(searched - profiled, 2),
        "search_images": setup.n_search,
        "search_C": round(result.C, 4),
        "search_evaluations": result.evaluations,
    }


def run(seed: int = 0) -> dict:
    """Run the whole suite; the figures in one flat dictionary."""
    from velcro.hw.kernel.connectivity import CLOCK_HZ

    from . import hw

    start = time.perf_counter()
    figures = {"cpus": len(os.sched_getaffinity(0)),
               "load_average_1min_start": round(os.getloadavg()[0], 2)}
    figures.update(hw.conv_figures(seed))
    figures.update(hw.dense_figures(seed, icarus=False))
    kernel = hw.kernel_figures()
    figures.update(kernel)
    figures["velcro_C"] = kernel["C_velcro"]
    figures["velcro_saving_over_C"] = round(kernel["velcro_cycle_saving"] / kernel["C_velcro"],
                                            4)
    figures["projected_images_per_s_300mhz"] = round(CLOCK_HZ / kernel["cycles_per_image"], 1)
    figures.update(software_figures())
    figures["bench_seconds"] = round(time.perf_counter() - start)
    return figures
