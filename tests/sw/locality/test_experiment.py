"""The split discipline of an experiment: profile, plan, validate, and the demo table."""

import numpy as np
import pytest

from velcro.sw import data as data_module
from velcro.sw.data import make_task
from velcro.sw.evaluate import accuracy
from velcro.sw.locality.experiment import (
    format_table,
    prepare,
    record,
    uniform_curve,
    validation_accuracy,
)
from velcro.sw.locality.plan import applied, compress
from velcro.sw.models import load_reference


@pytest.fixture(scope="module")
def setup():
    task = make_task("footwear")
    keep = np.random.default_rng(1).permutation(len(task.data))[:400]
    small = data_module.Task("footwear-400", task.classes, task.data.subset(np.sort(keep)))
    return prepare(load_reference(), small, sensitivity=False)


def test_prepare_profiles_only_the_preprocessing_split(setup):
    splits = setup.task.splits()
    assert setup.profile.count == len(splits.preprocessing) == setup.n_preprocessing
    assert (setup.n_preprocessing, setup.n_search, setup.n_validation) == (
        len(splits.preprocessing), len(splits.search), len(splits.validation))
    assert setup.profile.meta["task"] == "footwear-400"


def test_validation_accuracy_runs_the_plan_on_the_validation_split(setup):
    plan = compress(setup.profile, [40, 40, 40, 40])
    val = setup.task.split("validation")
    with applied(setup.tapped, plan):
        expected = accuracy(setup.tapped.module, val.images, val.labels)
    assert validation_accuracy(setup, plan) == expected
    assert validation_accuracy(setup, None) == accuracy(setup.tapped.module, val.images,
                                                        val.labels)


def test_record_counts_every_layer_and_the_uniform_curve_grows_in_C(setup):
    plan = compress(setup.profile, [10, 20, 30, 40])
    rec = record(setup, plan, 0.5, 1.0)
    assert rec["C"] == plan.C
    assert [layer["replaced"] for layer in rec["layers"]] == [p.replaced for p in plan.layers]
    assert rec["thresholds"] == [10, 20, 30, 40]
    curve = uniform_curve(setup, thresholds=(0, 30, 60))
    assert [p["threshold"] for p in curve] == [0, 30, 60]
    assert curve[0]["C"] == 0 and curve[0]["C"] < curve[1]["C"] < curve[2]["C"]


def test_format_table_has_one_row_per_task_and_a_cell_per_criterion():
    results = [{"task": "footwear", "baseline_accuracy": 0.9776, "records": [
        {"criterion": "variance", "C": 0.185, "accuracy": 0.9783, "baseline_accuracy": 0.9776,
         "max_C_no_loss": 0.383}]}]
    lines = format_table(results, ["variance"]).splitlines()
    assert lines[0].split() == ["task", "val.", "acc.", "variance"]
    assert lines[2].split() == ["footwear", "97.76%", "18.5%", "(+0.07)", "/", "38.3%"]
