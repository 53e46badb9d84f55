import json

import numpy as np
import pytest

from velcro.sw import data as data_module
from velcro.sw.cli import main
from velcro.sw.data import make_task
from velcro.sw.evaluate import accuracy
from velcro.sw.locality import table1
from velcro.sw.locality.plan import applied, compress
from velcro.sw.models import load_reference, torchvision_model


def small(name, size=None, n=600):
    """A random ``n`` images of a named task, keeping its fixed validation images."""
    task = make_task(name, size=size)
    keep = np.sort(np.random.default_rng(0).permutation(len(task.data))[:n])
    validation = np.flatnonzero(np.isin(keep, task.splits().validation))
    return data_module.Task(f"{name}-{n}", task.classes, task.data.subset(keep),
                            validation=validation)


@pytest.fixture
def small_tasks(monkeypatch):
    """table1's tasks replaced by small ones; records which images the search's splits
    read (inside ``run_search``)."""
    made, read, searching = {}, [], []
    original = data_module.Dataset.subset
    run_search = table1.run_search

    def watched(*args, **kwargs):
        searching.append(True)
        try:
            return run_search(*args, **kwargs)
        finally:
            searching.pop()

    def make(name, size=None):
        made[name] = small(name, size, n=400 if size else 600)
        return made[name]

    def spy(self, index):
        for task in made.values():
            if self is task.data and searching:
                read.append((task, set(np.asarray(index).tolist())))
        return original(self, index)

    monkeypatch.setattr(table1, "make_task", make)
    monkeypatch.setattr(table1, "run_search", watched)
    monkeypatch.setattr(data_module.Dataset, "subset", spy)
    return made, read


def test_a_cell_measures_the_searched_plan_on_validation_only(small_tasks):
    made, read = small_tasks
    model = load_reference()
    rec = table1.table1_cell("reference", model, "footwear", curve=True,
                             search_options={"coarse": True, "rule": "strict"})
    task = made["footwear"]
    splits = task.splits()
    # The search read the search split, and no validation image.
    assert read and all(not (r & set(splits.validation.tolist())) for _, r in read)
    assert set(splits.search.tolist()) in [r for _, r in read]
    assert {"network", "task", "C", "accuracy", "baseline_accuracy", "paper_C", "thresholds",
            "search_seconds"} <= set(rec)
    assert rec["network"] == "reference" and rec["paper_C"] is None and rec["C"] > 0
    from velcro.sw.locality.experiment import prepare

    setup = prepare(model, task, sensitivity=False)
    plan = compress(setup.profile, rec["thresholds"])
    assert plan.C == pytest.approx(rec["C"])
    val = task.split("validation")
    with applied(setup.tapped, plan):
        assert rec["accuracy"] == accuracy(setup.tapped.module, val.images, val.labels)
    assert rec["baseline_accuracy"] == accuracy(model, val.images, val.labels)
    assert sum(layer["replaced"] for layer in rec["layers"]) == sum(
        layer.replaced for layer in plan.layers)
    assert rec["acceleration"] == pytest.approx(1 / (1 - rec["C"]))
    # The integer package skips MACs, and the kernel runs fewer cycles with the plan.
    assert 0 < rec["macs_skipped_fraction"] < 1 and 0.5 < rec["integer_accuracy"] <= 1
    assert rec["kernel_cycles_per_image_plain"] > rec["kernel_cycles_per_image"] > 0
    assert rec["curve"][0]["C"] <= rec["C"] <= rec["curve"][-1]["C"]
    # Deterministic: the same search again chooses the same thresholds.
    again = table1.table1_cell("reference", model, "footwear", curve=False, integer=False,
                               search_options={"coarse": True, "rule": "strict"})
    assert again["thresholds"] == rec["thresholds"] and again["C"] == rec["C"]
    text = table1.format_table1([rec])
    delta = 100 * (rec["accuracy"] - rec["baseline_accuracy"])
    assert f"{100 * rec['C']:.1f}% ({delta:+.2f})" in text


def test_a_zoo_network_is_searched_at_64x64_without_reading_validation(small_tasks):
    made, read = small_tasks
    import torch

    torch.manual_seed(0)
    model = torchvision_model("mobilenet_v2")
    rec = table1.table1_cell("mobilenet_v2", model, "trousers-dresses", curve=False,
                             integer=False, search_options={"coarse": True, "max_C": 0.01})
    task = made["trousers-dresses"]
    assert task.data.images.shape[2:] == (64, 64)
    splits = task.splits()
    assert read and all(not (r & set(splits.validation.tolist())) for _, r in read)
    assert set(splits.search.tolist()) in [r for _, r in read]
    assert rec["paper_C"] == pytest.approx(np.mean([0.135, 0.1976, 0.168]), abs=1e-4)
    assert len(rec["layers"]) == len(rec["thresholds"]) > 30


def test_the_command_writes_json_text_and_figure_and_names_untrained_networks(
        small_tasks, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VELCRO_HOME", str(tmp_path / "home"))
    out = tmp_path / "t1"
    assert main(["table1", "--networks", "reference,resnet18", "--tasks", "bags",
                 "--no-integer", "--rule", "strict", "--json", str(out / "t1.json"),
                 "--out", str(out)]) == 0
    records = json.loads((out / "t1.json").read_text())
    assert [(r["network"], r["task"]) for r in records] == [("reference", "bags")]
    assert records[0]["search_rule"] == "strict"
    text = (out / "table1.txt").read_text()
    assert "Not measured: resnet18" in text and "Search rule: strict" in text
    assert (out / "table1_accuracy_vs_C.png").stat().st_size > 10_000
    assert "reference on bags: C = " in capsys.readouterr().out


def test_unknown_networks_and_tasks_are_refused(tmp_path, capsys):
    assert main(["table1", "--networks", "vgg16", "--out", str(tmp_path)]) == 2
    assert "unknown network 'vgg16'" in capsys.readouterr().err
    assert main(["table1", "--tasks", "socks", "--out", str(tmp_path)]) == 2
    assert "unknown task 'socks'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
