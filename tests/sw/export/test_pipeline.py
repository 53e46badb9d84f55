"""``export``: the library call behind ``velcro export``."""

import numpy as np
import pytest

from velcro.sw.data import make_task
from velcro.sw.errors import PlanError
from velcro.sw.export import export
from velcro.sw.export.quantize import quantize
from velcro.sw.locality.experiment import prepare
from velcro.sw.locality.plan import compress
from velcro.sw.models import load_reference


@pytest.fixture(scope="module")
def footwear():
    return load_reference(), make_task("footwear")


def _same(a, b):
    assert a.manifest() == b.manifest()
    for x, y in zip(a.layers, b.layers, strict=True):
        assert x.arrays.keys() == y.arrays.keys()
        for role in x.arrays:
            np.testing.assert_array_equal(x.arrays[role], y.arrays[role])


def test_thresholds_build_the_plan_on_the_preprocessing_split(footwear):
    model, task = footwear
    package = export(model, task, [20, 30, 30, 20])
    plan = compress(prepare(model, task, sensitivity=False).profile, [20, 30, 30, 20])
    _same(package, quantize(model, task, plan))
    assert package.C == pytest.approx(plan.C)
    assert package.velcro["thresholds"] == [20.0, 30.0, 30.0, 20.0]


def test_a_plan_is_taken_as_given_and_nothing_skips_without_one(footwear):
    model, task = footwear
    plan = compress(prepare(model, task, sensitivity=False).profile, [0, 50, 0, 10],
                    "relative")
    with_plan = export(model, task, plan=plan)
    assert with_plan.velcro["criterion"] == "relative"
    assert with_plan.C == pytest.approx(plan.C) and with_plan.C > 0
    plain = export(model, task)
    assert plain.C == 0.0
    assert all(layer.attrs["skipped"] == 0 for layer in plain.layers if layer.op == "conv3x3")


def test_thresholds_and_plan_together_or_of_the_wrong_count_are_refused(footwear):
    model, task = footwear
    plan = compress(prepare(model, task, sensitivity=False).profile, [10, 10, 10, 10])
    with pytest.raises(PlanError, match="not both"):
        export(model, task, [10, 10, 10, 10], plan=plan)
    with pytest.raises(PlanError, match="3 thresholds given for 4"):
        export(model, task, [10, 10, 10])
