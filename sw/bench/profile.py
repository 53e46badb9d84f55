"""``velcro bench profile``: profiling throughput versus plain inference on the reference model."""

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


HELP = "profiling throughput versus plain inference (reference model)"


def add_arguments(parser) -> None:
    parser.add_argument("--images", type=int, default=2000, help="images per timing run")


def run(args) -> dict:
    return bench_profile(args.images)
