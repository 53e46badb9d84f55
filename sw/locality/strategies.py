"""Threshold search strategies beside the greedy one
(:func:`~velcro.sw.locality.search.search`'s ``strategy``).

Both work through a :class:`~velcro.sw.locality.search.Session`: the same evaluator,
cache of measured plans and acceptance rule as the greedy search, on the search split
only. Each returns its path, a list of points the rule admits with C rising; the last
is the choice.

``coordinate``
    Coordinate ascent: each layer in turn, first to last, is pushed as far as the rule
    admits with the other thresholds held. A ladder of thresholds ``start_step`` points
    apart, from the layer's threshold up to 100, is measured together; the largest one
    admitted is taken (accuracy on a finite split is not monotonic in a threshold, so a
    refused rung does not end the ladder), then bisection between it and the next rung
    narrows the gap to ``min_step`` points. Sweeps over the layers repeat until one
    changes nothing, at most ``sweeps`` times.
``evolution``
    A (mu+lambda) evolution strategy over threshold vectors. Fitness is C among
    admitted plans; a refused plan ranks below every admitted one, by its accuracy.
    Every generation each of ``LAMBDA`` children copies a parent drawn from the ``MU``
    best, and moves each layer's threshold with probability ``1 / layers`` (at least
    one layer) by a normal step of ``sigma`` points, rounded to ``GRID`` and clipped to
    [0, 100]. ``sigma`` starts at ``start_step / 2`` and halves after ``PATIENCE``
    generations in a row that do not raise the best C; the search ends when ``sigma``
    falls below ``min_step``, or when the ``budget`` of evaluations (the baseline
    included) is spent. The random numbers come from ``numpy.random.default_rng(seed)``
    alone, so one seed gives one result for the same figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import PlanError

if TYPE_CHECKING:
    from .search import SearchPoint, Session, _State

#: The search strategies, without torch (the command line reads them).
STRATEGIES = ("greedy", "coordinate", "evolution")
#: The evolution's parents, children per generation and default evaluation budget.
MU, LAMBDA, BUDGET = 4, 8, 240
#: Generations without a better C before the evolution halves its mutation step.
PATIENCE = 3
#: The grid of the evolution's thresholds, in percentile points (repeats hit the cache).
GRID = 0.25


def coordinate(session: Session, current: _State, start_step: float, min_step: float,
               max_C: float, sweeps: int) -> list[SearchPoint]:
    """Coordinate ascent (the module docstring) from ``current``; its path."""
    path = [session.point(current)]
    for _ in range(sweeps):
        moved = False
        for k in range(len(current.thresholds)):
            if current.C >= max_C:
                return path
            pushed = _push(session, current, k, start_step, min_step)
            if pushed is not None:
                current = pushed
                session.rebase(current.thresholds)
                path.append(session.point(current))
                moved = True
        if not moved:
            break
    return path


def _push(session: Session, current: _State, k: int, start_step: float,
          min_step: float) -> _State | None:
    """``current`` with layer ``k``'s threshold as far up as the rule admits (None: no
    higher C is admitted)."""

    def with_k(t: float) -> list[float]:
        out = list(current.thresholds)
        out[k] = min(100.0, t)
        return out

    low = current.thresholds[k]
    ladder = []
    t = low
    while t < 100.0:
        t = min(100.0, t + start_step)
        ladder.append(with_k(t))
    # Rungs whose mask did not grow (percentile ties) cost nothing to skip.
    ladder = [c for c in ladder if session.C(c) > current.C]
    session.measure_all(ladder)
    best = None
    for state in map(session.state, ladder):  # measured: from the cache
        if session.admitted(state.accuracy, state.right):
            best = state
    session.bar.set_postfix(C=f"{current.C:.3f}", layer=k)
    if best is None:
        low_state, high = current, (ladder[0][k] if ladder else low)
    else:
        low_state, high = best, min(100.0, best.thresholds[k] + start_step)
    # Bisect between the last admitted threshold and the rung above it.
    low = low_state.thresholds[k]
    while high - low > min_step:
        mid = (low + high) / 2
        candidate = with_k(mid)
        if session.C(candidate) <= low_state.C:
            low = mid
            continue
        state = session.state(candidate)
        if session.admitted(state.accuracy, state.right):
            low_state, low = state, mid
        else:
            high = mid
    return low_state if low_state.C > current.C else None


def evolution(session: Session, current: _State, start_step: float, min_step: float,
              max_C: float, seed: int, budget: int | None) -> list[SearchPoint]:
    """The (mu+lambda) evolution (the module docstring) from ``current``; its path."""
    budget = BUDGET if budget is None else budget
    if budget < 2:
        raise PlanError(f"the evaluation budget must be at least 2 (the baseline and one "
                        f"candidate), not {budget}")
    rng = np.random.default_rng(seed)
    n = len(current.thresholds)

    def rank(state: _State) -> tuple:
        if session.admitted(state.accuracy, state.right):
            return (1, state.C, -state.loss)
        return (0, state.accuracy, -state.loss)

    def mutate(parent: list[float], sigma: float) -> list[float]:
        child = list(parent)
        layers = np.flatnonzero(rng.random(n) < 1 / n)
        if len(layers) == 0:
            layers = [int(rng.integers(n))]
        for k in layers:
            t = child[k] + rng.normal(0.0, sigma)
            child[k] = float(np.clip(np.round(t / GRID) * GRID, 0.0, 100.0))
        return child

    population = [current]
    best = current
    path = [session.point(current)]
    sigma, stale = start_step / 2, 0
    while sigma >= min_step and best.C < max_C:
        room = budget - session.evaluations
        if room <= 0:
            break
        children, seen = [], {tuple(s.thresholds) for s in population}
        for _ in range(LAMBDA * 4):
            if len(children) == min(LAMBDA, room):
                break
            parent = population[int(rng.integers(len(population)))]
            child = mutate(parent.thresholds, sigma)
            if tuple(child) in seen or tuple(child) in session.cache:
                continue
            seen.add(tuple(child))
            children.append(child)
        session.measure_all(children)
        offspring = [session.state(c) for c in children]  # measured: from the cache
        population = sorted(population + offspring, key=rank, reverse=True)[:MU]
        leader = population[0]
        if rank(leader) > rank(best) and leader.C > best.C:
            best, stale = leader, 0
            session.rebase(best.thresholds)
            path.append(session.point(best))
        else:
            stale += 1
            if stale == PATIENCE:
                sigma, stale = sigma / 2, 0
        session.bar.set_postfix(C=f"{best.C:.3f}", sigma=sigma)
    return path
