"""The threshold search on Ray: one step's candidate plans measured by parallel actors.

Each step of :func:`velcro.sw.locality.search.search` tries raising every layer's
threshold by the same amount; those candidates are independent, so
:class:`ActorEvaluator` spreads them over actors. Every actor holds the model and the
search images once, and its own :class:`~velcro.sw.locality.search.Evaluator`: a
``rebase`` is sent to all of them, and a candidate is measured by exactly the code
and the torch thread count of the serial evaluator, so the search takes the same path
and ends at the same thresholds, C, accuracy and number of evaluations as a serial
search with the same ``threads``.
"""

from __future__ import annotations

import numpy as np

from ..locality.profile import Profile
from ..locality.search import Evaluator, SearchResult
from ..locality.search import search as serial_search
from ..locality.taps import Tapped
from .engine import THREADS, import_ray, reraise_user_error


class _SearchWorker:
    """An :class:`Evaluator` in an actor: the model and the search images, held once."""

    def __init__(self, tapped, profile, criterion, layer_scores, images, labels, threads):
        from .engine import set_threads

        set_threads(threads)
        # Arrays from the object store are read-only; torch wants its own copy of labels.
        labels = np.array(labels)
        self.evaluator = Evaluator(tapped, profile, criterion, layer_scores, images, labels,
                                   threads)

    def rebase(self, thresholds):
        self.evaluator.rebase(thresholds)

    def measure_all(self, candidates):
        return self.evaluator.measure_all(candidates)


class ActorEvaluator:
    """Measures candidate plans on up to ``actors`` Ray actors, with
    :class:`~velcro.sw.locality.search.Evaluator`'s interface (Ray must be initialised).

    Build it through :func:`evaluator_factory`, which fixes the number of actors.
    """

    def __init__(self, tapped: Tapped, profile: Profile, criterion: str,
                 layer_scores: list[np.ndarray], images: np.ndarray, labels: np.ndarray,
                 threads: int | None = THREADS, actors: int | None = None):
        ray = self.ray = import_ray()
        if actors is None:
            actors = int(ray.cluster_resources().get("CPU", 1))
        actors = max(1, min(actors, len(tapped.taps)))
        worker = ray.remote(num_cpus=1, max_restarts=0)(_SearchWorker)
        shared = [ray.put(value) for value in (tapped, profile, layer_scores, images, labels)]
        tapped_ref, profile_ref, scores_ref, images_ref, labels_ref = shared
        self.actors = [worker.remote(tapped_ref, profile_ref, criterion, scores_ref,
                                     images_ref, labels_ref, threads)
                       for _ in range(actors)]

    def _get(self, refs):
        try:
            return self.ray.get(refs)
        except Exception as e:
            reraise_user_error(e)
            raise

    def rebase(self, thresholds: list[float]) -> None:
        """The new base plan, on every actor."""
        self._get([actor.rebase.remote(list(thresholds)) for actor in self.actors])

    def measure_all(self, candidates: list[list[float]]) -> list[tuple[float, float, bytes]]:
        """Every candidate's figures, in order; candidates dealt out in contiguous runs."""
        if not candidates:
            return []
        per = -(-len(candidates) // len(self.actors))
        runs = [candidates[i:i + per] for i in range(0, len(candidates), per)]
        parts = self._get([actor.measure_all.remote(run)
                           for actor, run in zip(self.actors, runs, strict=False)])
        return [tuple(figures) for part in parts for figures in part]

    def close(self) -> None:
        """Stop the actors."""
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []


def evaluator_factory(actors: int | None = None):
    """A factory for :func:`~velcro.sw.locality.search.search`'s ``evaluator``."""
    def build(tapped, profile, criterion, layer_scores, images, labels, threads):
        return ActorEvaluator(tapped, profile, criterion, layer_scores, images, labels,
                              threads, actors)
    return build


def search(tapped: Tapped, profile: Profile, images: np.ndarray, labels: np.ndarray,
           criterion: str = "variance", threads: int | None = THREADS,
           actors: int | None = None, **options) -> SearchResult:
    """:func:`velcro.sw.locality.search.search` with each step's candidates measured by
    Ray actors; the result is that of the serial search with the same ``threads``."""
    return serial_search(tapped, profile, images, labels, criterion, threads=threads,
                         evaluator=evaluator_factory(actors), **options)
