"""``velcro bench [NAME]``: one benchmark from :mod:`velcro.sw.bench`, or without a name
the whole suite of :mod:`velcro.sw.bench.suite`; prints the figures."""

from __future__ import annotations

import importlib
from pathlib import Path

from .. import bench as benches
from ..files import write_json


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure throughput and cycle figures (without NAME: "
                       "every headline figure in one run, minutes)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    p.add_argument("--seed", type=int, default=0, help="stimulus seed of the suite")
    p.set_defaults(func=_suite)
    sub_names = p.add_subparsers(dest="bench", metavar="NAME")
    for name in benches.BENCHES:
        module = importlib.import_module(f"{benches.__name__}.{name}")
        q = sub_names.add_parser(name, help=module.HELP)
        module.add_arguments(q)
        q.add_argument("--json", type=Path, help="also write the figures as JSON")
        q.set_defaults(func=_runner(module))


def _print(result: dict) -> None:
    for key, value in result.items():
        print(f"{key:36s} {value}")


def _suite(args) -> None:
    from ..bench.suite import run

    result = run(args.seed)
    _print(result)
    if args.json:
        write_json(args.json, result)


def _runner(module):
    def run(args):
        result = module.run(args)
        _print(result)
        if args.json:
            write_json(args.json, result)
    return run
