"""``velcro train | profile | compress | demo``: the reference model and VELCRO."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import PlanError, printable
from ..files import write_json, write_text
from ..locality.rules import LEVEL, RULES
from ..locality.strategies import BUDGET, STRATEGIES
from .options import (
    add_ray_arg,
    add_task_args,
    check_criterion,
    parse_thresholds,
    ray_cluster,
    resolve_model,
    resolve_task,
)

#: The search strategy of ``compress --search`` and ``table1`` unless ``--strategy``
#: says otherwise: the one ``export --search``, the demo and the curves use too.
DEFAULT_STRATEGY = "greedy"
#: ``bags`` (one class: a constant network is always right there) is left out.
DEMO_TASKS = ("footwear", "tops", "trousers-dresses")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a shipped network on all ten Fashion-MNIST classes")
    p.add_argument("--model", default="reference",
                   help="reference (default), small_resnet or small_inverted_residual")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights and the batch order (default 0)")
    p.add_argument("--out", type=Path, help="weights file (.safetensors; default: "
                   "<model>.safetensors in the user folder, $VELCRO_HOME or "
                   "~/.local/share/velcro; the shipped weights are never overwritten); use "
                   "it with --model <model> --weights")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("profile", help="profile conv-activations on a task's preprocessing split")
    add_task_args(p)
    p.add_argument("--sensitivity", action="store_true",
                   help="also record squared gradients (needed by --criterion fisher)")
    p.add_argument("--out", type=Path, required=True, help="profile file (.npz)")
    add_ray_arg(p, "the profile, the images sharded over its CPUs")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("compress",
                       help="build a VELCRO plan and measure it on the validation split")
    add_task_args(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--thresholds", help="per-layer percentiles T_k in [0, 100], e.g. 20,40,40,10")
    how.add_argument("--search", action="store_true", help="search thresholds automatically")
    p.add_argument("--criterion", default="variance", help="locality score: variance (the "
                   "paper), relative or fisher (default: variance)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="with --rule strict: accuracy points the search may lose on the "
                   "search split (default 0)")
    add_rule_args(p)
    p.add_argument("--json", type=Path, help="also write the result record as JSON")
    p.add_argument("--plan", type=Path, help="also write the plan (.npz)")
    add_ray_arg(p, "the profile and the search's candidate plans")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("demo", help="search thresholds on footwear, tops and trousers-dresses "
                       "with every criterion; table, plot and JSON")
    p.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default demo/)")
    p.add_argument("--tasks", default=",".join(DEMO_TASKS),
                   help=f"comma-separated named tasks (default {','.join(DEMO_TASKS)})")
    p.add_argument("--criteria", default="variance,relative,fisher",
                   help="comma-separated locality criteria (default variance,relative,fisher)")
    p.set_defaults(func=cmd_demo)


def add_rule_args(p) -> None:
    """``--rule`` and ``--level``: the search's acceptance rule."""
    p.add_argument("--rule", default="strict", choices=RULES,
                   help="acceptance of a candidate plan on the search split: strict "
                   "(default) refuses any plan below the uncompressed model's accuracy "
                   "minus --tolerance; mcnemar refuses a plan when the exact one-sided "
                   "McNemar test finds it less accurate than the model at --level (of the "
                   "b + c images where exactly one of them is right, b right only for the "
                   "model: refused if P(Binomial(b + c, 1/2) >= b) < level)")
    p.add_argument("--level", type=float, default=LEVEL,
                   help=f"significance level of --rule mcnemar (default {LEVEL}); 0.5 is "
                   "the strict rule up to ties, lower levels refuse fewer moves")
    p.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=STRATEGIES,
                   help="how the search explores thresholds: greedy (default, as in export "
                   "--search and the demo) raises the layer whose move costs the least "
                   "search-split cross-entropy per unit of C; coordinate (the highest mean "
                   "search-split C of the three on footwear, tops and trousers-dresses) "
                   "pushes each layer in turn as far as the rule admits, for up to 3 "
                   "sweeps; evolution runs a (mu+lambda) evolution of threshold vectors "
                   "from --seed within --budget evaluations")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of --strategy evolution's random numbers (default 0)")
    p.add_argument("--budget", type=int,
                   help=f"most plans --strategy evolution measures, the uncompressed one "
                   f"included (default {BUDGET})")


def search_rule(args) -> dict:
    """The search's ``rule``, ``level`` and ``strategy`` options (with the evolution's
    ``seed`` and ``budget``) from ``--rule/--level/--strategy/--seed/--budget``."""
    if not 0 < args.level < 1:
        raise PlanError(f"--level must be in (0, 1), not {args.level}")
    if args.rule != "strict" and getattr(args, "tolerance", 0):
        raise PlanError("--tolerance belongs to --rule strict; --rule mcnemar takes --level")
    options = {"rule": args.rule, "level": args.level, "strategy": args.strategy}
    if args.strategy == "evolution":
        if args.budget is not None and args.budget < 2:
            raise PlanError(f"--budget must be at least 2 (the uncompressed plan and one "
                            f"candidate), not {args.budget}")
        options.update(seed=args.seed, budget=args.budget)
    elif args.budget is not None:
        raise PlanError(f"--budget belongs to --strategy evolution, not {args.strategy}")
    return options


def cmd_train(args) -> None:
    from ..errors import ModelError
    from ..models import ARCHITECTURES, user_folder
    from ..train import train_network

    if args.model not in ARCHITECTURES:
        raise ModelError(f"unknown network {args.model!r}; choose one of "
                         f"{', '.join(ARCHITECTURES)}")
    if args.epochs < 1:
        raise PlanError(f"--epochs must be at least 1, not {args.epochs}")
    out = args.out or user_folder() / f"{args.model}.safetensors"
    record = train_network(args.model, args.epochs, args.seed, out)
    print(f"{args.model}: test accuracy {100 * record['test_accuracy']:.2f}% after "
          f"{args.epochs} epochs ({record['train_seconds']} s) -> {out} (use it with "
          f"--model {args.model} --weights {out})")


def cmd_profile(args) -> None:
    from ..locality.experiment import prepare

    with ray_cluster(args) as cluster:
        model = resolve_model(args)
        # On Ray the workers decode their share of a folder's images, not the driver.
        task = resolve_task(args, model, lazy=cluster is not None)
        setup = prepare(model, task, sensitivity=args.sensitivity, progress=True,
                        **profile_options(cluster))
    setup.profile.save(args.out)
    shapes = ", ".join(f"{layer.name} {list(layer.shape)}" for layer in setup.profile.layers)
    print(f"profiled {setup.n_preprocessing} images of {task.name} in "
          f"{setup.profile_seconds:.2f} s: {shapes} -> {args.out}")


def profile_options(cluster) -> dict:
    """:func:`~velcro.sw.locality.experiment.prepare`'s profiler on ``cluster`` (none: {})."""
    if cluster is None:
        return {}
    from ..cluster.profile import profile

    return {"profiler": profile}


def search_options(cluster) -> dict:
    """The search's evaluator on ``cluster``: one actor per CPU, one torch thread per
    evaluation (none: the serial search, {})."""
    if cluster is None:
        return {}
    from ..cluster.engine import THREADS
    from ..cluster.search import evaluator_factory

    return {"evaluator": evaluator_factory(cluster.workers), "threads": THREADS}


def cmd_compress(args) -> None:
    from ..locality.experiment import prepare, record, run_search, validation_accuracy
    from ..locality.plan import check_thresholds, compress
    from ..locality.taps import tap

    criterion = check_criterion(args.criterion)
    thresholds = parse_thresholds(args.thresholds) if args.thresholds is not None else None
    if not 0 <= args.tolerance < 100:
        raise PlanError(f"--tolerance must be in [0, 100) accuracy points, not {args.tolerance}")
    rule = search_rule(args)
    model = resolve_model(args)
    if thresholds is not None:
        check_thresholds(thresholds, tap(model).names)
    task = resolve_task(args, model)
    with ray_cluster(args) as cluster:
        start = time.perf_counter()
        setup = prepare(model, task, sensitivity=criterion == "fisher", progress=True,
                        **profile_options(cluster))
        result = None
        if thresholds is None:
            result = run_search(setup, criterion, args.tolerance / 100, progress=True,
                                **rule, **search_options(cluster))
            thresholds = result.thresholds
    plan = compress(setup.profile, thresholds, criterion)
    plan.meta.update(task=task.name, classes=list(task.classes))
    rec = record(setup, plan, validation_accuracy(setup, None),
                 time.perf_counter() - start, result)
    if result is not None:
        rec.update(search_strategy=result.strategy,
                   search_seconds=round(result.seconds, 3))
    if cluster is not None:
        rec["ray_cpus"] = cluster.cpus
    print(f"{printable(task.name)}: C = {100 * rec['C']:.2f}% with thresholds "
          f"{rec['thresholds']} ({criterion}); validation accuracy "
          f"{100 * rec['accuracy']:.2f}% (uncompressed {100 * rec['baseline_accuracy']:.2f}%)",
          flush=True)
    if result is not None:
        print(f"search: {result.strategy}, {result.evaluations} evaluations in "
              f"{result.seconds:.1f} s", flush=True)
    if args.json:
        write_json(args.json, rec)
        print(f"wrote {args.json}")
    if args.plan:
        plan.save(args.plan)
        print(f"wrote {args.plan}")


def cmd_demo(args: argparse.Namespace) -> None:
    from ..data import make_task
    from ..locality.experiment import demo_files, demo_task, format_table
    from ..models import load_reference, reference_record
    from ..report.plots import plot_accuracy_vs_C

    criteria = [check_criterion(c.strip()) for c in args.criteria.split(",") if c.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    model = load_reference()
    print(f"reference CNN: {100 * reference_record()['test_accuracy']:.2f}% on the 10-class "
          "Fashion-MNIST test set")
    results = []
    for name in tasks:
        start = time.perf_counter()
        results.append(demo_task(model, make_task(name), criteria, progress=True))
        print(f"  {name}: {time.perf_counter() - start:.1f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    table = format_table(results, criteria)
    print("\nPer criterion: C chosen by the search (no loss on the search split) with the change"
          "\nin validation accuracy in points / largest C on the traced curve with no validation"
          "\nloss (the paper's Table 1 measure).\n")
    print(table)
    for name, content in demo_files(results).items():
        write_json(args.out / name, content)
    plot_accuracy_vs_C(results, args.out / "velcro_accuracy_vs_C.png")
    write_text(args.out / "velcro_table.txt", table + "\n")
    print(f"\nwrote {args.out}/velcro_table.json, velcro_curves.json, velcro_accuracy_vs_C.png")
    print("The paper's Table 1 on its networks: 'velcro zoo train resnet18|googlenet|"
          "mobilenet_v2' (hours on 2 cores), then 'velcro table1' (the reference CNN alone: "
          "'velcro table1 --networks reference', minutes).")
