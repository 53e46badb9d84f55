"""``velcro vq | deepcompress``: vector quantization and Deep Compression of dense layers."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import VQError
from ..files import write_json

#: How the compression rates of ``velcro vq`` are counted, written into every record.
COUNTED = ("weight matrices of all dense layers against float32; codebooks, scales and "
           "SVD factors at 32 bits per value; indices at log2(k) bits; dense layers not "
           "quantized count 32 bits per weight; biases are not counted (as in Gong et al.)")
TRAIN_IMAGES = 20000
#: How a sweep chooses the configuration that meets a target, written into its record.
SELECTION = ("chosen on the 10,000 training images held out of the reference CNN's "
             "training (heldout_accuracy), reported on the 10,000 test images (accuracy); "
             "fine-tuning uses the other 50,000 training images")
PQ_TARGET = (20.0, 1.0)       # compression rate, accuracy points lost
KM_TARGET = (8.0, 0.5)


def register(sub) -> None:
    p = sub.add_parser("vq", help="vector-quantize the reference model's dense layers "
                       "(binarization, k-means, PQ, RQ, SVD)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--method", help="bin, km, pq, rq or svd")
    how.add_argument("--sweep", action="store_true",
                     help="every method over a grid of parameters: plot and JSON in --out")
    p.add_argument("--k", type=int, help="codewords per codebook (power of two, 2..65536)")
    p.add_argument("--segment", type=int, help="segment length s of PQ (and of RQ; default "
                   "for RQ: whole rows)")
    p.add_argument("--axis", default="x", help="PQ segments along the inputs (x, default) "
                   "or the outputs (y)")
    p.add_argument("--stages", type=int, help="residual quantization rounds t")
    p.add_argument("--rank", type=int, help="SVD rank r")
    p.add_argument("--layers", default="fc1",
                   help="dense layers to quantize, comma-separated (default fc1); the other "
                   "dense layers stay float32 and count in the rate at 32 bits per weight")
    p.add_argument("--finetune", type=int, metavar="EPOCHS",
                   help="epochs of codebook fine-tuning on training images after quantizing "
                   "(default: 0 with --method, the paper's plain methods; 1 with --sweep, "
                   "which then records plain and fine-tuned points)")
    p.add_argument("--train-images", type=int, default=TRAIN_IMAGES,
                   help=f"training images used for fine-tuning (default {TRAIN_IMAGES})")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the clustering and of the fine-tuning images (default 0)")
    p.add_argument("--json", type=Path, help="result record (with --method)")
    p.add_argument("--out", type=Path, default=Path("demo"),
                   help="output folder of --sweep (default demo/)")
    p.set_defaults(func=cmd_vq)

    p = sub.add_parser("deepcompress", help="Deep Compression (pruning, trained quantization, "
                       "Huffman coding) of LeNet-300-100 and the reference CNN")
    p.add_argument("--models", default="lenet,reference",
                   help="comma-separated: lenet (LeNet-300-100, trained here on "
                   "Fashion-MNIST) and/or reference (the shipped CNN)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of training, pruning order and clustering (default 0)")
    p.add_argument("--out", type=Path, default=Path("demo"),
                   help="output folder (default demo/)")
    p.set_defaults(func=cmd_deepcompress)


def _params(args) -> dict:
    return {key: value for key, value in (("k", args.k), ("segment", args.segment),
                                          ("axis", args.axis), ("stages", args.stages),
                                          ("rank", args.rank)) if value is not None}


def _tuning(args, model, epochs: int):
    import numpy as np

    from ..data import load_fashion_mnist
    from ..vq.finetune import DenseHead, Tuning

    if epochs == 0:
        return None
    # Neither the held-out images (the sweep's choice) nor the test images (its report).
    train = load_fashion_mnist("fit")
    if not 1 <= args.train_images <= len(train):
        raise VQError(f"--train-images must be in [1, {len(train)}], not {args.train_images}")
    pick = np.sort(np.random.default_rng(args.seed).permutation(len(train))[:args.train_images])
    return Tuning(DenseHead(model, train.images[pick], train.labels[pick]), epochs,
                  seed=args.seed)


def cmd_vq(args) -> None:
    from ..models import load_reference
    from ..vq.finetune import dense_weights
    from ..vq.methods import quantize_layers
    from ..vq.sweep import evaluate

    epochs = args.finetune if args.finetune is not None else (1 if args.sweep else 0)
    if epochs < 0:
        raise VQError(f"--finetune must be 0 or more epochs, not {epochs}")
    model = load_reference()
    names = [n.strip() for n in args.layers.split(",") if n.strip()]
    weights = dense_weights(model, names)
    if not weights:
        raise VQError(f"--layers names no dense layer: {args.layers!r}")
    if args.sweep:
        return _sweep(args, model, weights, epochs)
    params = _params(args)
    # Quantize before loading the images, so bad parameters fail at once.
    start = time.perf_counter()
    quantized = quantize_layers(weights, args.method, params, args.seed)
    head, heldout = _heads(model)
    tuning = _tuning(args, model, epochs)
    records = evaluate(head, quantized, args.method, params, tuning, progress=True,
                       heldout=heldout)
    rec = {**records[-1], "baseline_accuracy": head.accuracy(),
           "heldout_baseline_accuracy": heldout.accuracy(), "counted": COUNTED,
           "seconds": round(time.perf_counter() - start, 1)}
    if len(records) > 1:
        rec["plain_accuracy"] = records[0]["accuracy"]
    tuned = f", fine-tuned {epochs} epoch(s)" if epochs else ""
    print(f"{next(iter(quantized.values())).describe()} on {', '.join(names)}{tuned}: "
          f"{rec['compression_rate']:.2f}x, accuracy {100 * rec['accuracy']:.2f}% "
          f"(float32 {100 * rec['baseline_accuracy']:.2f}%)", flush=True)
    if args.json:
        write_json(args.json, rec)
        print(f"wrote {args.json}")


def _heads(model):
    """The dense heads measuring test accuracy (reported) and held-out accuracy (chosen on)."""
    from ..data import load_fashion_mnist
    from ..vq.finetune import DenseHead

    test, held = load_fashion_mnist("test"), load_fashion_mnist("heldout")
    return (DenseHead(model, test.images, test.labels),
            DenseHead(model, held.images, held.labels))


def target(records: list[dict], method: str, goal: tuple[float, float], baseline: float,
           heldout_baseline: float) -> dict:
    """Whether ``method`` meets ``goal`` (rate, points lost): the configuration is chosen
    on held-out accuracy (the most accurate there among those compressing enough), and
    it meets the goal when its loss on the held-out images is within the points; its
    test figures are what is reported (``loss_points``, ``met_on_test``)."""
    from ..vq.sweep import best_record

    rate, loss = goal
    best = best_record(records, method, rate, key="heldout_accuracy")
    result = {"min_compression_rate": rate, "max_loss_points": loss, "met": False,
              "chosen_on": "heldout"}
    if best is not None:
        lost = 100 * (baseline - best["accuracy"])
        held_lost = 100 * (heldout_baseline - best["heldout_accuracy"])
        result.update(best={k: best[k] for k in ("params", "compression_rate", "accuracy",
                                                 "heldout_accuracy")},
                      loss_points=round(lost, 2), heldout_loss_points=round(held_lost, 2),
                      met=bool(held_lost <= loss + 1e-9),
                      met_on_test=bool(lost <= loss + 1e-9))
    return result


def _sweep(args, model, weights: dict, epochs: int) -> None:
    from ..report.plots import plot_sweep
    from ..vq.sweep import ordering, sweep, sweep_configs

    start = time.perf_counter()
    head, heldout = _heads(model)
    baseline, heldout_baseline = head.accuracy(), heldout.accuracy()
    tuning = _tuning(args, model, epochs)
    configs = sweep_configs(next(iter(weights.values())).shape)
    records = sweep(head, weights, configs, args.seed, tuning, heldout=heldout)
    plain = [r for r in records if r["finetune_epochs"] == 0]
    tuned = [r for r in records if r["finetune_epochs"] > 0]
    result = {
        "model": "reference_cnn", "dataset": "fashion-mnist test (10 classes)",
        "layers": list(weights), "counted": COUNTED, "baseline_accuracy": baseline,
        "heldout_baseline_accuracy": heldout_baseline, "selection": SELECTION,
        "finetune_epochs": epochs, "train_images": args.train_images if epochs else 0,
        "targets": {}, "ordering": {"plain": ordering(plain, key="heldout_accuracy")},
        "points": records, "seconds": round(time.perf_counter() - start, 1),
    }
    if tuned:
        result["ordering"]["finetuned"] = ordering(tuned, key="heldout_accuracy")
    for kind, subset in (("plain", plain), ("finetuned", tuned)):
        if subset:
            result["targets"][kind] = {
                "pq": target(subset, "pq", PQ_TARGET, baseline, heldout_baseline),
                "km": target(subset, "km", KM_TARGET, baseline, heldout_baseline)}
    print(f"float32: {100 * baseline:.2f}% on the test images, {100 * heldout_baseline:.2f}% "
          f"on the held-out images; {len(configs)} configurations"
          + (f", plain and fine-tuned ({epochs} epoch(s))" if tuned else "")
          + f", {result['seconds']} s\n")
    print(_sweep_table(records))
    for kind, targets in result["targets"].items():
        for method, t in targets.items():
            best = t.get("best")
            where = (f"{best['params']} {best['compression_rate']:.2f}x, held-out "
                     f"-{t['heldout_loss_points']:.2f}, test {100 * best['accuracy']:.2f}% "
                     f"(-{t['loss_points']:.2f}, {'met' if t['met_on_test'] else 'missed'})"
                     if best else "none")
            print(f"target {method.upper()} >= {t['min_compression_rate']:g}x within "
                  f"{t['max_loss_points']:g} point ({kind}): {'met' if t['met'] else 'MISSED'}"
                  f" by {where}")
    for kind, rows in result["ordering"].items():
        broken = [r["rate"] for r in rows if r.get("holds") is False]
        print(f"PQ >= KM > SVD ({kind}): "
              + (f"does not hold at {broken}x" if broken else "holds wherever all three reach"))
    print(f"Targets and orderings: {SELECTION}.")
    write_json(args.out / "vq_sweep.json", result)
    plot_sweep(records, baseline, args.out / "vq_sweep.png")
    print(f"\nwrote {args.out}/vq_sweep.json, {args.out}/vq_sweep.png")


def _sweep_table(records: list[dict]) -> str:
    lines = [f"{'method':7s} {'params':38s} {'rate':>7s} {'plain':>7s} {'tuned':>7s}"]
    tuned = {(r["method"], str(r["params"])): r["accuracy"] for r in records
             if r["finetune_epochs"] > 0}
    for r in sorted((r for r in records if r["finetune_epochs"] == 0),
                    key=lambda r: (r["method"], -r["compression_rate"])):
        t = tuned.get((r["method"], str(r["params"])))
        lines.append(f"{r['method']:7s} {str(r['params']):38s} {r['compression_rate']:7.2f} "
                     f"{100 * r['accuracy']:7.2f} " + (f"{100 * t:7.2f}" if t is not None else ""))
    return "\n".join(lines)


def cmd_deepcompress(args) -> None:
    from ..vq.deepcompress import run_demo

    run_demo([m.strip() for m in args.models.split(",") if m.strip()], args.out, args.seed)
