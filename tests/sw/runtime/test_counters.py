"""Counters summed over runs: per descriptor, per run and over every run."""

from velcro.sw.runtime.counters import TOTALS, Counters
from velcro.sw.runtime.driver import StepCounters


def step(name, cycles, busy=0, mac_cycles=0, skipped=0, stall_cycles=0):
    return StepCounters(name, "CONV", cycles, busy, mac_cycles, skipped, stall_cycles)


def test_descriptors_sum_over_runs_by_stage_and_position():
    counters = Counters()
    for run in range(3):
        counters.start()
        counters.add([step("a", 10, 4, 3, 2, 1), step("b", 5)], {}, stage=0)
        counters.add([step("c", 7 + run)], {}, stage=2)
    assert [(c.name, c.cycles, c.busy, c.mac_cycles, c.skipped, c.stall_cycles)
            for c in counters.steps()] == [("a", 30, 12, 9, 6, 3), ("b", 15, 0, 0, 0, 0),
                                           ("c", 24, 0, 0, 0, 0)]


def test_totals_sum_over_runs_and_the_last_run_stands_alone():
    counters = Counters()
    assert counters.totals == dict.fromkeys(TOTALS, 0) and counters.last_totals == {}
    counters.start()
    counters.add([step("a", 10)], {"cycles": 12, "images_done": 2})
    counters.add([step("b", 20)], {"cycles": 25, "skipped": 4, "images_done": 2}, stage=1)
    assert counters.last_totals == {"cycles": 37, "mac_cycles": 0, "skipped": 4,
                                    "stall_cycles": 0, "images_done": 4}
    counters.start()
    counters.add([step("a", 5)], {"cycles": 6, "stall_cycles": 1, "images_done": 1})
    assert counters.last_totals == {"cycles": 6, "mac_cycles": 0, "skipped": 0,
                                    "stall_cycles": 1, "images_done": 1}
    assert [s.name for s in counters.last_steps] == ["a"]
    assert counters.totals == {"cycles": 43, "mac_cycles": 0, "skipped": 4,
                               "stall_cycles": 1, "images_done": 5}


def test_sums_do_not_change_the_callers_counters():
    counters = Counters()
    first = [step("a", 10)]
    counters.start()
    counters.add(first, {})
    counters.add([step("a", 3)], {})
    assert first[0].cycles == 10
    # Two calls of one stage in a run (tiles) add up in the run's figures too.
    assert counters.steps()[0].cycles == 13
    assert [s.cycles for s in counters.last_steps] == [13]
    counters.start()
    counters.add([step("a", 4)], {})
    assert counters.steps()[0].cycles == 17 and counters.last_steps[0].cycles == 4
