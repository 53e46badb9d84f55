"""Records of quantized models, the sweep and the method ordering
(:mod:`velcro.sw.vq.sweep`)."""

import pytest

from velcro.sw.report.plots import plot_sweep
from velcro.sw.vq.finetune import DenseHead, Tuning
from velcro.sw.vq.methods import quantize_layers
from velcro.sw.vq.sweep import evaluate, ordering, sweep


def test_record_counts_unquantized_dense_layers_as_float32(toy):
    model, images, labels = toy
    head = DenseHead(model, images, labels)
    weights = {"3": model[3].weight.detach().numpy()}
    quantized = quantize_layers(weights, "km", {"k": 4})
    (rec,) = evaluate(head, quantized, "km", {"k": 4})
    assert rec["compression_rate"] == pytest.approx(32 * (144 * 32 + 32 * 3)
                                                    / (144 * 32 * 2 + 4 * 32 + 32 * 32 * 3))
    assert [layer["method"] for layer in rec["layers"]] == ["km k=4", "float32"]
    assert rec["accuracy"] == head.accuracy({"3": quantized["3"].reconstruct()})


def test_sweep_records_plain_and_tuned_points_and_plots(toy, tmp_path):
    model, images, labels = toy
    head = DenseHead(model, images, labels)
    configs = [("km", {"k": 4}), ("pq", {"k": 4, "segment": 4, "axis": "x"}),
               ("svd", {"rank": 2})]
    records = sweep(head, {"3": model[3].weight.detach().numpy()}, configs,
                    tuning=Tuning(head, epochs=1), progress=False)
    assert [(r["method"], r["finetune_epochs"]) for r in records] == [
        ("km", 0), ("km", 1), ("pq", 0), ("pq", 1), ("svd", 0), ("svd", 1)]
    plot_sweep(records, head.accuracy(), tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ordering_compares_the_best_point_at_each_rate():
    def point(method, rate, acc):
        return {"method": method, "compression_rate": rate, "accuracy": acc, "params": {}}

    records = [point("pq", 20, 0.90), point("pq", 10, 0.93), point("km", 10, 0.92),
               point("km", 4, 0.95), point("svd", 20, 0.91), point("svd", 10, 0.80)]
    rows = {r["rate"]: r for r in ordering(records, rates=(4, 8, 16))}
    assert rows[4]["holds"] is False            # KM's 4x point beats PQ's best
    assert rows[8] == {"rate": 8, "pq": 0.93, "km": 0.92, "svd": 0.91, "holds": True}
    assert "holds" not in rows[16] and rows[16]["km"] is None
