"""``velcro table1``: the paper's Table 1 (and Table 2's acceleration) measured by velcro's
search on the reference CNN and the model zoo's networks."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import DataError, ModelError
from ..files import write_json, write_text
from .compression import add_rule_args, search_options, search_rule
from .options import add_ray_arg, ray_cluster

NETWORKS = ("reference", "resnet18", "googlenet", "mobilenet_v2")
TASKS = ("footwear", "tops", "trousers-dresses")


def register(sub) -> None:
    p = sub.add_parser("table1", help="the VELCRO paper's Table 1: the search's C per "
                       "network and task with its validation accuracy, beside the paper's")
    p.add_argument("--networks", default=",".join(NETWORKS),
                   help="comma-separated: reference (the shipped CNN) and the model zoo's "
                   "resnet18, googlenet, mobilenet_v2 (trained with 'velcro zoo train'; "
                   f"those not trained are named and left out) (default {','.join(NETWORKS)})")
    p.add_argument("--tasks", default=",".join(TASKS),
                   help=f"comma-separated named tasks (default {','.join(TASKS)})")
    add_rule_args(p)
    p.add_argument("--no-curve", action="store_true",
                   help="skip the accuracy-versus-C curve past each choice (the figure)")
    p.add_argument("--no-integer", action="store_true",
                   help="skip the integer package (golden model) of each chosen plan")
    p.add_argument("--json", type=Path, help="also write the records (a list) as JSON")
    p.add_argument("--out", type=Path, default=Path("demo"),
                   help="folder of table1.txt and table1_accuracy_vs_C.png (default demo/)")
    add_ray_arg(p, "the profiles and the search's candidate plans")
    p.set_defaults(func=cmd_table1, tolerance=0.0)


def cmd_table1(args) -> None:
    from ..data import TASKS as NAMED
    from ..locality.table1 import FOOTNOTE_TASKS, format_table1, table1_cell
    from ..models import load_network
    from ..report.plots import plot_table1
    from .compression import profile_options

    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for network in networks:
        if network not in NETWORKS:
            raise ModelError(f"unknown network {network!r}; choose from {', '.join(NETWORKS)}")
    for task in tasks:
        if task not in NAMED:
            raise DataError(f"unknown task {task!r}; tasks are {', '.join(NAMED)}")
    if not networks or not tasks:
        raise DataError("--networks and --tasks need at least one name each")
    options = search_rule(args)
    models, missing = {}, []
    for network in networks:
        try:
            models[network] = load_network(network)
        except ModelError as e:
            missing.append(f"{network} ({e})")
    if not models:
        raise ModelError("no network to measure: " + "; ".join(missing))
    records = []
    with ray_cluster(args) as cluster:
        for network, model in models.items():
            for task in tasks:
                start = time.perf_counter()
                rec = table1_cell(network, model, task, curve=not args.no_curve,
                                  integer=not args.no_integer, progress=True,
                                  profile_options=profile_options(cluster),
                                  search_options={**options, **search_options(cluster)})
                records.append(rec)
                delta = 100 * (rec["accuracy"] - rec["baseline_accuracy"])
                print(f"{network} on {task}: C = {100 * rec['C']:.2f}%, validation "
                      f"{100 * rec['accuracy']:.2f}% ({delta:+.2f} points), "
                      f"{rec['search_strategy']} search {rec['search_seconds']} s, "
                      f"{rec['search_evaluations']} evaluations "
                      f"({time.perf_counter() - start:.1f} s in all)", flush=True)
    table = format_table1(records)
    notes = [f"Search rule: {options['rule']}"
             + (f" at level {options['level']}" if options["rule"] == "mcnemar" else "")
             + f", strategy {options['strategy']}"
             + (f" (seed {options['seed']})" if options["strategy"] == "evolution" else "")
             + "; thresholds chosen on the search split (held-out training images), "
             "accuracy measured on the validation split (the task's test images).",
             "Paper mean C: the VELCRO paper's Table 1 over its cats, dogs and cars tasks, "
             "whose thresholds were chosen on the images it reports.",
             f"Not in the table: {', '.join(FOOTNOTE_TASKS)}, a single class, where a "
             "constant network is always right, so its C says nothing."]
    if missing:
        notes.append("Not measured: " + "; ".join(missing))
    text = table + "\n\n" + "\n".join(notes)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "table1.txt", text + "\n")
    plot_table1(records, args.out / "table1_accuracy_vs_C.png")
    written = [args.out / "table1.txt", args.out / "table1_accuracy_vs_C.png"]
    if args.json:
        write_json(args.json, records)
        written.append(args.json)
    print("wrote " + ", ".join(str(p) for p in written))
