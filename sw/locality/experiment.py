"""End-to-end VELCRO experiments on a task: profile, choose thresholds, validate.

These functions back ``velcro compress`` and ``velcro demo``. The split discipline
lives here: the preprocessing split is profiled, the search split chooses thresholds,
and the validation split only measures the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from torch import nn

from ..data import Task
from ..errors import DataError
from ..evaluate import accuracy
from .plan import CRITERIA, Plan, applied, compress
from .profile import Profile, profile
from .search import SearchResult, search
from .taps import Tapped, tap


@dataclass
class TaskSetup:
    """A tapped model, a task's splits and the profile of its preprocessing images."""

    task: Task
    tapped: Tapped
    profile: Profile
    n_preprocessing: int
    n_search: int
    n_validation: int
    profile_seconds: float


#: The fewest preprocessing images from which per-element variances mean anything.
MIN_PREPROCESSING = 8


def prepare(model: nn.Module, task: Task, sensitivity: bool, progress: bool = False,
            profiler=profile) -> TaskSetup:
    """Tap the model and profile it on the task's preprocessing split.

    ``profiler`` is called like :func:`~velcro.sw.locality.profile.profile` (e.g.
    :func:`velcro.sw.cluster.profile.profile`, which shards the images over Ray, and
    takes the undecoded split of a lazy task, a :class:`~velcro.sw.data.FolderIndex`).

    A preprocessing split of fewer than :data:`MIN_PREPROCESSING` images is refused
    (:class:`~velcro.sw.errors.DataError`): with one image every variance is 0 and
    every element looks perfectly local.
    """
    splits = task.splits()
    if len(splits.preprocessing) < MIN_PREPROCESSING:
        need = int(np.ceil(MIN_PREPROCESSING / task.preprocessing_fraction))
        while int(np.floor(task.preprocessing_fraction * need)) < MIN_PREPROCESSING:
            need += 1
        raise DataError(
            f"task {task.name!r} has {len(task.data)} images, so its preprocessing split "
            f"({100 * task.preprocessing_fraction:g} %) holds {len(splits.preprocessing)}; "
            f"estimating variances needs at least {MIN_PREPROCESSING} (a task of at least "
            f"{need} images)")
    tapped = tap(model)
    start = time.perf_counter()
    images = task.split("preprocessing")
    prof = profiler(tapped, getattr(images, "images", images), sensitivity=sensitivity,
                    progress=progress)
    prof.meta.update(task=task.name, classes=list(task.classes))
    return TaskSetup(task, tapped, prof, len(splits.preprocessing), len(splits.search),
                     len(splits.validation), time.perf_counter() - start)


def validation_accuracy(setup: TaskSetup, plan: Plan | None) -> float:
    """Accuracy on the validation split with ``plan`` applied (None: uncompressed)."""
    val = setup.task.split("validation")
    with applied(setup.tapped, plan):
        return accuracy(setup.tapped.module, val.images, val.labels)


def run_search(setup: TaskSetup, criterion: str, tolerance: float = 0.0,
               coarse: bool = False, progress: bool = False, **options) -> SearchResult:
    """Threshold search on the search split of ``setup.task``.

    ``coarse`` stops at 10-point steps without exploration (a quick estimate);
    ``options`` go to :func:`~velcro.sw.locality.search.search` (``threads``,
    ``evaluator``).
    """
    data = setup.task.split("search")
    steps = {"min_step": 10.0, "explore_moves": 0} if coarse else {}
    return search(setup.tapped, setup.profile, data.images, data.labels, criterion,
                  tolerance=tolerance, progress=progress, **steps, **options)


def record(setup: TaskSetup, plan: Plan, baseline: float, seconds: float,
           result: SearchResult | None = None) -> dict:
    """The JSON record of ``velcro compress`` for one plan."""
    out = {
        "task": setup.task.name,
        "criterion": plan.criterion,
        "thresholds": [round(t, 4) for t in plan.thresholds],
        "C": plan.C,
        "baseline_accuracy": baseline,
        "accuracy": validation_accuracy(setup, plan),
        "n_preprocessing": setup.n_preprocessing,
        "n_validation": setup.n_validation,
        "n_search": setup.n_search,
        "layers": [{"name": layer.name, "shape": list(layer.mask.shape),
                    "replaced": layer.replaced, "elements": int(layer.mask.size)}
                   for layer in plan.layers],
        "profile_seconds": round(setup.profile_seconds, 3),
        "seconds": round(seconds, 3),
    }
    if result is not None:
        out.update(search_accuracy=result.accuracy,
                   search_baseline_accuracy=result.baseline_accuracy,
                   search_evaluations=result.evaluations, search_rule=result.rule,
                   search_level=result.level)
    return out


def uniform_curve(setup: TaskSetup, criterion: str = "variance",
                  thresholds=tuple(range(0, 100, 10))) -> list[dict]:
    """Validation accuracy for one threshold shared by all layers (the paper's setting)."""
    points = []
    for t in thresholds:
        plan = compress(setup.profile, [t] * len(setup.profile.layers), criterion)
        points.append({"threshold": t, "C": plan.C, "accuracy": validation_accuracy(setup, plan)})
    return points


def extend_path(setup: TaskSetup, result: SearchResult, max_C: float = 0.6,
                max_loss: float = 0.03, step: float = 10.0) -> list:
    """Continue a search past its constraint, for the accuracy-versus-C curve.

    Greedy moves of ``step`` points go on from ``result`` while the search-split
    accuracy stays within ``max_loss`` of the baseline, until C reaches ``max_C``.
    """
    data = setup.task.split("search")
    more = search(setup.tapped, setup.profile, data.images, data.labels, result.criterion,
                  tolerance=max_loss, start_step=step, min_step=step, explore_moves=0,
                  start=result.thresholds, max_C=max_C)
    return result.path + more.path[1:]


def demo_task(model: nn.Module, task: Task, criteria=CRITERIA, tolerance: float = 0.0,
              progress: bool = False) -> dict:
    """Search every criterion on one task, then trace validation accuracy versus C.

    Per criterion the record holds the search's result (thresholds chosen without the
    validation split) and, from the curve traced past it, ``max_C_no_loss``: the largest
    C on the curve whose validation accuracy is not below the uncompressed model's,
    which is how the VELCRO paper's Table 1 is defined (it selects with validation).
    """
    setup = prepare(model, task, sensitivity="fisher" in criteria, progress=progress)
    baseline = validation_accuracy(setup, None)
    records, curves = [], {}
    for criterion in criteria:
        start = time.perf_counter()
        result = run_search(setup, criterion, tolerance, progress=progress)
        seconds = time.perf_counter() - start
        plan = compress(setup.profile, result.thresholds, criterion)
        rec = record(setup, plan, baseline, seconds, result)
        curve = [{"thresholds": p.thresholds, "C": p.C, "search_accuracy": p.accuracy,
                  "accuracy": validation_accuracy(setup, compress(setup.profile, p.thresholds,
                                                                  criterion))}
                 for p in extend_path(setup, result)]
        rec["max_C_no_loss"] = max(p["C"] for p in curve if p["accuracy"] >= baseline)
        records.append(rec)
        curves[criterion] = curve
    return {"task": task.name, "baseline_accuracy": baseline, "records": records,
            "curves": curves, "uniform": uniform_curve(setup)}


def demo_files(results: list[dict]) -> dict[str, list[dict]]:
    """The JSON files of ``velcro demo`` by name: every record of every task, and every
    task's curves; :func:`velcro.sw.report.inputs.demo_results` joins them again."""
    return {"velcro_table.json": [r for res in results for r in res["records"]],
            "velcro_curves.json": [{k: res[k] for k in ("task", "baseline_accuracy", "curves",
                                                        "uniform")} for res in results]}


def format_table(results: list[dict], criteria) -> str:
    """Text table like the paper's Table 1, per task and criterion.

    Each cell: the search's C with its change in validation accuracy, then (after the
    slash) the largest C on the curve with no validation loss.
    """
    header = ["task", "val. acc."] + list(criteria)
    rows = []
    for result in results:
        cells = [result["task"], f"{100 * result['baseline_accuracy']:.2f}%"]
        for criterion in criteria:
            rec = next(r for r in result["records"] if r["criterion"] == criterion)
            delta = 100 * (rec["accuracy"] - rec["baseline_accuracy"])
            best = 100 * rec["max_C_no_loss"]
            cells.append(f"{100 * rec['C']:.1f}% ({delta:+.2f}) / {best:.1f}%")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
