import numpy as np
import pytest

from velcro.sw import data as data_module
from velcro.sw.data import make_task
from velcro.sw.errors import PlanError
from velcro.sw.evaluate import accuracy
from velcro.sw.locality.experiment import prepare, run_search
from velcro.sw.locality.plan import applied, compress
from velcro.sw.locality.strategies import STRATEGIES
from velcro.sw.models import load_reference


@pytest.fixture(scope="module")
def small_task():
    """A quarter of footwear: fast enough to search in a test."""
    task = make_task("footwear")
    keep = np.sort(np.random.default_rng(0).permutation(len(task.data))[:600])
    # Like the full task, its validation images are its test images, fixed in advance.
    validation = np.flatnonzero(np.isin(keep, task.splits().validation))
    return data_module.Task("footwear-600", task.classes, task.data.subset(keep),
                            validation=validation)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_search_keeps_search_accuracy_and_never_reads_validation(small_task, monkeypatch,
                                                                  strategy):
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
    result = run_search(setup, "variance", coarse=True, strategy=strategy)
    monkeypatch.undo()

    assert read and all(not (r & validation) for r in read)
    assert 200 < len(validation) < 400
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
    assert result.strategy == strategy and 0 < result.seconds


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


def test_mcnemar_p_is_the_exact_one_sided_binomial_tail():
    from velcro.sw.locality.rules import mcnemar_p

    assert mcnemar_p(0, 7) == 1.0 and mcnemar_p(1, 0) == 0.5 and mcnemar_p(3, 0) == 0.125
    assert mcnemar_p(5, 5) == pytest.approx(638 / 1024)
    assert mcnemar_p(4, 1) == pytest.approx(6 / 32)
    # More losses among the same flips are more significant.
    assert mcnemar_p(12, 8) > mcnemar_p(14, 6) > mcnemar_p(16, 4)


class FlipEvaluator:
    """Measures a plan as the baseline with one right image turned wrong per 20
    percentile points of summed thresholds: losses without gains."""

    def __init__(self, tapped, profile, criterion, layer_scores, images, labels, threads):
        self.n = 200

    def rebase(self, thresholds):
        pass

    def close(self):
        pass

    def measure_all(self, candidates):
        out = []
        for t in candidates:
            hits = np.arange(self.n) < 180
            hits[:int(sum(t) // 20)] = False
            out.append((hits.mean(), float(sum(t)), np.packbits(hits).tobytes()))
        return out


def test_the_mcnemar_rule_admits_losses_only_while_they_are_not_significant(small_task):
    from velcro.sw.locality.search import search

    setup = prepare(load_reference(), small_task, sensitivity=False)
    data = small_task.split("search")

    def run(**rule):
        return search(setup.tapped, setup.profile, data.images, data.labels,
                      evaluator=FlipEvaluator, explore_moves=0, **rule)

    strict, loose = run(rule="strict"), run(rule="mcnemar", level=0.05)
    half = run(rule="mcnemar", level=0.2)
    # strict: no image may be lost; McNemar at 0.05: P(X >= b | b flips) = 2^-b >= 0.05,
    # so at most 4 losses (b = 5 gives 0.031); at 0.2 at most 2 (b = 3 gives 0.125).
    assert sum(strict.thresholds) < 20 <= sum(loose.thresholds)
    assert 80 <= sum(loose.thresholds) < 100 and 40 <= sum(half.thresholds) < 60
    assert loose.C > half.C > strict.C
    assert loose.accuracy == pytest.approx((180 - 4) / 200)
    assert (loose.rule, loose.level, strict.rule, strict.level) == ("mcnemar", 0.05, "strict",
                                                                    None)
    with pytest.raises(PlanError, match="unknown acceptance rule 'vote'"):
        run(rule="vote")
    with pytest.raises(PlanError, match=r"level 1.0 out of range \(0, 1\)"):
        run(rule="mcnemar", level=1.0)
