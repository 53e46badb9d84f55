"""The threshold search with candidates measured by Ray actors equals the serial one."""

import pytest

from velcro.sw.cluster.search import search as ray_search
from velcro.sw.data import make_task
from velcro.sw.locality.experiment import prepare
from velcro.sw.locality.search import search
from velcro.sw.models import load_reference


@pytest.fixture(scope="module")
def footwear():
    task = make_task("footwear")
    data = task.split("search")
    setup = prepare(load_reference(), task, sensitivity=False)
    return setup, data.images[:300], data.labels[:300]


def test_parallel_search_is_identical_to_the_serial_search(ray_local, footwear):
    setup, images, labels = footwear
    options = {"start_step": 20.0, "min_step": 20.0, "explore_moves": 1,
               "explore_step": 20.0}
    serial = search(setup.tapped, setup.profile, images, labels, threads=1, **options)
    parallel = ray_search(setup.tapped, setup.profile, images, labels, threads=1, actors=2,
                          **options)
    assert serial.C > 0 and serial.evaluations > 4
    assert parallel.thresholds == serial.thresholds
    assert parallel.C == serial.C and parallel.accuracy == serial.accuracy
    assert parallel.baseline_accuracy == serial.baseline_accuracy
    assert parallel.evaluations == serial.evaluations
    assert [(p.thresholds, p.C, p.accuracy) for p in parallel.path] == \
        [(p.thresholds, p.C, p.accuracy) for p in serial.path]


def test_the_mcnemar_rule_on_ray_equals_the_serial_search(ray_local, footwear):
    setup, images, labels = footwear
    options = {"start_step": 20.0, "min_step": 20.0, "explore_moves": 0, "rule": "mcnemar",
               "level": 0.2}
    serial = search(setup.tapped, setup.profile, images, labels, threads=1, **options)
    parallel = ray_search(setup.tapped, setup.profile, images, labels, threads=1, actors=2,
                          **options)
    assert serial.rule == parallel.rule == "mcnemar" and serial.C > 0
    assert (parallel.thresholds, parallel.C, parallel.evaluations) == \
        (serial.thresholds, serial.C, serial.evaluations)


def test_table1_takes_ray(ray_local, tmp_path, monkeypatch, capsys):
    import json

    import numpy as np

    from velcro.sw import data as data_module
    from velcro.sw.cli import main
    from velcro.sw.locality import table1

    task = make_task("trousers-dresses")
    keep = np.sort(np.random.default_rng(1).permutation(len(task.data))[:500])
    small = data_module.Task("td-500", task.classes, task.data.subset(keep),
                             validation=np.flatnonzero(np.isin(keep, task.splits().validation)))
    monkeypatch.setattr(table1, "make_task", lambda name, size=None: small)
    argv = ["table1", "--networks", "reference", "--tasks", "trousers-dresses", "--no-curve",
            "--no-integer", "--out", str(tmp_path)]
    assert main([*argv, "--ray", "local:2", "--json", str(tmp_path / "ray.json")]) == 0
    rec = json.loads((tmp_path / "ray.json").read_text())[0]
    # The same search without Ray, with the one torch thread each Ray evaluation uses.
    setup = prepare(load_reference(), small, sensitivity=False)
    data = small.split("search")
    serial = search(setup.tapped, setup.profile, data.images, data.labels, threads=1)
    assert rec["thresholds"] == [round(t, 4) for t in serial.thresholds]
    assert rec["C"] == serial.C > 0 and rec["search_evaluations"] == serial.evaluations
