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
