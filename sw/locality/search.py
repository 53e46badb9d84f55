"""Automatic per-layer threshold search for VELCRO.

The paper chose thresholds by trial and error. :func:`search` does it greedily: from
``T = 0`` it repeatedly tries raising each layer's threshold by a step and takes the
move that raises the search-split cross-entropy the least per unit of ``C`` gained,
among the moves its acceptance rule admits. The loss ranks moves where accuracy
alone cannot: most small moves change no prediction at all, yet some of them bring
many images closer to a wrong class than others. When no move is admitted the step
halves, down to ``min_step`` percentile points. Every candidate is measured on the
*search* split only; the validation split is never passed in.

Acceptance rules (:data:`RULES`):

``strict``
    top-1 accuracy on the search split at least ``baseline - tolerance``.
``mcnemar``
    the candidate is not significantly less accurate than the uncompressed model on
    the search split: of the images where exactly one of the two is right, ``b`` are
    right only for the model and ``c`` only for the candidate; the candidate is
    refused when the exact one-sided McNemar test (binomial, ``b`` of ``b + c`` at
    1/2) gives ``P(X >= b) < level``. Small samples of flips then no longer stop the
    search on noise: at ``level`` 0.5 the rule is the strict one up to ties, and
    lower levels need more evidence of a loss to refuse a move.

Most candidates change one layer's threshold, so the search keeps the raw activation
reaching every tap under the current plan and runs only the rest of the model from
the changed layer on (:meth:`~velcro.sw.locality.taps.Tapped.tail`), when those activations fit
in memory and no residual connection crosses the tap.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import to_float
from ..errors import PlanError
from ..progress import progress as progress_bar
from . import strategies
from .plan import applied, check_thresholds, compress, plan_C, scores
from .profile import Profile
from .rules import LEVEL, RULES, mcnemar_p
from .strategies import STRATEGIES
from .taps import Tapped

CACHE_BYTES = 1 << 30
BATCH = 500


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
    rule: str = "strict"
    level: float | None = None
    strategy: str = "greedy"
    seconds: float = 0.0


def search(tapped: Tapped, profile: Profile, images: np.ndarray, labels: np.ndarray,
           criterion: str = "variance", tolerance: float = 0.0, start_step: float = 20.0,
           min_step: float = 1.25, explore_moves: int = 6, explore_step: float = 5.0,
           explore_slack: float = 0.01, start: list[float] | None = None,
           max_C: float = 1.0, threads: int | None = None, evaluator=None,
           progress: bool = False, rule: str = "strict", level: float = LEVEL,
           strategy: str = "greedy", seed: int = 0, budget: int | None = None,
           sweeps: int = 3) -> SearchResult:
    """Maximize C subject to the acceptance ``rule`` on the search images (see the
    module docstring): ``strict`` keeps ``accuracy >= baseline - tolerance``,
    ``mcnemar`` refuses plans significantly less accurate than the model at ``level``.

    ``strategy`` chooses how (:data:`~velcro.sw.locality.strategies.STRATEGIES`):
    ``greedy`` (below); ``coordinate``, each layer in turn pushed as far as the rule
    admits, up to ``sweeps`` sweeps; or ``evolution``, a (mu+lambda) evolution of
    threshold vectors from ``seed`` within ``budget`` evaluations
    (:mod:`~velcro.sw.locality.strategies`). Each result is a point the rule admits.

    Greedy: when the constrained descent is stuck, up to ``explore_moves``
    unconstrained moves of ``explore_step`` points (cheapest in loss per C, as always)
    look past the obstacle: accuracy on a finite split is not monotonic in C, and a
    point a few moves further may again satisfy the constraint. Exploration stops early
    once accuracy falls ``explore_slack`` below the target.

    Parameters
    ----------
    images, labels
        The search split (never the validation split).
    tolerance
        Accuracy that may be lost, as a fraction (0.005 = half a point): the strict
        rule's (``mcnemar`` takes ``level`` instead).
    start
        Thresholds to start from (default: all zero); it must satisfy the constraint.
    max_C
        Stop once C reaches this value.
    threads
        Torch intra-op threads of every evaluation (default: leave torch's setting).
        Floating-point results can depend on it; evaluations with the same count give
        the same figures wherever they run.
    evaluator
        Builds the object that measures candidate plans, called like
        :class:`Evaluator` (which it defaults to); the candidates of one step are
        handed to its ``measure_all`` together, so it may measure them in parallel
        (:class:`velcro.sw.cluster.search.ActorEvaluator`).
    """
    if not 0.0 <= tolerance < 1.0:
        raise PlanError(f"tolerance {tolerance} out of range [0, 1)")
    if rule not in RULES:
        raise PlanError(f"unknown acceptance rule {rule!r}; rules are {', '.join(RULES)}")
    if not 0.0 < level < 1.0:
        raise PlanError(f"level {level} out of range (0, 1)")
    if rule != "strict" and tolerance:
        raise PlanError(f"a tolerance is the strict rule's; the {rule} rule takes a level")
    if not 0 < min_step <= start_step <= 100:
        raise PlanError(f"steps must satisfy 0 < min_step <= start_step <= 100, "
                        f"not {min_step}, {start_step}")
    if strategy not in STRATEGIES:
        raise PlanError(f"unknown search strategy {strategy!r}; strategies are "
                        f"{', '.join(STRATEGIES)}")
    if budget is not None and strategy != "evolution":
        raise PlanError(f"an evaluation budget is the evolution strategy's, not {strategy}'s")
    if sweeps < 1:
        raise PlanError(f"sweeps must be at least 1, not {sweeps}")
    began = time.perf_counter()
    session = Session(tapped, profile, images, labels, criterion, rule, level, tolerance,
                      threads, evaluator, progress, f"search ({criterion}, {strategy})")
    try:
        current = session.start(start)
        if strategy == "greedy":
            path = _greedy(session, current, start_step, min_step, explore_moves,
                           explore_step, explore_slack, max_C)
        elif strategy == "coordinate":
            path = strategies.coordinate(session, current, start_step, min_step, max_C,
                                         sweeps)
        else:
            path = strategies.evolution(session, current, start_step, min_step, max_C,
                                        seed, budget)
    finally:
        session.close()
    best = path[-1]
    return SearchResult(criterion, list(best.thresholds), best.C, best.accuracy,
                        session.baseline, session.evaluations, path, rule,
                        level if rule == "mcnemar" else None, strategy,
                        time.perf_counter() - began)


class Session:
    """What every strategy shares: the evaluator, the cache of measured plans (the
    number of evaluations is its size), the baseline and the acceptance rule."""

    def __init__(self, tapped: Tapped, profile: Profile, images: np.ndarray,
                 labels: np.ndarray, criterion: str, rule: str, level: float,
                 tolerance: float, threads: int | None, evaluator, progress: bool,
                 desc: str):
        self.profile, self.rule, self.level = profile, rule, level
        self.layer_scores = scores(profile, criterion)
        self.evaluator = (evaluator or Evaluator)(tapped, profile, criterion,
                                                  self.layer_scores, images, labels, threads)
        self.cache: dict[tuple[float, ...], tuple[float, float, bytes]] = {}
        self.bar = progress_bar(desc=desc, unit="eval", enabled=progress)
        self.baseline, loss, self.base_right = self.measure([0.0] * len(profile.layers))
        self.base_loss = loss
        self.target = self.baseline - tolerance
        self.base_bits = np.unpackbits(np.frombuffer(self.base_right, np.uint8))

    @property
    def evaluations(self) -> int:
        return len(self.cache)

    def measure_all(self, candidates):
        """Measure every candidate not measured yet (together), then look all up."""
        cache = self.cache
        new = list(dict.fromkeys(tuple(t) for t in candidates if tuple(t) not in cache))
        if new:
            figures = self.evaluator.measure_all([list(k) for k in new])
            for key, value in zip(new, figures, strict=True):
                cache[key] = value
            self.bar.update(len(new))
        return [cache[tuple(t)] for t in candidates]

    def measure(self, thresholds):
        return self.measure_all([thresholds])[0]

    def C(self, thresholds) -> float:
        return plan_C(self.profile, thresholds, self.layer_scores)

    def admitted(self, acc: float, right: bytes) -> bool:
        if self.rule == "strict":
            return acc >= self.target
        bits = np.unpackbits(np.frombuffer(right, np.uint8))
        b = int(np.sum(self.base_bits & ~bits & 1))
        c = int(np.sum(bits & ~self.base_bits & 1))
        return mcnemar_p(b, c) >= self.level

    def state(self, thresholds: list[float]) -> _State:
        """The measured state of ``thresholds``."""
        acc, loss, right = self.measure(thresholds)
        return _State(list(thresholds), self.C(thresholds), acc, loss, right=right)

    def start(self, start: list[float] | None) -> _State:
        """The starting state (all zero unless ``start``), with the evaluator based on it."""
        if start is None:
            current = _State([0.0] * len(self.profile.layers), 0.0, self.baseline,
                             self.base_loss, right=self.base_right)
        else:
            current = self.state(check_thresholds(start, self.profile.names))
        self.evaluator.rebase(current.thresholds)
        return current

    def point(self, state: _State) -> SearchPoint:
        return SearchPoint(list(state.thresholds), state.C, state.accuracy)

    def rebase(self, thresholds: list[float]) -> None:
        self.evaluator.rebase(thresholds)

    def close(self) -> None:
        self.bar.close()
        self.evaluator.close()


def _greedy(session: Session, current: _State, start_step: float, min_step: float,
            explore_moves: int, explore_step: float, explore_slack: float,
            max_C: float) -> list[SearchPoint]:
    """The greedy search (the module docstring); returns its path, the choice last."""

    def best_move(state: _State, step: float, constrained: bool) -> _State | None:
        """The cheapest move of one layer by ``step`` points (free tie moves are taken)."""
        moves = []
        for k in range(len(state.thresholds)):
            if state.thresholds[k] >= 100.0:
                continue
            candidate = list(state.thresholds)
            candidate[k] = min(100.0, candidate[k] + step)
            c = session.C(candidate)
            if c <= state.C:
                # Percentile ties: the mask did not grow, so the move is free.
                state = _State(candidate, state.C, state.accuracy, state.loss,
                               right=state.right)
                continue
            moves.append((candidate, c))
        # The moves are independent of one another's figures: measure them together.
        best = None
        for (candidate, c), (acc, loss, right) in zip(
                moves, session.measure_all([m for m, _ in moves]), strict=True):
            if constrained and not session.admitted(acc, right):
                continue
            move = _State(candidate, c, acc, loss, (loss - state.loss) / (c - state.C),
                          right)
            if best is None or (move.cost, -move.C) < (best.cost, -best.C):
                best = move
        session.bar.set_postfix(C=f"{state.C:.3f}", step=step)
        return best

    target = session.target
    path = [session.point(current)]
    while current.C < max_C:
        step = start_step
        while step >= min_step and current.C < max_C:
            move = best_move(current, step, constrained=True)
            if move is None:
                step /= 2
                continue
            current = move
            session.rebase(current.thresholds)
            path.append(session.point(current))
        probe, found = current, None
        for _ in range(explore_moves):
            probe = best_move(probe, explore_step, constrained=False)
            if probe is None or probe.accuracy < target - explore_slack:
                break
            session.rebase(probe.thresholds)
            if session.admitted(probe.accuracy, probe.right):
                found = probe
                break
        if found is None:
            break
        current = found
        path.append(session.point(current))
    return path


@dataclass
class _State:
    thresholds: list[float]
    C: float
    accuracy: float
    loss: float
    cost: float = 0.0
    right: bytes = b""


class Evaluator:
    """Accuracy and mean cross-entropy of plans on fixed images, reusing unchanged prefixes.

    After :meth:`rebase` it holds the raw activation reaching every tap under that
    plan; a plan whose thresholds differ only from layer ``k`` on is then measured by
    running the model's tail from tap ``k``. Results are identical to a full forward
    pass; only the work differs. ``threads`` fixes torch's intra-op threads while it
    works (None: torch's setting).
    """

    def __init__(self, tapped: Tapped, profile: Profile, criterion: str,
                 layer_scores: list[np.ndarray], images: np.ndarray, labels: np.ndarray,
                 threads: int | None = None):
        if len(images) == 0:
            raise PlanError("the search split has no images")
        self.threads = threads
        self.tapped, self.profile = tapped, profile
        self.criterion, self.layer_scores = criterion, layer_scores
        self.batches = [to_float(images[i:i + BATCH]) for i in range(0, len(images), BATCH)]
        self.labels = torch.from_numpy(labels)
        per_image = sum(int(np.prod(layer.shape)) for layer in profile.layers) * 4
        cacheable = per_image * len(images) <= CACHE_BYTES
        self.tails = [tapped.tail(k) if cacheable else None for k in range(len(tapped.taps))]
        self.base: list[float] | None = None
        self.raw: list[list[torch.Tensor]] = []

    def _plan(self, thresholds):
        return compress(self.profile, thresholds, self.criterion, self.layer_scores)

    def rebase(self, thresholds: list[float]) -> None:
        """Record the raw tap inputs under ``thresholds`` for later partial runs."""
        if all(t is None for t in self.tails):
            return
        with _threads(self.threads):
            self._rebase(thresholds)

    def _rebase(self, thresholds: list[float]) -> None:
        raw: list[list[torch.Tensor]] = [[] for _ in self.tapped.taps]
        hooks = [t.register_forward_hook(lambda m, i, o, k=k: raw[k].append(i[0]))
                 for k, t in enumerate(self.tapped.taps)]
        try:
            with applied(self.tapped, self._plan(thresholds)), torch.inference_mode():
                for x in self.batches:
                    self.tapped.module(x)
        finally:
            for h in hooks:
                h.remove()
        self.base, self.raw = list(thresholds), raw

    def measure_all(self, candidates: list[list[float]]) -> list[tuple[float, float, bytes]]:
        """``(accuracy, mean cross-entropy, which images are right)`` of every candidate,
        in order; the last as ``np.packbits`` of the per-image hits, in image order."""
        with _threads(self.threads):
            return [self.measure(t) for t in candidates]

    def close(self) -> None:
        """Release what the evaluator holds (nothing here; workers elsewhere)."""

    def measure(self, thresholds: list[float]) -> tuple[float, float]:
        first = None
        if self.base is not None:
            changed = [k for k, (a, b) in enumerate(zip(thresholds, self.base, strict=True))
                       if a != b]
            first = changed[0] if changed else None
        tail = self.tails[first] if first is not None else None
        with applied(self.tapped, self._plan(thresholds)), torch.inference_mode():
            if tail is not None:
                logits = torch.cat([tail(a) for a in self.raw[first]])
            else:
                logits = torch.cat([self.tapped.module(x) for x in self.batches])
        loss = torch.nn.functional.cross_entropy(logits, self.labels).item()
        hits = (logits.argmax(1) == self.labels).numpy()
        return int(hits.sum()) / len(self.labels), loss, np.packbits(hits).tobytes()


@contextlib.contextmanager
def _threads(threads: int | None):
    """Torch intra-op threads set to ``threads`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
