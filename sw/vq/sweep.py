"""Records of quantized models, and the sweep of the paper's Figures 1-2.

:func:`record` gives the compression rate and accuracy of a model with quantized dense
layers in place; :func:`sweep` records every configuration of :func:`sweep_configs`,
plain and fine-tuned; :func:`best_record` and :func:`ordering` compare the methods at
a compression rate (the plot is :func:`velcro.sw.report.plots.plot_sweep`).

A record measures ``accuracy`` on the test images and, given a second head,
``heldout_accuracy`` on images held out of training: a configuration is *chosen* on
the held-out accuracy (``best_record(..., key="heldout_accuracy")``) and *reported*
with its test accuracy, so no reported figure is selected on the data it reports.
"""

from __future__ import annotations

import numpy as np

from ..progress import progress as progress_bar
from .finetune import DenseHead, Tuning, finetune
from .methods import FLOAT_BITS, QuantizedDense, quantize_layers


def record(head: DenseHead, quantized: dict[str, QuantizedDense], method: str, params: dict,
           finetune_epochs: int = 0, heldout: DenseHead | None = None) -> dict:
    """Compression rate and accuracy of the model with the quantized layers in place.

    The compression rate covers the weight matrices of *all* dense layers: layers not
    quantized stay float32 and count 32 bits per weight. Biases are not counted, as in
    the paper. ``heldout`` adds the accuracy on its images (``heldout_accuracy``).
    """
    layers, stored, original = [], 0, 0
    for name, layer in head.layers.items():
        n_weights = layer.weight.numel()
        q = quantized.get(name)
        bits = q.storage_bits if q is not None else FLOAT_BITS * n_weights
        layers.append({"name": name, "shape": list(layer.weight.shape),
                       "method": q.describe() if q is not None else "float32",
                       "storage_bits": int(bits), "float32_bits": FLOAT_BITS * n_weights})
        stored += bits
        original += FLOAT_BITS * n_weights
    weights = {name: q.reconstruct() for name, q in quantized.items()}
    out = {
        "method": method,
        "params": next(iter(quantized.values())).params if quantized else {},
        "finetune_epochs": finetune_epochs,
        "compression_rate": original / stored,
        "accuracy": head.accuracy(weights),
        "layers": layers,
    }
    if heldout is not None:
        out["heldout_accuracy"] = heldout.accuracy(weights)
    return out


def evaluate(head: DenseHead, quantized: dict[str, QuantizedDense], method: str,
             params: dict, tuning: Tuning | None = None, progress: bool = False,
             heldout: DenseHead | None = None) -> list[dict]:
    """The record of the plain quantized layers, then of the fine-tuned ones when
    ``tuning`` is given (see :func:`record`)."""
    records = [record(head, quantized, method, params, heldout=heldout)]
    if tuning is not None and tuning.epochs > 0:
        records.append(record(head, finetune(tuning, quantized, progress), method, params,
                              tuning.epochs, heldout))
    return records


def sweep_configs(shape: tuple[int, int]) -> list[tuple[str, dict]]:
    """The sweep of the paper's Figures 1-2 for one ``[n_out, n_in]`` matrix.

    Configurations whose segment does not divide the axis or whose ``k`` exceeds the
    number of vectors to cluster are left out.
    """
    n_out, n_in = shape
    configs = [("bin", {})]
    configs += [("km", {"k": k}) for k in (2, 4, 8, 16, 32, 64, 256) if k <= n_out * n_in]
    for axis, length, vectors in (("x", n_in, n_out), ("y", n_out, n_in)):
        configs += [("pq", {"k": k, "segment": s, "axis": axis})
                    for k in (2, 4, 8, 16) for s in (1, 2, 4, 8, 16)
                    if length % s == 0 and k <= vectors]
    configs += [("rq", {"k": k, "stages": t}) for k in (2, 4, 8, 16) for t in (2, 3)
                if k <= n_out]
    configs += [("svd", {"rank": r}) for r in (1, 2, 4, 8, 16, 32, 64) if r <= min(shape)]
    return configs


def sweep(head: DenseHead, weights: dict[str, np.ndarray], configs: list[tuple[str, dict]],
          seed: int = 0, tuning: Tuning | None = None, progress: bool = True,
          heldout: DenseHead | None = None) -> list[dict]:
    """:func:`evaluate` every configuration on the layers of ``weights`` (plain, and
    fine-tuned with ``tuning``)."""
    records = []
    for method, params in progress_bar(configs, desc="vq sweep", unit="config", enabled=progress):
        records += evaluate(head, quantize_layers(weights, method, params, seed), method,
                            params, tuning, heldout=heldout)
    return records


def best_record(records: list[dict], method: str, rate: float,
                key: str = "accuracy") -> dict | None:
    """The record of ``method`` with the highest ``key`` (then the highest rate) among
    those compressing at least ``rate`` times."""
    fits = [r for r in records if r["method"] == method and r["compression_rate"] >= rate]
    return max(fits, key=lambda r: (r[key], r["compression_rate"])) if fits else None


def ordering(records: list[dict], rates=(2, 4, 8, 16, 20, 24, 32, 48),
             key: str = "accuracy") -> list[dict]:
    """Whether the paper's PQ >= KM > SVD holds at each compression rate.

    Each method is represented by the point :func:`best_record` chooses by ``key``
    among those that compress at least that much (PQ takes the better axis), compared
    by its (test) ``accuracy``. ``holds`` is left out where a method has no point at
    that rate.
    """
    rows = []
    for rate in rates:
        best = {m: best_record(records, m, rate, key) for m in ("pq", "km", "svd")}
        row = {"rate": rate, **{m: r and r["accuracy"] for m, r in best.items()}}
        if None not in (row["pq"], row["km"], row["svd"]):
            row["holds"] = bool(row["pq"] >= row["km"] > row["svd"])
        rows.append(row)
    return rows
