import json
import sys

import numpy as np
import pytest
from PIL import Image

from velcro.sw.cli import main
from velcro.sw.data import make_task
from velcro.sw.evaluate import accuracy
from velcro.sw.locality.plan import Plan, applied
from velcro.sw.locality.profile import Profile
from velcro.sw.locality.taps import tap
from velcro.sw.models import load_reference


def run_error(capsys, argv):
    """Run the CLI expecting exit code 2 and one error line (after any progress bars)."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    lines = [line for line in err.splitlines() if "error" in line]
    assert "Traceback" not in err and len(lines) == 1 and err.endswith(lines[0])
    return lines[0]


@pytest.mark.parametrize("thresholds, message", [
    ("10,200,0,0", "threshold 200 for conv2 out of range [0, 100]"),
    ("10,20", "2 thresholds given for 4 conv-activations"),
    ("10,a,0,0", "--thresholds must be comma-separated numbers"),
])
def test_bad_thresholds_are_one_line_errors(capsys, tmp_path, thresholds, message):
    err = run_error(capsys, ["compress", "--task", "footwear", "--thresholds", thresholds,
                             "--json", str(tmp_path / "out.json")])
    assert message in err
    assert not (tmp_path / "out.json").exists()


def test_unknown_task_and_criterion(capsys, tmp_path):
    assert "unknown task 'shoes'" in run_error(
        capsys, ["profile", "--task", "shoes", "--out", str(tmp_path / "p.npz")])
    assert "unknown criterion 'entropy'" in run_error(
        capsys, ["compress", "--task", "bags", "--search", "--criterion", "entropy",
                 "--json", str(tmp_path / "x.json")])


def test_model_without_conv_activation(capsys, tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(
        "from torch import nn\n"
        "def mlp():\n"
        "    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(1352, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import torch
    from safetensors.torch import save_file

    sys.modules.pop("user_models", None)
    import user_models

    save_file({k: v.contiguous() for k, v in user_models.mlp().state_dict().items()},
              str(tmp_path / "w.safetensors"))
    err = run_error(capsys, ["profile", "--task", "bags", "--model", "user_models:mlp",
                             "--weights", str(tmp_path / "w.safetensors"),
                             "--out", str(tmp_path / "p.npz")])
    assert "no convolution followed by a ReLU/ReLU6" in err
    torch.save({"nonsense": 1}, tmp_path / "w.pt")
    assert "not a state dict of tensors" in run_error(
        capsys, ["profile", "--task", "bags", "--model", "user_models:mlp",
                 "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "p.npz")])


def image_folder(root, classes, size):
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full(size, 20 * i, np.uint8)).save(root / name / f"{i}.png")


def test_empty_task_from_folder(capsys, tmp_path):
    image_folder(tmp_path / "imgs", {"a": 5, "b": 0}, (28, 28))
    err = run_error(capsys, ["profile", "--data", str(tmp_path / "imgs"), "--classes", "b",
                             "--out", str(tmp_path / "p.npz")])
    assert "has no images" in err


def test_images_of_wrong_shape(capsys, tmp_path):
    image_folder(tmp_path / "imgs", {"a": 4, "b": 4}, (20, 20))
    err = run_error(capsys, ["profile", "--data", str(tmp_path / "imgs"),
                             "--out", str(tmp_path / "p.npz")])
    assert "images of shape [1, 20, 20] do not fit the model" in err


def test_profile_and_compress_outputs(tmp_path, capsys):
    assert main(["profile", "--task", "bags", "--out", str(tmp_path / "p.npz")]) == 0
    prof = Profile.load(tmp_path / "p.npz")
    task = make_task("bags")
    assert prof.count == len(task.splits().preprocessing)
    assert prof.names == ["conv1", "conv2", "conv3", "conv4"]

    assert main(["compress", "--task", "footwear", "--thresholds", "20,20,10,0",
                 "--json", str(tmp_path / "c.json"), "--plan", str(tmp_path / "plan.npz")]) == 0
    record = json.loads((tmp_path / "c.json").read_text())
    for key in ("task", "criterion", "thresholds", "C", "baseline_accuracy", "accuracy",
                "n_preprocessing", "n_validation"):
        assert key in record
    assert record["thresholds"] == [20, 20, 10, 0] and record["criterion"] == "variance"
    plan = Plan.load(tmp_path / "plan.npz")
    assert record["C"] == pytest.approx(plan.C) and 0 < plan.C < 1
    footwear = make_task("footwear")
    val = footwear.split("validation")
    assert record["n_validation"] == len(val)
    model = load_reference()
    tapped = tap(model)
    assert record["baseline_accuracy"] == accuracy(model, val.images, val.labels)
    with applied(tapped, plan):
        assert record["accuracy"] == accuracy(tapped.module, val.images, val.labels)


def test_demo_writes_table_curves_and_plot(tmp_path, capsys):
    assert main(["demo", "--tasks", "bags", "--criteria", "variance", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "bags" in out and "variance" in out
    records = json.loads((tmp_path / "velcro_table.json").read_text())
    assert [(r["task"], r["criterion"]) for r in records] == [("bags", "variance")]
    rec = records[0]
    for key in ("thresholds", "C", "baseline_accuracy", "accuracy", "n_preprocessing",
                "n_validation", "max_C_no_loss"):
        assert key in rec
    curves = json.loads((tmp_path / "velcro_curves.json").read_text())[0]
    points = curves["curves"]["variance"]
    assert [p["C"] for p in points] == sorted(p["C"] for p in points)
    no_loss = [p["C"] for p in points if p["accuracy"] >= rec["baseline_accuracy"]]
    assert rec["max_C_no_loss"] == max(no_loss)
    assert any(p["C"] == rec["C"] and p["accuracy"] == rec["accuracy"] for p in points)
    image = np.asarray(Image.open(tmp_path / "velcro_accuracy_vs_C.png").convert("L"))
    assert image.shape[0] > 200 and image.std() > 10
