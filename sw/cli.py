"""The ``velcro`` command line.

Each feature registers its sub-commands from its own module in
:mod:`velcro.sw.commands`; this file holds the
shared task/model options and turns :class:`~velcro.sw.errors.VelcroError` into a
one-line message with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path

from . import commands
from .errors import VelcroError


def add_task_args(parser: argparse.ArgumentParser, task_required: bool = True) -> None:
    """``--task/--classes/--data/--image-size/--model/--weights``."""
    group = parser.add_argument_group("task and model")
    group.add_argument("--task", help="named task: footwear, tops, bags, trousers-dresses")
    group.add_argument("--classes", help="ad-hoc task: comma-separated class indices or names")
    group.add_argument("--data", type=Path, help="image folder (one sub-folder per class) "
                       "instead of Fashion-MNIST")
    group.add_argument("--image-size", help="resize folder images to H,W")
    group.add_argument("--model", help="your own model as 'package.module:callable' "
                       "(default: the shipped reference CNN)")
    group.add_argument("--weights", type=Path, help="weights for --model (safetensors, or a "
                       "state_dict loaded with weights_only=True)")
    parser.set_defaults(task_required=task_required)


def resolve_model(args):
    """The model named by ``--model/--weights``, or the shipped reference CNN."""
    from .errors import ModelError
    from .model import load_reference, load_user_model

    if args.model is None:
        if args.weights is not None:
            from .model import load_weights, reference_cnn

            return load_weights(reference_cnn(), args.weights)
        return load_reference()
    if args.weights is None:
        raise ModelError("--model needs --weights (the trained parameters)")
    return load_user_model(args.model, args.weights)


def resolve_task(args, model):
    """The task named by ``--task/--classes/--data``, with images shaped for ``model``."""
    from .data import make_task
    from .errors import DataError
    from .evaluate import check_input
    from .model import input_channels

    if args.task is None and args.classes is None and args.data is None:
        raise DataError("give --task, --classes or --data")
    size = None
    if args.image_size:
        try:
            h, w = (int(v) for v in args.image_size.split(","))
        except ValueError:
            raise DataError(f"--image-size must be H,W, not {args.image_size!r}") from None
        size = (h, w)
    task = make_task(args.task, args.classes, args.data, channels=input_channels(model),
                     size=size)
    check_input(model, task.data.images)
    return task


def write_json(path: Path, record) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="velcro",
        description="Compress a trained CNN for a specialized task (VELCRO, vector "
                    "quantization) and run it on the Alveo U280 accelerator.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Every module of velcro.sw.commands defines register(subparsers).
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VelcroError as e:
        print(f"velcro: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("velcro: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
