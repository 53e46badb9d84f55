"""Options shared by several sub-commands: the task and model, thresholds and criteria."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import PlanError


def add_task_args(parser: argparse.ArgumentParser, task_required: bool = True) -> None:
    """``--task/--classes/--data/--image-size/--model/--weights``."""
    group = parser.add_argument_group("task and model")
    group.add_argument("--task", help="named task: footwear, tops, bags, trousers-dresses")
    group.add_argument("--classes", help="ad-hoc task: comma-separated class indices or names")
    group.add_argument("--data", type=Path, help="image folder (one sub-folder per class) "
                       "instead of Fashion-MNIST")
    group.add_argument("--image-size",
                       help="resize the images (a folder's or Fashion-MNIST's) to H,W")
    group.add_argument("--model", help="a shipped network (reference, small_resnet, "
                       "small_inverted_residual), your own model as 'package.module:callable' "
                       "or 'path/to/file.py:callable' with --weights, or an ONNX file "
                       "(model.onnx, the onnx extra) (default: the shipped reference CNN)")
    group.add_argument("--weights", type=Path, help="weights for --model (safetensors, or a "
                       "state_dict loaded with weights_only=True)")
    parser.set_defaults(task_required=task_required)


def add_ray_arg(parser: argparse.ArgumentParser, what: str) -> None:
    """``--ray auto|local:N|ADDRESS``: where :mod:`velcro.sw.cluster` runs ``what``."""
    parser.add_argument("--ray", metavar="ADDRESS", help=f"run {what} on Ray: local:N "
                        "(start Ray here with N CPUs), auto (the cluster this machine is "
                        "a node of) or a cluster address (host:6379, ray://host:10001); "
                        "needs velcro[ray]")


def ray_cluster(args):
    """The Ray of ``--ray`` for a ``with`` block (:func:`velcro.sw.cluster.engine.connect`),
    or ``None`` without ``--ray``; Ray is imported only when it is asked for."""
    import contextlib

    if getattr(args, "ray", None) is None:
        return contextlib.nullcontext(None)
    from ..cluster.engine import connect

    return connect(args.ray)


def resolve_model(args):
    """The model named by ``--model/--weights``, or the shipped reference CNN."""
    from ..errors import ModelError
    from ..models import ARCHITECTURES, load_network, load_reference, load_user_model

    if args.model in ARCHITECTURES:
        if args.weights is not None:
            from ..models import load_weights

            return load_weights(ARCHITECTURES[args.model](), args.weights)
        return load_network(args.model)
    if args.model is not None and args.model.endswith(".onnx"):
        from ..export.graph import onnx_model

        if args.weights is not None:
            raise ModelError("an ONNX file holds its weights; drop --weights")
        if not Path(args.model).is_file():
            raise ModelError(f"ONNX file {args.model} does not exist")
        return onnx_model(Path(args.model))
    if args.model is None:
        if args.weights is not None:
            from ..models import load_weights, reference_cnn

            return load_weights(reference_cnn(), args.weights)
        return load_reference()
    if args.weights is None:
        raise ModelError("--model needs --weights (the trained parameters)")
    return load_user_model(args.model, args.weights)


def resolve_task(args, model, lazy: bool = False):
    """The task named by ``--task/--classes/--data``, with images shaped for ``model``
    (``lazy``: a folder's images are listed, not decoded; see :func:`make_task
    <velcro.sw.data.make_task>`)."""
    from ..data import check_image_size, make_task
    from ..errors import DataError
    from ..evaluate import check_input
    from ..models import input_channels

    if args.task is None and args.classes is None and args.data is None:
        raise DataError("give --task, --classes or --data")
    if args.task is not None and args.classes is not None:
        raise DataError("give --task or --classes, not both (--classes is an ad-hoc task)")
    size = None
    if args.image_size is not None:
        try:
            h, w = (int(v) for v in args.image_size.split(","))
        except ValueError:
            raise DataError(f"--image-size must be H,W, not {args.image_size!r}") from None
        size = check_image_size((h, w))
    task = make_task(args.task, args.classes, args.data, channels=input_channels(model),
                     size=size, lazy=lazy)
    check_input(model, task.data.images if hasattr(task.data, "images")
                else task.data.read(0, 1))
    return task


def parse_thresholds(text: str) -> list[float]:
    """``--thresholds``: comma-separated finite percentiles (their range is checked against
    the model's layers later)."""
    import math

    if not text.strip():
        raise PlanError("--thresholds is empty; give one percentile per conv-activation "
                        "(e.g. 20,30,30,20), or --search")
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise PlanError(f"--thresholds must be comma-separated numbers, not {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise PlanError(f"--thresholds must be finite numbers, not {text!r}")
    return values


def check_criterion(name: str) -> str:
    from ..locality.plan import CRITERIA

    if name not in CRITERIA:
        raise PlanError(f"unknown criterion {name!r}; choose one of {', '.join(CRITERIA)}")
    return name
