import json

import pytest

from velcro.sw.cli import main
from velcro.sw.models import reference_record


def test_vq_km_writes_the_record(tmp_path, capsys):
    out = tmp_path / "km.json"
    assert main(["vq", "--method", "km", "--k", "4", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["method"] == "km" and rec["params"] == {"k": 4}
    # fc1 (256x1024) at 2 bits + 4 float32 centers; fc2 (10x256) kept float32
    fc1, fc2 = 32 * 256 * 1024, 32 * 10 * 256
    assert rec["compression_rate"] == pytest.approx((fc1 + fc2) / (256 * 1024 * 2 + 128 + fc2))
    assert rec["baseline_accuracy"] == reference_record()["test_accuracy"]
    assert 0.85 < rec["accuracy"] <= 1
    assert [layer["method"] for layer in rec["layers"]] == ["km k=4", "float32"]
    assert "km k=4 on fc1" in capsys.readouterr().out
    # Also measured on the held-out training images, which the CNN was not trained on.
    assert 0.85 < rec["heldout_accuracy"] <= 1 and 0.85 < rec["heldout_baseline_accuracy"] <= 1
    assert rec["heldout_accuracy"] != rec["accuracy"]


def point(method, rate, test, held, **params):
    return {"method": method, "compression_rate": rate, "accuracy": test,
            "heldout_accuracy": held, "params": params}


def test_a_target_is_chosen_on_held_out_accuracy_and_reported_on_test():
    from velcro.sw.commands.vq import target

    records = [point("pq", 24.0, 0.930, 0.900, k=2),    # best on test, worse held out
               point("pq", 21.0, 0.915, 0.925, k=4),    # best held out: chosen
               point("pq", 10.0, 0.990, 0.990, k=8),    # does not compress enough
               point("km", 30.0, 0.999, 0.999, k=2)]    # another method
    t = target(records, "pq", (20.0, 1.0), baseline=0.93, heldout_baseline=0.93)
    assert t["chosen_on"] == "heldout" and t["best"]["params"] == {"k": 4}
    assert t["best"]["accuracy"] == 0.915 and t["loss_points"] == 1.5
    assert t["heldout_loss_points"] == 0.5 and t["met"] and not t["met_on_test"]
    missed = target(records, "pq", (20.0, 0.2), baseline=0.93, heldout_baseline=0.93)
    assert not missed["met"] and missed["best"]["params"] == {"k": 4}


def test_fine_tuning_images_are_neither_held_out_nor_test(monkeypatch):
    import argparse

    from velcro.sw import data
    from velcro.sw.commands import vq
    from velcro.sw.models import load_reference
    from velcro.sw.vq import finetune

    splits, seen = [], []
    original = data.load_fashion_mnist
    monkeypatch.setattr(data, "load_fashion_mnist",
                        lambda split="test", root=None: splits.append(split) or original(split))
    monkeypatch.setattr(finetune, "DenseHead",
                        lambda model, images, labels: seen.append(images) or object())
    vq._tuning(argparse.Namespace(train_images=500, seed=0), load_reference(), 1)
    # ("fit" reads the IDX training file, "train", and leaves the held-out images out.)
    assert splits[0] == "fit" and not {"heldout", "test"} & set(splits) and len(seen[0]) == 500
    fit = {x.tobytes() for x in original("fit").images}
    assert {x.tobytes() for x in seen[0]} <= fit



@pytest.mark.parametrize("argv, message", [
    (["--method", "km", "--k", "100"], "k must be a power of two in [2, 65536], not 100"),
    (["--method", "km", "--k", "131072"], "k must be a power of two in [2, 65536], not 131072"),
    (["--method", "pq", "--k", "8", "--segment", "3"],
     "segment length 3 does not divide the 1024 inputs (x-axis) of the 256x1024 matrix"),
    (["--method", "pq", "--k", "8", "--segment", "3", "--axis", "y"],
     "segment length 3 does not divide the 256 outputs (y-axis)"),
    (["--method", "svd", "--rank", "300"], "rank must be an integer in [1, 256]"),
    (["--method", "lsh"], "unknown method 'lsh'"),
    (["--method", "km", "--k", "4", "--layers", "fc7"], "no dense layer 'fc7'"),
    (["--method", "km", "--k", "4", "--finetune", "-1"], "--finetune must be 0 or more"),
])
def test_vq_bad_input_is_one_line_with_exit_2(capsys, argv, message):
    assert main(["vq", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_deepcompress_rejects_unknown_models(capsys):
    assert main(["deepcompress", "--models", "alexnet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--models takes lenet and/or reference" in err
