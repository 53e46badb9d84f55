"""``velcro bench golden``: golden-model throughput on the reference package, or on a
torchvision network at 64x64 (``--model resnet18|mobilenet_v2|googlenet``) against the
float model in torch on the same images.

For a torchvision network the package is exported from random weights (throughput
does not depend on them) with a 25 % VELCRO plan profiled on 32 random images, and
the timed images are random 64x64 images; ``torch_images_per_s`` is the float model
in eval mode with torch's default threads, ``golden_over_torch`` the ratio.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..golden import available_cpus

DEFAULT_THRESHOLDS = (20.0, 30.0, 30.0, 20.0)


def reference_package(task_name: str = "footwear", thresholds=DEFAULT_THRESHOLDS):
    """The shipped reference CNN quantized for a task with a uniform-ish VELCRO plan."""
    from ..data import make_task
    from ..export import export
    from ..models import load_reference

    return export(load_reference(), make_task(task_name), thresholds)


def bench_golden(package, images, batch_size: int = 32, workers: int | None = None,
                 repeats: int = 3) -> dict:
    """Best-of-``repeats`` images/s of :class:`~velcro.sw.golden.GoldenModel` on ``images``."""
    from ..golden import GoldenModel

    model = GoldenModel(package, batch_size=batch_size, workers=workers)
    model.run(images[:batch_size])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.run(images)
        times.append(time.perf_counter() - start)
    best = min(times)
    per_image = model.per_image()
    macs = sum(c.macs for c in per_image)
    return {
        "images": len(images),
        "cpus": available_cpus(),
        "workers": model.workers,
        "batch_size": batch_size,
        "C": round(package.C, 4),
        "macs_per_image": macs,
        "macs_skipped_per_image": sum(c.skipped for c in per_image),
        "seconds_best": round(best, 4),
        "seconds_median": round(sorted(times)[len(times) // 2], 4),
        "images_per_s": round(len(images) / best, 1),
        "gmacs_per_s": round(macs * len(images) / best / 1e9, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def torchvision_package(name: str, images: int = 64, threshold: float = 25.0, seed: int = 0):
    """A torchvision network (random weights, one input channel) exported at 64x64 with a
    uniform VELCRO plan, and the float model."""
    import numpy as np
    import torch

    from ..data import Dataset, Task
    from ..export import export
    from ..models import torchvision_model

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = torchvision_model(name)
    data = Dataset(rng.integers(0, 256, (images, 1, 64, 64), dtype=np.uint8),
                   rng.integers(0, 10, images), tuple(str(i) for i in range(10)))
    task = Task("random64", tuple(range(10)), data, preprocessing_fraction=0.5)
    from ..locality.taps import tap

    count = len(tap(model).taps)
    return export(model, task, [threshold] * count), model


def torch_throughput(model, images, batch_size: int, repeats: int) -> float:
    """Best-of-``repeats`` images/s of the float model on ``images``."""
    import torch

    from ..data import to_float

    def once():
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                model(to_float(images[start:start + batch_size]))

    once()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - start)
    return len(images) / best


HELP = "golden-model throughput (images/s) on the reference package or a torchvision network"


def add_arguments(parser) -> None:
    parser.add_argument("--images", type=int, default=2000, help="images per timing run")
    parser.add_argument("--package", type=Path, help="a .velcro package (default: the "
                        "reference CNN on footwear, thresholds 20,30,30,20)")
    parser.add_argument("--model", choices=("resnet18", "mobilenet_v2", "googlenet"),
                        help="a torchvision network at 64x64 instead, against torch float")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images per golden-model step (default 32)")
    parser.add_argument("--workers", type=int, help="threads (default: one per CPU)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs; the best is reported (default 3)")


def run(args) -> dict:
    from ..data import load_fashion_mnist
    from ..errors import DataError
    from ..export.package import load

    if args.images < 1 or args.repeats < 1 or args.batch_size < 1:
        raise DataError("--images, --repeats and --batch-size must be positive")
    if args.model is not None:
        import numpy as np

        if args.package is not None:
            raise DataError("give --package or --model, not both")
        package, model = torchvision_package(args.model)
        images = np.random.default_rng(1).integers(0, 256, (args.images, 1, 64, 64),
                                                    dtype=np.uint8)
        result = {"model": args.model, "layers": len(package.layers),
                  **bench_golden(package, images, args.batch_size, args.workers, args.repeats)}
        result["torch_images_per_s"] = round(torch_throughput(model, images, args.batch_size,
                                                              args.repeats), 1)
        result["golden_over_torch"] = round(result["images_per_s"]
                                            / result["torch_images_per_s"], 3)
        return result
    package = load(args.package) if args.package else reference_package()
    images = load_fashion_mnist("test").images[:args.images]
    if images.shape[1:] != tuple(package.input_shape):
        raise DataError(f"Fashion-MNIST images are {list(images.shape[1:])}, the package "
                        f"expects {list(package.input_shape)}")
    return bench_golden(package, images, args.batch_size, args.workers, args.repeats)
