"""Automatic per-layer threshold search for VELCRO.

The paper chose thresholds by trial and error. :func:`search` does it greedily: from
``T = 0`` it repeatedly tries raising each layer's threshold by a step and takes the
move that loses the least search-split accuracy per unit of ``C`` gained, among the
moves that keep accuracy at or above ``baseline - tolerance``. When no move is
feasible the step halves, down to ``min_step`` percentile points. Every candidate is
measured on the *search* split only; the validation split is never passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from .errors import PlanError
from .evaluate import accuracy
from .plan import applied, compress, plan_C, scores
from .profile import Profile
from .taps import Tapped


@dataclass
class SearchPoint:
    thresholds: list[float]
    C: float
    accuracy: float


@dataclass
class SearchResult:
    """Chosen thresholds, their C and search-split accuracy, and the path that led there."""

    criterion: str
    thresholds: list[float]
    C: float
    accuracy: float
    baseline_accuracy: float
    evaluations: int
    path: list[SearchPoint] = field(default_factory=list)


def search(tapped: Tapped, profile: Profile, images: np.ndarray, labels: np.ndarray,
           criterion: str = "variance", tolerance: float = 0.0, start_step: float = 20.0,
           min_step: float = 1.25, baseline: float | None = None,
           progress: bool = False) -> SearchResult:
    """Maximize C subject to ``accuracy(search images) >= baseline - tolerance``.

    Parameters
    ----------
    images, labels
        The search split (never the validation split).
    tolerance
        Accuracy that may be lost, as a fraction (0.005 = half a point).
    """
    if not 0.0 <= tolerance < 1.0:
        raise PlanError(f"tolerance {tolerance} out of range [0, 1)")
    if not 0 < min_step <= start_step <= 100:
        raise PlanError(f"steps must satisfy 0 < min_step <= start_step <= 100, "
                        f"not {min_step}, {start_step}")
    layer_scores = scores(profile, criterion)
    cache: dict[tuple[float, ...], float] = {}

    def measure(thresholds):
        key = tuple(thresholds)
        if key not in cache:
            plan = compress(profile, thresholds, criterion, layer_scores)
            with applied(tapped, plan):
                cache[key] = accuracy(tapped.module, images, labels)
        return cache[key]

    if baseline is None:
        baseline = accuracy(tapped.module, images, labels)
    target = baseline - tolerance
    current = [0.0] * len(profile.layers)
    current_acc, current_C = baseline, 0.0
    path = [SearchPoint(list(current), 0.0, baseline)]
    step = start_step
    bar = tqdm(desc=f"search ({criterion})", unit="eval", disable=not progress, leave=False)
    while step >= min_step:
        best = None
        for k in range(len(current)):
            if current[k] >= 100.0:
                continue
            candidate = list(current)
            candidate[k] = min(100.0, current[k] + step)
            c = plan_C(profile, candidate, layer_scores)
            if c <= current_C:
                # Ties: the mask did not grow, so the move is free.
                current = candidate
                continue
            acc = measure(candidate)
            bar.update()
            bar.set_postfix(C=f"{current_C:.3f}", step=step)
            if acc < target:
                continue
            cost = (current_acc - acc) / (c - current_C)
            if best is None or (cost, -c) < (best[0], -best[2]):
                best = (cost, candidate, c, acc)
        if best is None:
            step /= 2
            continue
        _, current, current_C, current_acc = best
        path.append(SearchPoint(list(current), current_C, current_acc))
    bar.close()
    return SearchResult(criterion, current, current_C, current_acc, baseline, len(cache), path)
