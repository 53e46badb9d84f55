import json

import numpy as np
import pytest

from velcro.sw import data as data_module
from velcro.sw.cli import main
from velcro.sw.data import make_task
from velcro.sw.errors import PlanError
from velcro.sw.evaluate import accuracy
from velcro.sw.locality import strategies
from velcro.sw.locality.experiment import prepare, run_search
from velcro.sw.locality.plan import applied, compress
from velcro.sw.locality.search import search
from velcro.sw.models import load_reference


@pytest.fixture(scope="module")
def small_task():
    """A quarter of footwear with its fixed validation images (as in test_search.py)."""
    task = make_task("footwear")
    keep = np.sort(np.random.default_rng(0).permutation(len(task.data))[:600])
    validation = np.flatnonzero(np.isin(keep, task.splits().validation))
    return data_module.Task("footwear-600", task.classes, task.data.subset(keep),
                            validation=validation)


@pytest.fixture(scope="module")
def setup(small_task):
    return prepare(load_reference(), small_task, sensitivity=False)


class LimitEvaluator:
    """200 images, 180 right at T = 0; one more is wrong per layer whose threshold lies
    in its refused range (:data:`REFUSED`). Records every plan it measures."""

    REFUSED = [(30.0, 50.0), (45.0, 100.0), (70.0, 100.0), (20.0, 100.0)]
    measured: list[tuple[float, ...]] = []

    def __init__(self, tapped, profile, criterion, layer_scores, images, labels, threads):
        type(self).measured = []

    def rebase(self, thresholds):
        pass

    def close(self):
        pass

    def measure_all(self, candidates):
        out = []
        for t in candidates:
            self.measured.append(tuple(t))
            lost = sum(lo < x <= hi for x, (lo, hi) in zip(t, self.REFUSED, strict=True))
            hits = np.arange(200) < 180 - lost
            out.append((hits.mean(), lost + sum(t) / 1000, np.packbits(hits).tobytes()))
        return out


def limited(setup, **options):
    data = setup.task.split("search")
    return search(setup.tapped, setup.profile, data.images, data.labels,
                  evaluator=LimitEvaluator, **options)


def admitted(thresholds):
    return all(not lo < x <= hi for x, (lo, hi) in zip(thresholds, LimitEvaluator.REFUSED,
                                                       strict=True))


def test_coordinate_ascent_pushes_each_layer_to_its_limit_past_a_refused_range(setup):
    result = limited(setup, strategy="coordinate", min_step=1.25)
    t = result.thresholds
    # Layer 0 is refused in (30, 50] only: the ladder's rung at 60 is admitted, and so is
    # everything above; the others stop within min_step below their limits.
    assert t[0] == 100.0
    assert 45 - 1.25 <= t[1] <= 45 and 70 - 1.25 <= t[2] <= 70 and 20 - 1.25 <= t[3] <= 20
    assert result.strategy == "coordinate" and result.accuracy == 0.9
    assert result.C == pytest.approx(compress(setup.profile, t).C)
    assert len(set(LimitEvaluator.measured)) == result.evaluations
    cs = [p.C for p in result.path]
    assert cs == sorted(cs) and result.path[-1].thresholds == t
    assert all(admitted(p.thresholds) for p in result.path)


def test_one_sweep_of_coordinate_ascent_is_a_prefix_of_three(setup):
    one = limited(setup, strategy="coordinate", sweeps=1)
    three = limited(setup, strategy="coordinate", sweeps=3)
    assert three.path[:len(one.path)] == one.path and three.C >= one.C
    with pytest.raises(PlanError, match="sweeps must be at least 1, not 0"):
        limited(setup, strategy="coordinate", sweeps=0)


def test_evolution_respects_its_budget_and_admits_its_result(setup):
    result = limited(setup, strategy="evolution", budget=50, seed=3)
    assert result.evaluations == len(set(LimitEvaluator.measured)) <= 50
    assert len(LimitEvaluator.measured) == len(set(LimitEvaluator.measured))
    assert admitted(result.thresholds) and result.accuracy == 0.9 and result.C > 0
    assert result.C == pytest.approx(compress(setup.profile, result.thresholds).C)
    assert all(t % strategies.GRID == 0 for t in result.thresholds)
    cs = [p.C for p in result.path]
    assert cs == sorted(cs) and all(admitted(p.thresholds) for p in result.path)
    # A larger budget is spent on more plans and does not end lower.
    more = limited(setup, strategy="evolution", budget=120, seed=3)
    assert 50 < more.evaluations <= 120 and more.C >= result.C


def test_evolution_is_deterministic_in_its_seed(setup):
    options = {"strategy": "evolution", "budget": 16, "threads": 1, "min_step": 5.0}
    first = run_search(setup, "variance", seed=7, **options)
    again = run_search(setup, "variance", seed=7, **options)
    other = run_search(setup, "variance", seed=8, **options)
    assert first.thresholds == again.thresholds and first.path == again.path
    assert first.evaluations == again.evaluations <= 16
    assert other.path != first.path
    search = setup.task.split("search")
    with applied(setup.tapped, compress(setup.profile, first.thresholds)):
        assert accuracy(setup.tapped.module, search.images, search.labels) == first.accuracy
    assert first.accuracy >= first.baseline_accuracy


@pytest.mark.parametrize(("options", "message"), [
    ({"strategy": "annealing"}, "unknown search strategy 'annealing'; strategies are greedy"),
    ({"strategy": "greedy", "budget": 10}, "budget is the evolution strategy's, not greedy's"),
    ({"strategy": "evolution", "budget": 1}, "budget must be at least 2"),
])
def test_bad_strategy_options_are_refused(setup, options, message):
    with pytest.raises(PlanError, match=message):
        limited(setup, **options)


def image_folder(root, per_class):
    """Two classes of random 28x28 images: enough for a preprocessing split."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
                root / name / f"{i}.png")
    return root


def test_compress_records_the_strategy_its_seconds_and_evaluations(tmp_path, capsys):
    out = tmp_path / "c.json"
    folder = image_folder(tmp_path / "imgs", 210)
    assert main(["compress", "--data", str(folder), "--search",
                 "--strategy", "evolution", "--budget", "12", "--seed", "1",
                 "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["search_strategy"] == "evolution" and rec["search_evaluations"] <= 12
    assert 0 < rec["search_seconds"] <= rec["seconds"]
    assert rec["search_accuracy"] >= rec["search_baseline_accuracy"]
    assert f"search: evolution, {rec['search_evaluations']} evaluations in" in (
        capsys.readouterr().out)
    assert main(["compress", "--task", "footwear", "--search", "--budget", "12"]) == 2
    assert "--budget belongs to --strategy evolution, not greedy" in (
        capsys.readouterr().err)
    assert main(["compress", "--task", "footwear", "--search", "--strategy", "evolution",
                 "--budget", "1"]) == 2
    assert "--budget must be at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compress", "--task", "footwear", "--search", "--strategy", "annealing"])
    assert "invalid choice: 'annealing'" in capsys.readouterr().err


def test_the_strategy_options_are_documented(capsys):
    for command in ("compress", "table1"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--strategy {greedy,coordinate,evolution}" in text
        assert "--budget" in text and "--seed" in text
        assert "greedy (default, as in export --search and the demo)" in text
        assert "coordinate (the highest mean search" in text


def test_table1_runs_and_records_the_strategy(small_task, tmp_path, monkeypatch):
    from velcro.sw.locality import table1

    monkeypatch.setattr(table1, "make_task", lambda name, size=None: small_task)
    out = tmp_path / "t1"
    assert main(["table1", "--networks", "reference", "--tasks", "footwear", "--no-integer",
                 "--no-curve", "--strategy", "evolution", "--seed", "2", "--budget", "20",
                 "--json", str(out / "t1.json"), "--out", str(out)]) == 0
    [rec] = json.loads((out / "t1.json").read_text())
    assert rec["search_strategy"] == "evolution" and rec["search_evaluations"] <= 20
    assert rec["search_seconds"] > 0
    assert "Search rule: strict, strategy evolution (seed 2)" in (out / "table1.txt").read_text()
