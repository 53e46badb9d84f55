"""``velcro bench vq``: product-quantization training time of a large dense matrix."""

from __future__ import annotations

import os
import time

import numpy as np

from ..errors import VQError


def bench_pq(size: int = 4096, k: int = 256, segment: int = 4, seed: int = 0) -> dict:
    """Train x-axis PQ of a Gaussian ``size x size`` matrix; wall-clock and CPU seconds."""
    import faiss

    from ..vq.methods import product_quantize

    if size < 1 or size < k:
        raise VQError(f"--size must be at least k={k}, not {size}")
    w = np.random.default_rng(seed).normal(0, 0.02, (size, size)).astype(np.float32)
    start, cpu = time.perf_counter(), time.process_time()
    q = product_quantize(w, k, segment, "x", seed)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "matrix": f"{size}x{size}",
        "k": k,
        "segment": segment,
        "segments": size // segment,
        "pq_train_and_encode_seconds": round(seconds, 2),
        "pq_cpu_seconds": round(cpu, 2),
        "compression_rate": round(q.compression_rate, 3),
        "relative_error": round(float(np.linalg.norm(q.reconstruct() - w) / np.linalg.norm(w)),
                                4),
        "faiss": faiss.__version__,
        "cpus": os.cpu_count(),
        # Other processes slow the measurement down; the load tells how busy the host was.
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


HELP = "PQ training of a 4096x4096 matrix (k=256, s=4)"


def add_arguments(parser) -> None:
    parser.add_argument("--size", type=int, default=4096, help="matrix size (default 4096)")
    parser.add_argument("--k", type=int, default=256, help="codewords per segment (default 256)")
    parser.add_argument("--segment", type=int, default=4, help="segment length (default 4)")


def run(args) -> dict:
    return bench_pq(args.size, args.k, args.segment)
