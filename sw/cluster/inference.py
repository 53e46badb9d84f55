"""``velcro run`` across devices: the images sharded over Ray actors, one per device.

:class:`ShardedDevice` offers what ``velcro run`` uses of a device (``run``,
``counts``, ``counters``, ``totals``, ``sim``, ``package``, ``config``, ``close``).
Each of its workers is an actor that opens one device (``golden``, a ``sim``
simulator process, or one card ``alveo:N``) and loads the package once. ``run``
deals the images out in contiguous shards, one per worker, and joins the logits in
image order; the counters of the workers are summed (:meth:`Counters.merge
<velcro.sw.runtime.counters.Counters.merge>`), so predictions and counters equal
those of one device running every image.

A worker whose process dies is named on standard error and its shard is run again
once, on the first healthy worker; if that fails too, the run stops with a
:class:`~velcro.sw.errors.ClusterError`.
"""

from __future__ import annotations

import sys

import numpy as np

from ..errors import ClusterError
from .engine import import_ray, remote_cause, reraise_user_error


class DeviceWorker:
    """One device in an actor: opened with ``options`` and loaded with ``package`` once."""

    def __init__(self, name: str, spec: str, package, options: dict, chunk: int | None):
        from ..runtime import Accelerator

        self.name, self.chunk = name, chunk
        self.device = Accelerator.open(spec, **options)
        self.device.load(package)

    def run(self, images: np.ndarray, start: int) -> np.ndarray:
        """Logits of ``images`` (images ``start:`` of the whole run), ``chunk`` at a time."""
        size = self.chunk or max(len(images), 1)
        return np.concatenate([self.device.run(images[i:i + size])
                               for i in range(0, len(images), size)])

    def counters(self):
        """``(Counters, simulator figures or None)`` of every run so far."""
        from ..runtime.counters import Counters

        counters = Counters()
        counters.add(self.device.counters(), self.device.totals)
        return counters, getattr(self.device, "sim", None)

    def close(self) -> None:
        self.device.close()


def shards(n: int, workers: int) -> list[tuple[int, int]]:
    """``workers`` contiguous ranges covering ``0:n``, sizes differing by at most one
    (empty ranges left out)."""
    bounds = [round(i * n / workers) for i in range(workers + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if a < b]


def worker_names(specs: list[str]) -> list[str]:
    """``golden-0``, ``golden-1``, ... for repeated kinds; ``alveo-N`` for card N."""
    from ..runtime import parse_device

    names = []
    for i, spec in enumerate(specs):
        kind, index = parse_device(spec)
        names.append(f"alveo-{index}" if kind == "alveo" else f"{kind}-{i}")
    return names


class ShardedDevice:
    """A package on several devices, one Ray actor each (Ray must be initialised).

    Parameters
    ----------
    specs
        One device spec per worker (``["golden", "golden"]``, ``["alveo:0", "alveo:1"]``).
    options
        :meth:`Accelerator.open <velcro.sw.runtime.Accelerator.open>` options of every
        device (``config``, and the backend's).
    chunk
        Images per device run inside a worker (default: the whole shard).
    worker
        The actor class (:class:`DeviceWorker` or a subclass).
    """

    def __init__(self, specs: list[str], package, options: dict, chunk: int | None = None,
                 worker=DeviceWorker):
        self.ray = ray = import_ray()
        self.package, self.config = package, options.get("config")
        self.names = worker_names(specs)
        actor = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(worker)
        package_ref = ray.put(package)
        self.workers = [actor.remote(name, spec, package_ref, options, chunk)
                        for name, spec in zip(self.names, specs, strict=True)]
        self.dead: set[int] = set()
        self.images = 0
        self._merged = None
        # Opening fails here, not at the first run: a missing card or bitstream.
        for i, name in enumerate(self.names):
            try:
                self._call(i, "counters")
            except Exception as e:
                if not self._died(e):
                    raise
                raise ClusterError(f"worker {name} died while opening {specs[i]} "
                                   f"({_cause(e)})") from None

    def _call(self, i: int, method: str, *args):
        return self._get(getattr(self.workers[i], method).remote(*args))

    def _get(self, ref):
        try:
            return self.ray.get(ref)
        except Exception as e:
            reraise_user_error(e)
            raise

    def _died(self, error) -> bool:
        from ray.exceptions import RayActorError

        return isinstance(error, RayActorError)

    def run(self, images: np.ndarray) -> np.ndarray:
        """Logits of ``images``, in order, the shards run by the workers in parallel."""
        live = [i for i in range(len(self.workers)) if i not in self.dead]
        if not live:
            raise ClusterError("every worker has died")
        ranges = shards(len(images), len(live))
        refs = [(w, a, b, self.workers[w].run.remote(images[a:b], a))
                for w, (a, b) in zip(live, ranges, strict=False)]
        parts, failed = {}, []
        for w, a, b, ref in refs:
            try:
                parts[a] = self._get(ref)
            except Exception as e:
                if not self._died(e):
                    raise
                self.dead.add(w)
                failed.append((w, a, b, e))
        for w, a, b, error in failed:
            healthy = next((i for i, _, _, _ in refs if i not in self.dead), None)
            if healthy is None:
                raise ClusterError(f"worker {self.names[w]} died ({_cause(error)}) and no "
                                   "healthy worker is left to run its shard")
            print(f"velcro: worker {self.names[w]} died ({_cause(error)}); re-running its "
                  f"shard on {self.names[healthy]}", file=sys.stderr, flush=True)
            try:
                parts[a] = self._get(self.workers[healthy].run.remote(images[a:b], a))
            except Exception as e:
                if not self._died(e):
                    raise
                self.dead.add(healthy)
                raise ClusterError(f"worker {self.names[healthy]} died too ({_cause(e)}) "
                                   f"re-running the shard of {self.names[w]} (images "
                                   f"{a}:{b}); giving up") from None
        self.images += len(images)
        self._merged = None
        return np.concatenate([parts[a] for a in sorted(parts)])

    def _counters(self):
        """The counters of every live worker, merged (cached until the next run)."""
        if self._merged is None:
            from ..runtime.counters import Counters

            merged, sim = Counters(), None
            for i in range(len(self.workers)):
                if i in self.dead:
                    continue
                counters, figures = self._call(i, "counters")
                merged.merge(counters)
                if figures is not None:
                    sim = dict(figures) if sim is None else {
                        "cycles": sim["cycles"] + figures["cycles"],
                        "seconds": sim["seconds"] + figures["seconds"],
                        # The simulators are built side by side: the longest build counts.
                        "build_seconds": max(sim["build_seconds"], figures["build_seconds"])}
            self._merged = merged, sim
        return self._merged

    @property
    def totals(self) -> dict:
        """Run totals summed over every worker."""
        return self._counters()[0].totals

    @property
    def sim(self) -> dict:
        """Simulator figures of the ``sim`` workers: cycles and seconds summed, the
        longest build (empty for other devices)."""
        return self._counters()[1] or {}

    def counters(self):
        """Per-descriptor counters summed over every worker."""
        return self._counters()[0].steps()

    def counts(self):
        """MACs performed and skipped per layer over every image run."""
        from .. import golden

        return [c.times(self.images) for c in golden.GoldenModel(self.package).per_image()]

    def close(self) -> None:
        """Close the devices and stop the actors."""
        for i, worker in enumerate(self.workers):
            if i not in self.dead:
                try:
                    self.ray.get(worker.close.remote())
                except Exception:  # a device that fails to close must not hide the run
                    pass
            self.ray.kill(worker)
        self.workers = []


def _cause(error) -> str:
    """A short reason for a worker's death, on one line."""
    from ..errors import printable

    cause = remote_cause(error)
    text = str(cause).strip().splitlines()
    reason = next((line for line in text if "exit" in line.lower() or "died" in line.lower()),
                  text[0] if text else type(cause).__name__)
    return printable(reason.strip())[:160]
