"""``velcro table1``: the VELCRO paper's Table 1 on velcro's tasks, for the reference CNN
and the paper's networks.

One cell is a network on a task: the task's preprocessing split is profiled, the
threshold search runs on its search split, and the chosen plan is measured once on the
validation split, which nothing before has seen. Beside the search's C stands the
paper's figure for the same network (the mean of its cats, dogs and cars tasks, which
it selected on the images it reported). A cell also carries what the paper's Table 2
reports: the computation acceleration ``1 / (1 - C)``, and the shipped kernel's
modelled cycles with and without the plan on the layers that run on it (the cost model
equals the cycles the RTL counts).

The validation accuracies along the search's path, continued past its choice, draw the
accuracy-versus-C figure; they are plotted, never used to choose.
"""

from __future__ import annotations

import time

import numpy as np
from torch import nn

from ..data import make_task
from .experiment import extend_path, prepare, run_search, validation_accuracy
from .plan import compress

#: The paper's largest C with no top-1 loss, per network and its task.
PAPER = {
    "resnet18": {"cats": 0.2773, "dogs": 0.2770, "cars": 0.2000},
    "googlenet": {"cats": 0.3000, "dogs": 0.2546, "cars": 0.2770},
    "mobilenet_v2": {"cats": 0.1350, "dogs": 0.1976, "cars": 0.1680},
}
NETWORKS = ("reference", "resnet18", "googlenet", "mobilenet_v2")
TASKS = ("footwear", "tops", "trousers-dresses")
#: One class: a constant network is always right there, so its C says nothing.
FOOTNOTE_TASKS = ("bags",)
#: The input side of each network before it is trained; the 28x28 images are resized for
#: the others. A trained zoo network's record gives its own (:func:`input_size`).
IMAGE_SIZE = {"reference": None, "resnet18": (64, 64), "googlenet": (64, 64),
              "mobilenet_v2": (64, 64)}


def input_size(network: str) -> tuple[int, int] | None:
    """The (H, W) the task's images are resized to for ``network``: the ``image_size`` a
    trained zoo network was trained at (its record, :func:`~velcro.sw.zoo.zoo_record`),
    else :data:`IMAGE_SIZE`'s (None: the 28x28 images as they are)."""
    from ..zoo import NAMES, record_path, zoo_record

    if network in NAMES and record_path(network).exists():
        h, w = zoo_record(network)["image_size"]
        return h, w
    return IMAGE_SIZE.get(network)


def paper_C(network: str) -> float | None:
    """The paper's mean C over its three tasks for ``network`` (None: not in the paper)."""
    figures = PAPER.get(network)
    return None if figures is None else round(float(np.mean(list(figures.values()))), 4)


def table1_cell(network: str, model: nn.Module, task_name: str, *, curve: bool = True,
                integer: bool = True, progress: bool = False, profile_options=None,
                search_options=None) -> dict:
    """Profile, search and validate ``model`` on ``task_name``: one record of the table.

    ``search_options`` go to :func:`~velcro.sw.locality.experiment.run_search` (the
    acceptance ``rule`` and ``level``, the ``strategy``, a Ray evaluator); ``profile_options`` to
    :func:`~velcro.sw.locality.experiment.prepare`.
    """
    task = make_task(task_name, size=input_size(network))
    setup = prepare(model, task, sensitivity=False, progress=progress,
                    **(profile_options or {}))
    baseline = validation_accuracy(setup, None)
    start = time.perf_counter()
    result = run_search(setup, "variance", progress=progress, **(search_options or {}))
    seconds = time.perf_counter() - start
    plan = compress(setup.profile, result.thresholds, "variance")
    rec = {
        "network": network,
        "task": task_name,
        "C": plan.C,
        "accuracy": validation_accuracy(setup, plan),
        "baseline_accuracy": baseline,
        "paper_C": paper_C(network),
        "thresholds": [round(t, 4) for t in plan.thresholds],
        "search_seconds": round(seconds, 2),
        "search_evaluations": result.evaluations,
        "search_rule": result.rule,
        "search_strategy": result.strategy,
        "search_level": result.level,
        "search_accuracy": result.accuracy,
        "search_baseline_accuracy": result.baseline_accuracy,
        "n_preprocessing": setup.n_preprocessing,
        "n_search": setup.n_search,
        "n_validation": setup.n_validation,
        "layers": [{"name": layer.name, "C": layer.replaced / max(layer.mask.size, 1),
                    "replaced": layer.replaced, "elements": int(layer.mask.size)}
                   for layer in plan.layers],
        "acceleration": 1 / (1 - plan.C) if plan.C < 1 else None,
    }
    if curve:
        rec["curve"] = [
            {"C": p.C, "search_accuracy": p.accuracy,
             "accuracy": validation_accuracy(setup, compress(setup.profile, p.thresholds))}
            for p in extend_path(setup, result)]
    if integer:
        rec.update(integer_figures(model, task, plan))
    return rec


def integer_figures(model: nn.Module, task, plan) -> dict:
    """The integer package of ``plan`` on the validation split (golden model): its
    accuracy, the MACs it runs and skips, and the kernel's modelled cycles per image
    with and without the plan on the layers placed on the kernel."""
    from ..export.quantize import quantize
    from ..golden import GoldenModel

    package = quantize(model, task, plan)
    plain = quantize(model, task, None)
    val = task.split("validation")
    golden = GoldenModel(package)
    predictions = np.concatenate([golden.run(val.images[i:i + 500]).argmax(1)
                                  for i in range(0, len(val.images), 500)])
    counts = golden.counts()
    macs = sum(c.macs for c in counts)
    skipped = sum(c.skipped for c in counts)
    with_plan, without = kernel_cycles(package), kernel_cycles(plain)
    return {
        "integer_accuracy": float(np.mean(predictions == val.labels)),
        "macs_skipped_fraction": skipped / max(macs + skipped, 1),
        "kernel_cycles_per_image": with_plan,
        "kernel_cycles_per_image_plain": without,
        "kernel_cycle_ratio": without / with_plan if with_plan else None,
    }


def kernel_cycles(package) -> int:
    """Modelled cycles per image of the package's kernel stages on the shipped kernel
    (0: nothing runs on the kernel)."""
    from velcro.hw.kernel.config import SHIPPED

    from ..runtime.driver import _expected_cycles
    from ..runtime.partition import partition
    from ..runtime.program import compile_segment

    return sum(_expected_cycles(compile_segment(layers, SHIPPED))
               for stage in partition(package, SHIPPED) if stage.device
               for layers in stage.segments())


def format_table1(records: list[dict]) -> str:
    """The table as text: per network and task the search's C with its change in
    validation accuracy, and the paper's mean C for the network; then the Table-2 line
    per network."""
    tasks = list(dict.fromkeys(r["task"] for r in records))
    networks = list(dict.fromkeys(r["network"] for r in records))
    header = ["network", *tasks, "mean C", "paper mean C"]
    rows = []
    for network in networks:
        cells, Cs = [network], []
        for task in tasks:
            rec = next((r for r in records if r["network"] == network and r["task"] == task),
                       None)
            if rec is None:
                cells.append("-")
                continue
            delta = 100 * (rec["accuracy"] - rec["baseline_accuracy"])
            cells.append(f"{100 * rec['C']:.1f}% ({delta:+.2f})")
            if task not in FOOTNOTE_TASKS:
                Cs.append(rec["C"])
        paper = paper_C(network)
        cells += [f"{100 * np.mean(Cs):.1f}%" if Cs else "-",
                  "-" if paper is None else f"{100 * paper:.1f}%"]
        rows.append(cells)
    lines = _columns([header, *rows])
    lines += ["", "Table 2: computation acceleration 1/(1-C), and the shipped kernel's "
              "modelled cycles without / with the plan"]
    for rec in records:
        speed = "-" if rec["acceleration"] is None else f"{rec['acceleration']:.2f}x"
        kernel = ""
        if rec.get("kernel_cycle_ratio") is not None:
            kernel = (f", kernel {rec['kernel_cycles_per_image_plain']} / "
                      f"{rec['kernel_cycles_per_image']} cycles = "
                      f"{rec['kernel_cycle_ratio']:.2f}x")
        integer = ("" if "integer_accuracy" not in rec else
                   f", integer package {100 * rec['integer_accuracy']:.2f}%")
        lines.append(f"  {rec['network']} on {rec['task']}: {speed}{kernel}{integer}")
    return "\n".join(lines)


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
