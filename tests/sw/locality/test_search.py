import numpy as np
import pytest

from velcro.sw import data as data_module
from velcro.sw.data import make_task
from velcro.sw.errors import PlanError
from velcro.sw.evaluate import accuracy
from velcro.sw.locality.experiment import prepare, run_search
from velcro.sw.locality.plan import applied, compress
from velcro.sw.models import load_reference


@pytest.fixture(scope="module")
def small_task():
    """A quarter of footwear: fast enough to search in a test."""
    task = make_task("footwear")
    keep = np.random.default_rng(0).permutation(len(task.data))[:600]
    return data_module.Task("footwear-600", task.classes, task.data.subset(np.sort(keep)))


def test_search_keeps_search_accuracy_and_never_reads_validation(small_task, monkeypatch):
    model = load_reference()
    validation = set(small_task.splits().validation.tolist())
    read = []
    original = data_module.Dataset.subset

    def spy(self, index):
        if self is small_task.data:
            read.append(set(np.asarray(index).tolist()))
        return original(self, index)

    monkeypatch.setattr(data_module.Dataset, "subset", spy)
    setup = prepare(model, small_task, sensitivity=False)
    result = run_search(setup, "variance", coarse=True)
    monkeypatch.undo()

    assert read and all(not (r & validation) for r in read)
    search = small_task.split("search")
    plan = compress(setup.profile, result.thresholds, "variance")
    assert plan.C == pytest.approx(result.C)
    assert result.C > 0
    with applied(setup.tapped, plan):
        assert accuracy(setup.tapped.module, search.images, search.labels) == result.accuracy
    assert result.accuracy >= result.baseline_accuracy
    assert result.baseline_accuracy == accuracy(model, search.images, search.labels)
    cs = [p.C for p in result.path]
    assert cs == sorted(cs) and cs[-1] == result.C


def test_search_tolerance_allows_more_compression(small_task):
    setup = prepare(load_reference(), small_task, sensitivity=False)
    strict = run_search(setup, "variance", coarse=True)
    loose = run_search(setup, "variance", tolerance=0.05, coarse=True)
    assert loose.C > strict.C
    assert loose.accuracy >= loose.baseline_accuracy - 0.05


def test_search_rejects_bad_tolerance(small_task):
    setup = prepare(load_reference(), small_task, sensitivity=False)
    with pytest.raises(PlanError, match="tolerance 1.5 out of range"):
        run_search(setup, "variance", tolerance=1.5, coarse=True)


def test_partial_evaluation_equals_full_forward(small_task):
    from velcro.sw.locality.plan import scores
    from velcro.sw.locality.search import Evaluator

    setup = prepare(load_reference(), small_task, sensitivity=False)
    data = small_task.split("search")
    layer_scores = scores(setup.profile, "variance")

    def evaluator():
        return Evaluator(setup.tapped, setup.profile, "variance", layer_scores,
                         data.images, data.labels)

    cached = evaluator()
    assert all(t is not None for t in cached.tails)
    cached.rebase([30.0, 10.0, 20.0, 0.0])
    for candidate in ([30.0, 10.0, 20.0, 50.0], [30.0, 10.0, 60.0, 0.0],
                      [30.0, 40.0, 20.0, 0.0], [70.0, 10.0, 20.0, 0.0]):
        assert cached.measure(candidate) == evaluator().measure(candidate)
