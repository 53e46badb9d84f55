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
    return setup, data.images[:500], data.labels[:500]


def test_parallel_search_is_identical_to_the_serial_search(ray_local, footwear):
    setup, images, labels = footwear
    options = {"min_step": 10.0, "explore_moves": 1, "explore_step": 10.0}
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
