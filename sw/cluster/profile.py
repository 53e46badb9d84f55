"""The preprocessing profile on Ray: the images sharded over tasks, the moments merged.

Each task profiles a contiguous range of the images in the batches the single-process
profiler (:func:`velcro.sw.locality.profile.profile`) would form, since shard
boundaries fall on multiples of the batch size, and hands back its
:class:`~velcro.sw.locality.profile.TapMoments`. The driver merges them in image order
with Chan's pairwise update, so the profile equals the single-process one up to
rounding, whatever the number of shards; the sensitivity (mean squared gradients) is
sharded the same way.

The images are an array (sent to the object store once) or a lazy source that names
them (:class:`~velcro.sw.data.FolderIndex`, :class:`~velcro.sw.data.IdxImages`): then
each worker reads its own range, one batch at a time, and the driver holds only the
moments.
"""

from __future__ import annotations

import numpy as np

from ..data import iter_batches
from ..errors import ModelError
from ..locality.profile import Profile, TapMoments, accumulate, finish, shifts
from ..locality.taps import tap
from ..progress import progress as progress_bar
from .engine import THREADS, import_ray, reraise_user_error, set_threads


def shard_ranges(n: int, shards: int, batch_size: int) -> list[tuple[int, int]]:
    """Up to ``shards`` contiguous ranges covering ``0:n``, each a whole number of
    batches of ``batch_size`` (but the last), as even in batches as can be."""
    batches = -(-n // batch_size)
    shards = max(1, min(shards, batches))
    bounds = [i * batches // shards * batch_size for i in range(shards + 1)]
    bounds[-1] = n
    return [(a, min(b, n)) for a, b in zip(bounds, bounds[1:], strict=False) if a < min(b, n)]


def _profile_shard(tapped, source, start: int, stop: int, batch_size: int,
                   sensitivity: bool, threads: int | None, shift: TapMoments) -> TapMoments:
    set_threads(threads)
    return accumulate(tapped, iter_batches(source, start, stop, batch_size), sensitivity,
                      shift=shift)


def profile(model, images, batch_size: int = 250, sensitivity: bool = False,
            shards: int | None = None, threads: int | None = THREADS,
            progress: bool = False) -> Profile:
    """:func:`velcro.sw.locality.profile.profile` computed by Ray tasks (Ray must be
    initialised, e.g. by :func:`velcro.sw.cluster.engine.connect`).

    Parameters
    ----------
    images
        ``uint8 [N, C, H, W]`` array, or a lazy source with ``len()`` and
        ``read(start, stop)`` (:class:`~velcro.sw.data.FolderIndex`,
        :class:`~velcro.sw.data.IdxImages`) that the workers read themselves.
    shards
        Number of tasks (default: the cluster's CPUs).
    threads
        Torch intra-op threads of each task.
    """
    ray = import_ray()
    tapped = tap(model)
    n = len(images)
    if n == 0:
        raise ModelError("no images to profile")
    if shards is None:
        shards = int(ray.cluster_resources().get("CPU", 1))
    ranges = shard_ranges(n, shards, batch_size)
    task = ray.remote(num_cpus=1, max_retries=1)(_profile_shard)
    model_ref = ray.put(tapped)
    # Every shard shifts its batches by the first image's activations, as one process does.
    first = next(iter_batches(images, 0, 1, 1))
    shift = ray.put(shifts(tapped, first, sensitivity))
    source = ray.put(images) if isinstance(images, np.ndarray) else images
    pending = {task.remote(model_ref, source, a, b, batch_size, sensitivity, threads, shift): i
               for i, (a, b) in enumerate(ranges)}
    done: dict[int, TapMoments] = {}
    merged, following = None, 0
    bar = progress_bar(total=n, desc=f"profiling ({len(ranges)} shards)", unit="img",
                       enabled=progress)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            try:
                done[index] = ray.get(ready[0])
            except Exception as e:
                reraise_user_error(e)
                raise
            bar.update(ranges[index][1] - ranges[index][0])
            # Merge in image order, so the result does not depend on which task ends first.
            while following in done:
                part = done.pop(following)
                if merged is None:
                    merged = part
                else:
                    merged.merge(part)
                following += 1
    finally:
        bar.close()
        for ref in pending:
            ray.cancel(ref)
    return finish(tapped, merged)
