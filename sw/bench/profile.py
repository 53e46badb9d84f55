"""``velcro bench profile``: profiling throughput versus plain inference on the reference model.

With ``--ray ADDRESS`` it measures instead the profile of Fashion-MNIST's 60,000 training
images on Ray (:mod:`velcro.sw.cluster.profile`) with 1 and then 2 workers of one torch
thread each, the workers reading their own ranges of the IDX file: images/s of each,
their ratio, and the driver's peak resident memory.
"""

from __future__ import annotations

import time


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_profile(n_images: int = 2000, batch_size: int = 250, repeats: int = 5) -> dict:
    """Profiling throughput versus plain inference on the reference model (same batches)."""
    import torch

    from ..data import load_fashion_mnist, to_float
    from ..locality.profile import profile
    from ..locality.taps import tap
    from ..models import load_reference

    model = load_reference()
    images = load_fashion_mnist("test").images[:n_images]
    tapped = tap(model)

    def infer():
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                model(to_float(images[start:start + batch_size]))

    infer()
    # Interleaved, so that a burst of load on a shared machine slows both alike.
    t_infer = t_profile = float("inf")
    for _ in range(repeats):
        t_infer = min(t_infer, _best_of(infer, 1))
        t_profile = min(t_profile, _best_of(lambda: profile(tapped, images, batch_size), 1))
    t_sens = _best_of(lambda: profile(tapped, images, batch_size, sensitivity=True), 1)
    return {
        "images": len(images),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "inference_images_per_s": round(len(images) / t_infer, 1),
        "profile_images_per_s": round(len(images) / t_profile, 1),
        "profile_over_inference": round(t_infer / t_profile, 3),
        "profile_sensitivity_images_per_s": round(len(images) / t_sens, 1),
    }


def bench_ray_profile(address: str, workers=(1, 2), batch_size: int = 250) -> dict:
    """The 60,000 Fashion-MNIST training images profiled on Ray with each number of
    ``workers`` (one shard and one torch thread per worker)."""
    import resource

    import numpy as np

    from ..cluster.engine import connect
    from ..cluster.profile import profile
    from ..data import IdxImages
    from ..models import load_reference

    model = load_reference()
    source = IdxImages.fashion_mnist("train")
    figures = {"images": len(source), "address": address}
    results = {}
    with connect(address) as cluster:
        figures["cluster_cpus"] = cluster.cpus
        for n in workers:
            start = time.perf_counter()
            results[n] = profile(model, source, batch_size, shards=n, threads=1)
            seconds = time.perf_counter() - start
            figures[f"workers_{n}_seconds"] = round(seconds, 2)
            figures[f"workers_{n}_images_per_s"] = round(len(source) / seconds, 1)
    first, last = workers[0], workers[-1]
    figures[f"speedup_{last}_over_{first}"] = round(
        figures[f"workers_{last}_images_per_s"] / figures[f"workers_{first}_images_per_s"], 3)
    figures["max_relative_difference"] = float(max(
        np.max(np.abs(a.variance - b.variance) / np.maximum(np.abs(b.variance), 1e-300))
        for a, b in zip(results[last].layers, results[first].layers, strict=True)))
    # ru_maxrss is in KiB on Linux.
    figures["driver_peak_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    figures["moment_tensors_mib"] = round(sum(
        2 * layer.mean.nbytes for layer in results[last].layers) / 2**20, 2)
    return figures


HELP = "profiling throughput versus plain inference (reference model); with --ray, on Ray"


def add_arguments(parser) -> None:
    parser.add_argument("--images", type=int, default=2000, help="images per timing run")
    parser.add_argument("--ray", metavar="ADDRESS", help="instead: profile the 60,000 "
                        "training images on Ray (local:N, auto or an address) with 1 and 2 "
                        "workers")


def run(args) -> dict:
    if args.ray is not None:
        return bench_ray_profile(args.ray)
    return bench_profile(args.images)
