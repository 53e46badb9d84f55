"""The kernel's counters, summed over the runs of a device.

Every kernel call gives one :class:`~velcro.sw.runtime.driver.StepCounters` per
descriptor and the run totals of the kernel's status block (cycles, MAC cycles,
skipped elements, stall cycles, images done). A device adds them up in :class:`Counters`:
per descriptor over every run, the run totals over every run, and the figures of
the last run alone. The ``golden`` and ``alveo`` devices
(:class:`~velcro.sw.runtime.accelerator.Accelerator`) and the ``sim`` device
(:class:`~velcro.sim.backend.SimAccelerator`) keep theirs in one.
"""

from __future__ import annotations

from collections.abc import Iterable

from .driver import StepCounters

__all__ = ["TOTALS", "Counters"]

#: The run totals, as the kernel's status block and registers name them.
TOTALS = ("cycles", "mac_cycles", "skipped", "stall_cycles", "images_done")
#: The fields of a :class:`StepCounters` that add up over runs.
_SUMMED = ("cycles", "busy", "mac_cycles", "skipped", "stall_cycles")


def _copy(step: StepCounters) -> StepCounters:
    return StepCounters(**vars(step))


def _accumulate(into: StepCounters, step: StepCounters) -> None:
    for name in _SUMMED:
        setattr(into, name, getattr(into, name) + getattr(step, name))


class Counters:
    """Per-descriptor counters and run totals, summed over runs.

    A run is :meth:`start` followed by one :meth:`add` per kernel call it made.

    Attributes
    ----------
    totals : dict
        The run totals (:data:`TOTALS`) summed over every run.
    last_totals : dict
        The run totals of the last run (empty before the first).
    last_steps : list of StepCounters
        The counters of every descriptor the last run executed, stage by stage (the
        calls of a stage run in tiles summed, as :meth:`steps` sums runs).
    """

    def __init__(self):
        self._steps: dict[tuple[int, int], StepCounters] = {}
        self._last: dict[tuple[int, int], StepCounters] = {}
        self.totals = dict.fromkeys(TOTALS, 0)
        self.last_totals: dict = {}

    def start(self) -> None:
        """Begin a run: the last run's figures start again from zero."""
        self.last_totals = dict.fromkeys(TOTALS, 0)
        self._last = {}

    @property
    def last_steps(self) -> list[StepCounters]:
        return [self._last[key] for key in sorted(self._last)]

    def add(self, steps: Iterable[StepCounters], totals: dict, stage: int = 0) -> None:
        """Add the counters of one kernel call.

        Parameters
        ----------
        steps : iterable of StepCounters
            One per descriptor of the program the call ran.
        totals : dict
            Its run totals; a missing name counts 0.
        stage : int
            Which program ran: the descriptors of one stage are summed by position (over
            runs, and over the tiles of a run), those of different stages apart.
        """
        steps = list(steps)
        for name in TOTALS:
            self.last_totals[name] = self.last_totals.get(name, 0) + totals.get(name, 0)
            self.totals[name] += totals.get(name, 0)
        for position, step in enumerate(steps):
            self._sum(self._steps, (stage, position), step)
            self._sum(self._last, (stage, position), step)

    def add_units(self, calls: list[tuple[list[StepCounters], dict]], stage: int = 0) -> None:
        """Add the counters of one kernel call per compute unit, each unit running the
        same program on its share of the images: as one call, descriptor by descriptor
        (see :meth:`add`)."""
        (steps, totals), *rest = calls
        steps = [_copy(step) for step in steps]
        totals = dict(totals)
        for more_steps, more_totals in rest:
            for mine, theirs in zip(steps, more_steps, strict=True):
                _accumulate(mine, theirs)
            for name in TOTALS:
                totals[name] = totals.get(name, 0) + more_totals.get(name, 0)
        self.add(steps, totals, stage)

    def merge(self, other: Counters) -> None:
        """Add the counters of another device that ran the same program (its share of
        the images): per descriptor and in total, as if one device had run them all."""
        for name in TOTALS:
            self.totals[name] += other.totals.get(name, 0)
        for key, step in other._steps.items():
            self._sum(self._steps, key, step)

    @staticmethod
    def _sum(into: dict, key: tuple[int, int], step: StepCounters) -> None:
        old = into.get(key)
        if old is None:
            into[key] = _copy(step)
        else:
            _accumulate(old, step)

    def steps(self) -> list[StepCounters]:
        """Counters of every descriptor, stage by stage, summed over every run so far."""
        return [self._steps[key] for key in sorted(self._steps)]
