"""``velcro export | run``: the integer deployment package, and running it on a device.

``export`` builds a VELCRO plan (given thresholds or a search), optionally vector
quantizes dense layers (:mod:`velcro.sw.vq.methods`), and quantizes the model into a
``.velcro`` package (:mod:`velcro.sw.export.quantize`, :mod:`velcro.sw.export.package`). ``run``
executes a package on a device over the first N validation images of the task it was
built for and compares it with the float model under the same compression (VELCRO
plan, and codebook weights for codebook layers), rebuilt from the package's
``source`` record. Devices are the runtime's accelerators
(:class:`velcro.sw.runtime.Accelerator`): ``golden`` (the NumPy model of the kernel),
``sim`` (the kernel's Verilog in cocotb, which also measures cycles) and
``alveo[:N]`` (card ``N``); each offers ``run(images) -> int32 logits`` and
``counts() -> per-layer MACs``.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np

from ..errors import DataError, DeviceError, ModelError, PlanError, printable
from ..files import write_json
from .options import (
    add_ray_arg,
    add_task_args,
    check_criterion,
    parse_thresholds,
    resolve_model,
    resolve_task,
)

DENSE_MODES = ("int8", "km", "pq")
#: ``velcro run --backend`` (:data:`velcro.sw.runtime.backends.alveo.BACKENDS`).
BACKENDS = ("auto", "pyxrt", "pynq")


def register(sub) -> None:
    p = sub.add_parser("export", help="quantize a model with a VELCRO plan into a .velcro "
                       "package")
    add_task_args(p)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--thresholds", help="per-layer percentiles T_k in [0, 100], e.g. "
                     "20,40,40,10 (default: no VELCRO skipping)")
    how.add_argument("--search", action="store_true", help="search thresholds automatically")
    p.add_argument("--criterion", default="variance", help="locality score: variance, "
                   "relative or fisher (default: variance)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="accuracy points the search may lose on the search split (default 0)")
    p.add_argument("--dense", default="int8", help="dense layers: int8 (default), km "
                   "(scalar k-means, --k) or pq (x-axis product quantization, --k, "
                   "--segment), run from int8 codebooks")
    p.add_argument("--k", type=int, help="codewords per codebook (a power of two)")
    p.add_argument("--segment", type=int, help="pq: inputs per segment")
    p.add_argument("--dense-layers", help="comma-separated dense layers for km/pq "
                   "(default: every dense layer)")
    p.add_argument("--out", type=Path, required=True, help="package file (.velcro)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "run", help="run a package on the validation images of its task",
        description="Run a package on the validation images of the task it records. "
        "Nothing but the package is needed: it is never a source of code or paths. The "
        "images are Fashion-MNIST's for a built-in task, else those of --data. With "
        "--weights (and --model for your own model) the float model with the same "
        "compression is run too, after checking it is the one the package came from.")
    p.add_argument("--package", type=Path, required=True, help="package file (.velcro)")
    p.add_argument("--data", type=Path, help="image folder of a package exported with --data "
                   "(one sub-folder per class)")
    p.add_argument("--image-size", help="resize --data images to H,W (default: the "
                   "package's input size)")
    p.add_argument("--model", help="float model to compare with, as 'package.module:callable' "
                   "or 'path/to/file.py:callable' (default with --weights: the reference CNN)")
    p.add_argument("--weights", type=Path, help="weights of the float model to compare with; "
                   "checked against the parameters sha256 the package records")
    p.add_argument("--device", default="golden", help="golden (the NumPy model of the kernel; "
                   "default), sim (RTL simulation of the kernel), alveo[:N] (card N) or "
                   "alveo:N,M,... (several cards, one Ray worker each)")
    p.add_argument("--workers", type=int, help="golden, sim: shard the images over N Ray "
                   "workers, one device each (default 1; needs velcro[ray])")
    add_ray_arg(p, "the workers of --workers or of several cards (default: local:N for N "
                "workers)")
    p.add_argument("--images", type=int, help="first N validation images (default: all)")
    p.add_argument("--json", type=Path, help="write the measured figures as JSON")
    p.add_argument("--simulator", choices=("verilator", "icarus"),
                   help="sim: the simulator (default: verilator, or $VELCRO_SIM)")
    p.add_argument("--kernel", choices=("shipped", "small"), default="shipped",
                   help="sim, golden: the kernel configuration (small: half the conv lanes, "
                   "256-bit ports; what Icarus simulates in reasonable time)")
    p.add_argument("--jobs", type=int, default=1,
                   help="sim: simulator processes per compute unit, each running a "
                   "contiguous part of the images (default 1)")
    p.add_argument("--cus", type=int, default=1, metavar="N",
                   help="compute units of the design (alveo: a bitstream linked with "
                   "'velcro build xclbin --cus N'; golden, sim: simulated): each run's "
                   "images are split over them and run at once (default 1)")
    p.add_argument("--axi-pause", type=float, default=0.0,
                   help="sim: probability of a random pause per AXI channel and cycle")
    p.add_argument("--xclbin", type=Path, help="alveo: the bitstream (default: "
                   "bitstreams/build/velcro_u280.xclbin or $VELCRO_XCLBIN)")
    p.add_argument("--backend", choices=BACKENDS, help="alveo: the Python binding that "
                   "drives the card: pyxrt (XRT's own), pynq (PYNQ 3.0.1, XRT 2.14 to 2.16) "
                   "or auto, the first that can work with the XRT installed (default: "
                   "$VELCRO_BACKEND, else auto; velcro doctor says which work)")
    # Torch only for the opt-in float comparison.
    p.set_defaults(func=cmd_run, needs_torch=lambda args: args.weights is not None)


def cmd_export(args) -> None:
    from ..export import export
    from ..export.package import save
    from ..locality.experiment import prepare, run_search
    from ..locality.plan import compress

    criterion = check_criterion(args.criterion)
    thresholds = parse_thresholds(args.thresholds) if args.thresholds is not None else None
    if not 0 <= args.tolerance < 100:
        raise PlanError(f"--tolerance must be in [0, 100) accuracy points, not {args.tolerance}")
    if args.dense not in DENSE_MODES:
        raise PlanError(f"--dense {args.dense!r} is not available; choose one of "
                        f"{', '.join(DENSE_MODES)}")
    model = resolve_model(args)
    task = resolve_task(args, model)
    dense = codebook_layers(model, args)
    plan = None
    if args.search:
        setup = prepare(model, task, sensitivity=criterion == "fisher", progress=True)
        found = run_search(setup, criterion, args.tolerance / 100, progress=True).thresholds
        plan = compress(setup.profile, found, criterion)
    # Recorded for people, never followed: names only, no paths of this machine.
    source = {"model": args.model,
              "weights": args.weights.name if args.weights else None,
              "data": args.data.name if args.data else None,
              "image_size": [int(v) for v in args.image_size.split(",")]
              if args.image_size else None}
    package = export(model, task, thresholds, plan=plan, criterion=criterion, dense=dense,
                     source=source, progress=True)
    save(package, args.out)
    convs = ", ".join(f"{layer.name} {layer.attrs['skipped']}/{math.prod(layer.out_shape)}"
                      for layer in package.tapped)
    print(f"{task.name}: C = {100 * package.C:.2f}% ({convs or 'no conv-activations'}), "
          f"{len(package.layers)} layers -> {args.out} ({args.out.stat().st_size} bytes)")


def codebook_layers(model, args) -> dict:
    """The dense layers ``--dense km|pq`` asks for, vector quantized (empty for int8)."""
    from torch import nn

    from ..vq import methods as vq
    from ..vq.finetune import dense_weights

    if args.dense == "int8":
        if args.k is not None or args.segment is not None or args.dense_layers:
            raise PlanError("--k, --segment and --dense-layers need --dense km or pq")
        return {}
    if args.dense == "km" and args.segment is not None:
        raise PlanError("--segment is for --dense pq; km quantizes single weights")
    names = ([n.strip() for n in args.dense_layers.split(",") if n.strip()]
             if args.dense_layers else
             [n for n, m in model.named_modules() if isinstance(m, nn.Linear)])
    params = {"k": args.k} if args.dense == "km" else {"k": args.k, "segment": args.segment}
    try:
        return vq.quantize_layers(dense_weights(model, names), args.dense, params)
    except vq.VQError as e:
        hint = "" if args.dense_layers else " (choose the layers with --dense-layers)"
        raise vq.VQError(f"{e}{hint}") from None


def open_device(spec: str, package, args=None):
    """The accelerator named by ``spec`` (:func:`velcro.sw.runtime.parse_device`), loaded
    with ``package``; ``args`` carries the backend options of ``velcro run``."""
    from ..runtime import Accelerator

    device = Accelerator.open(spec, **device_options(spec, args))
    device.load(package)
    return device


def device_specs(args) -> list[str]:
    """One device spec per worker of ``velcro run``: ``--device`` repeated ``--workers``
    times, or one ``alveo:N`` per card of ``--device alveo:N,M,...``."""
    import re

    from ..runtime import parse_device

    workers = args.workers
    if workers is not None and workers < 1:
        raise DeviceError(f"--workers must be at least 1, not {workers}")
    cards = re.fullmatch(r"alveo:(\d+(?:,\d+)+)", args.device or "")
    if cards:
        indices = [int(i) for i in cards.group(1).split(",")]
        if len(set(indices)) != len(indices):
            raise DeviceError(f"--device {args.device} names a card twice")
        if workers is not None and workers != len(indices):
            raise DeviceError(f"--device {args.device} runs one worker per card; --workers "
                              f"{workers} disagrees")
        return [f"alveo:{i}" for i in indices]
    kind, _ = parse_device(args.device)
    if kind == "alveo" and (workers or 1) > 1:
        raise DeviceError("one card runs one worker; name several cards "
                          "(--device alveo:0,1) instead of --workers")
    return [args.device] * (workers or 1)


def open_devices(specs: list[str], package, args):
    """The devices of ``specs`` behind one
    :class:`~velcro.sw.cluster.inference.ShardedDevice` (Ray must be running)."""
    from ..cluster.inference import ShardedDevice

    chunk = SIM_CHUNK if specs[0] == "sim" else None
    return ShardedDevice(specs, package, device_options(specs[0], args), chunk=chunk)


def device_options(spec: str, args=None) -> dict:
    """:meth:`Accelerator.open <velcro.sw.runtime.Accelerator.open>` options of ``spec``
    from the backend options of ``velcro run`` in ``args``."""
    from velcro.hw.kernel.config import CONFIGS

    from ..runtime import parse_device

    kind, _ = parse_device(spec)
    options = {}
    kernel = getattr(args, "kernel", "shipped")
    if kind == "alveo" and kernel != "shipped":
        raise DeviceError(f"alveo runs the shipped kernel; --kernel {kernel} is for sim "
                          "and golden")
    options["config"] = CONFIGS[kernel]
    options["cus"] = getattr(args, "cus", 1)
    if args is not None and kind == "sim":
        if not 0 <= args.axi_pause < 1:
            raise DeviceError(f"--axi-pause must be in [0, 1), not {args.axi_pause}")
        options.update(simulator=args.simulator, pause=args.axi_pause, jobs=args.jobs)
    elif args is not None and kind == "alveo":
        options.update(xclbin=args.xclbin, backend=getattr(args, "backend", None))
    if kind != "alveo" and getattr(args, "backend", None):
        raise DeviceError(f"--backend is for alveo, not {kind}")
    return options


def run_task(package, args):
    """The task whose validation images ``velcro run`` uses, from the package's task
    record and the command line only: Fashion-MNIST for a built-in task, else ``--data``
    (resized to the package's input with ``--image-size`` or by default)."""
    from ..data import check_image_size, make_task

    record = package.task
    classes = ",".join(str(c) for c in record["classes"])
    if args.data is None:
        from ..data import FASHION_MNIST_CLASSES

        if list(record["class_names"]) != list(FASHION_MNIST_CLASSES):
            raise DataError(f"the package was exported from an image folder (classes "
                            f"{printable(record['class_names'][:4])}...); give it with --data")
        side = tuple(package.input_shape[1:])
        return make_task(record["name"], classes, size=None if side == (28, 28) else side)
    size = None
    if args.image_size is not None:
        try:
            size = check_image_size(tuple(int(v) for v in args.image_size.split(",")))
        except ValueError:
            raise DataError(f"--image-size must be H,W, not {args.image_size!r}") from None
    else:
        size = tuple(package.input_shape[1:])
    task = make_task(None, classes, args.data, channels=package.input_shape[0], size=size)
    return type(task)(record["name"], task.classes, task.data)


def float_reference(package, task, args):
    """The float model given by ``--model/--weights`` (or the reference CNN with
    ``--weights`` alone), checked against the parameters hash the package records, with
    the same compression: the package's masks, means profiled again on the task's
    preprocessing split (deterministic), codebook layers with their codebook weights.
    Returns ``(module, plan, tapped)``.
    """
    import torch

    from ..export.bits import unpack_mask
    from ..export.package import codebook_weight
    from ..export.quantize import parameters_sha256
    from ..locality.experiment import prepare
    from ..locality.plan import Plan, PlanLayer

    model = resolve_model(args)
    if parameters_sha256(model) != package.source["parameters_sha256"]:
        raise ModelError("the float model given by --model/--weights differs from the one "
                         "the package was exported from (parameters sha256 mismatch)")
    modules = dict(model.named_modules())
    for layer in package.layers:
        if layer.op == "dense_codebook":
            if layer.name not in modules or not hasattr(modules[layer.name], "weight"):
                raise ModelError(f"the float model has no dense layer {layer.name!r}")
            weight = codebook_weight(layer) * layer.attrs["weight_scale"]
            modules[layer.name].weight.data = torch.from_numpy(weight.astype(np.float32))
    convs = package.tapped
    if not convs:
        return model, None, None
    setup = prepare(model, task, sensitivity=False)
    from ..export.schema import layer_name

    names = [layer.attrs.get("tap") or layer.name for layer in convs]
    if [layer_name(n) for n in setup.profile.names] != names:
        raise ModelError(f"the model's conv-activations {setup.profile.names} do not match "
                         f"the package's tapped layers {names}")
    plan = Plan([PlanLayer(name, t, unpack_mask(layer.arrays["mask"], layer.out_shape),
                           prof.mean.astype(np.float32))
                 for name, layer, t, prof in zip(names, convs, package.velcro["thresholds"],
                                                 setup.profile.layers, strict=True)],
                package.velcro["criterion"] or "variance")
    return model, plan, setup.tapped


#: Images per kernel run of ``velcro run --device sim``, after each of which it reports.
SIM_CHUNK = 10


def run_images(device, images: np.ndarray, spec: str) -> np.ndarray:
    """The device's logits for ``images``. The RTL simulation runs them :data:`SIM_CHUNK`
    at a time, one kernel run each, and reports progress after each run; the other
    devices take them in one run."""
    from ..progress import progress

    if not spec.startswith("sim") or len(images) <= SIM_CHUNK:
        return device.run(images)
    logits = []
    with progress(total=len(images), desc=f"{spec} run", unit="img") as bar:
        for start in range(0, len(images), SIM_CHUNK):
            logits.append(device.run(images[start:start + SIM_CHUNK]))
            bar.update(len(logits[-1]))
    return np.concatenate(logits)


def cycle_record(device, images: int) -> dict:
    """Measured kernel cycles: totals, per image, and per descriptor (layer)."""
    totals = device.totals
    return {
        "total": totals["cycles"],
        "per_image": round(totals["cycles"] / images, 1),
        "stall": totals["stall_cycles"],
        "mac": totals["mac_cycles"],
        "layers": [{"name": c.name, "op": c.opcode, "cycles": c.cycles, "busy": c.busy,
                    "stall": c.stall_cycles, "mac": c.mac_cycles, "skipped": c.skipped}
                   for c in device.counters()],
        "simulated_seconds": round(device.sim["seconds"], 2),
        "build_seconds": round(device.sim["build_seconds"], 2),
        "simulated_cycles_per_second": round(device.sim["cycles"] / device.sim["seconds"])
        if device.sim["seconds"] else None,
    }


def counter_check(device, images: np.ndarray, spec: str) -> tuple[dict, str | None]:
    """The MAC cycles and skipped elements the kernel counted, per descriptor, next to
    what the golden model of the same kernel counts on the same images.

    Returns the record and, when they differ, a one-line description of the first
    descriptor that does (``None`` when every one agrees). The cycles are not compared:
    they depend on memory latency, which the golden model does not have.
    """
    from ..runtime import Accelerator

    expected = Accelerator.open("golden", config=device.config)
    try:
        expected.load(device.package)
        expected.run(images)
    finally:
        expected.close()
    layers, problem = [], None
    for got, want in zip(device.counters(), expected.counters(), strict=True):
        layers.append({"name": got.name, "mac_cycles": got.mac_cycles,
                       "mac_cycles_expected": want.mac_cycles, "skipped": got.skipped,
                       "skipped_expected": want.skipped})
        if problem is None and (got.mac_cycles, got.skipped) != (want.mac_cycles,
                                                                  want.skipped):
            problem = (f"{spec} counted {got.mac_cycles} MAC cycles and {got.skipped} "
                       f"skipped elements in {got.name} ({got.opcode}), the golden model "
                       f"of the kernel {want.mac_cycles} and {want.skipped}")
    record = {
        "mac_cycles": sum(layer["mac_cycles"] for layer in layers),
        "mac_cycles_expected": sum(layer["mac_cycles_expected"] for layer in layers),
        "skipped": sum(layer["skipped"] for layer in layers),
        "skipped_expected": sum(layer["skipped_expected"] for layer in layers),
        "match": problem is None,
        "layers": layers,
    }
    return record, problem


def predictions_sha256(predictions: np.ndarray) -> str:
    """sha256 of the predicted classes as little-endian int64: compares devices' outputs."""
    return hashlib.sha256(np.asarray(predictions, dtype="<i8").tobytes()).hexdigest()


def cmd_run(args) -> None:
    specs = device_specs(args)
    if len(specs) == 1 and args.ray is None:
        return _run(args, specs)
    from ..cluster.engine import connect

    with connect(args.ray or f"local:{len(specs)}"):
        return _run(args, specs)


def _run(args, specs: list[str]) -> None:
    from ..evaluate import predict
    from ..export.package import load
    from ..locality.plan import applied
    from ..runtime.partition import partition_report, placement, round_trip_report, round_trips

    if args.weights is None and args.model is not None:
        raise ModelError("--model needs --weights (the trained parameters)")
    package = load(args.package)
    task = run_task(package, args)
    val = task.split("validation")
    n = len(val) if args.images is None else args.images
    if not 1 <= n <= len(val):
        raise DataError(f"--images must be in [1, {len(val)}] (the validation images of "
                        f"{printable(task.name)}), not {n}")
    images, labels = val.images[:n], val.labels[:n]
    if images.shape[1:] != tuple(package.input_shape):
        raise DataError(f"the task's images are {list(images.shape[1:])}, the package "
                        f"expects {list(package.input_shape)}")
    compare = args.weights is not None
    if compare:
        model, plan, tapped = float_reference(package, task, args)
    sharded = len(specs) > 1 or args.ray is not None
    device = (open_devices(specs, package, args) if sharded
              else open_device(args.device, package, args))
    start = time.perf_counter()
    logits = device.run(images) if sharded else run_images(device, images, args.device)
    # The RTL simulation's first run builds the simulator; that is not run time.
    build = getattr(device, "sim", {}).get("build_seconds", 0)
    seconds = time.perf_counter() - start - build
    predictions, counts = logits.argmax(1), device.counts()
    where, fraction, tiled = placement(device, package, counts)
    record = {
        "package": str(args.package),
        "device": args.device,
        "workers": len(specs),
        "cus": args.cus,
        "kernel": args.kernel,
        "task": task.name,
        "C": package.C,
        "images": n,
        "accuracy": float(np.mean(predictions == labels)),
        "macs": sum(c.macs for c in counts),
        "macs_skipped": sum(c.skipped for c in counts),
        "kernel_mac_fraction": fraction,
        "layers": [{"name": c.name, "op": c.op, "device": where[c.name], "tiles": tiled[c.name],
                    "macs": c.macs, "macs_skipped": c.skipped, "lookups": c.lookups}
                   for c in counts],
        "seconds": round(seconds, 4),
        "images_per_second": round(n / seconds, 1),
        "predictions_sha256": predictions_sha256(predictions),
    }
    if compare:
        if tapped is None:
            float_predictions = predict(model, images)
        else:
            with applied(tapped, plan):
                float_predictions = predict(tapped.module, images)
        record["float_accuracy"] = float(np.mean(float_predictions == labels))
    record["round_trips"] = round_trips(device, package)
    units = getattr(device, "unit_cycles", None)
    if units is not None and args.cus > 1:
        record["unit_cycles"] = list(units)
    if args.device == "sim":
        record["cycles"] = cycle_record(device, n)
        record["build_seconds"], record["run_seconds"] = round(build, 2), round(seconds, 2)
    problem = None
    if args.device != "golden":
        record["kernel_counters"], problem = counter_check(device, images, args.device)
    skipped = record["macs_skipped"] / max(record["macs"] + record["macs_skipped"], 1)
    versus = (f" (float with the same plan {100 * record['float_accuracy']:.2f}%)"
              if compare else "")
    print(f"{printable(task.name)} on {args.device}: accuracy {100 * record['accuracy']:.2f}%"
          f"{versus} on {n} images, {skipped:.1%} of MACs skipped, "
          f"{record['images_per_second']} images/s", flush=True)
    print(partition_report(package, where, fraction, tiled), round_trip_report(
        record["round_trips"]), sep="\n", flush=True)
    if "build_seconds" in record:
        print(f"simulator: {record['build_seconds']} s to generate the Verilog and compile it, "
              f"{record['run_seconds']} s to run", flush=True)
    if "unit_cycles" in record:
        units = record["unit_cycles"]
        print(f"{len(units)} compute units: {', '.join(f'{c:,}' for c in units)} cycles; "
              f"they run at once, so the run takes the largest, {max(units) / n:,.1f} "
              f"per image", flush=True)
    if "kernel_counters" in record:
        counted = record["kernel_counters"]
        print(f"kernel counted {counted['mac_cycles']} MAC cycles and {counted['skipped']} "
              f"skipped elements (golden model of the kernel: "
              f"{counted['mac_cycles_expected']} and {counted['skipped_expected']})",
              flush=True)
    if args.json:
        write_json(args.json, record)
        print(f"wrote {args.json}")
    if problem is not None:
        raise DeviceError(problem)
