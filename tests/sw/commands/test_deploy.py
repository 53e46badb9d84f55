import hashlib
import json

import numpy as np
import pytest
import torch

from velcro.sw import golden
from velcro.sw.cli import main
from velcro.sw.data import load_fashion_mnist, make_task
from velcro.sw.evaluate import predict
from velcro.sw.export.codebooks import deploy
from velcro.sw.export.package import load
from velcro.sw.locality.experiment import prepare
from velcro.sw.locality.plan import applied, compress
from velcro.sw.models import REFERENCE_WEIGHTS, load_reference
from velcro.sw.vq import methods as vq
from velcro.sw.vq.finetune import dense_weights

THRESHOLDS = [20.0, 30.0, 30.0, 20.0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "footwear.velcro"
    assert main(["export", "--task", "footwear", "--thresholds",
                 ",".join(map(str, THRESHOLDS)), "--out", str(path)]) == 0
    return path


def one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    # Progress bars may precede the message on stderr; the error itself is one line.
    message = err.rstrip("\n").split("\r")[-1]
    assert message.startswith("velcro: error: ") and "\n" not in message, err
    assert "Traceback" not in err and match in message, err


def test_export_writes_the_package_of_the_plan(exported):
    package = load(exported)
    assert package.task["name"] == "footwear" and package.task["classes"] == [5, 7, 9]
    assert package.velcro == {"criterion": "variance", "thresholds": THRESHOLDS,
                              "C": pytest.approx(package.C)}
    assert 0.2 < package.C < 0.35
    assert package.source["model"] is None and package.source["weights"] is None
    assert [layer.op for layer in package.layers][-1] == "dense"


def test_run_reports_accuracy_macs_and_the_prediction_hash(exported, tmp_path, capsys):
    out = tmp_path / "run.json"
    assert main(["run", "--package", str(exported), "--device", "golden", "--images", "300",
                 "--weights", str(REFERENCE_WEIGHTS), "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert "footwear on golden" in capsys.readouterr().out

    package = load(exported)
    val = make_task("footwear").split("validation")
    images, labels = val.images[:300], val.labels[:300]
    predictions = golden.run(package, images).argmax(1)
    model = load_reference()
    setup = prepare(model, make_task("footwear"), sensitivity=False)
    with applied(setup.tapped, compress(setup.profile, THRESHOLDS)):
        float_predictions = predict(setup.tapped.module, images)

    assert record["images"] == 300 and record["device"] == "golden"
    assert record["accuracy"] == np.mean(predictions == labels)
    assert record["float_accuracy"] == np.mean(float_predictions == labels)
    assert record["predictions_sha256"] == hashlib.sha256(
        predictions.astype("<i8").tobytes()).hexdigest()
    convs = [layer for layer in package.layers if layer.op == "conv3x3"]
    per_image_skipped = sum(9 * layer.in_shape[0] * layer.attrs["skipped"] for layer in convs)
    assert record["macs_skipped"] == 300 * per_image_skipped
    layers = {entry["name"]: entry for entry in record["layers"]}
    assert layers["fc1"]["macs"] == 300 * 1024 * 256
    assert record["macs"] == sum(entry["macs"] for entry in record["layers"])
    assert record["seconds"] > 0


def test_run_errors_are_one_line(exported, tmp_path, capsys):
    one_line_error(capsys, ["run", "--package", str(tmp_path / "none.velcro")],
                   "no such package file")
    corrupt = tmp_path / "corrupt.velcro"
    corrupt.write_bytes(exported.read_bytes()[:-100])
    one_line_error(capsys, ["run", "--package", str(corrupt)], "corrupt.velcro")
    one_line_error(capsys, ["run", "--package", str(exported), "--device", "tpu"],
                   "unknown device 'tpu'; available: golden, sim, alveo[:N]")
    one_line_error(capsys, ["run", "--package", str(exported), "--device", "alveo:0",
                            "--xclbin", str(tmp_path / "none.xclbin")], "alveo")
    one_line_error(capsys, ["run", "--package", str(exported), "--images", "0"],
                   "--images must be in [1, ")
    one_line_error(capsys, ["run", "--package", str(exported), "--device", "alveo",
                            "--kernel", "small"], "alveo runs the shipped kernel")
    one_line_error(capsys, ["run", "--package", str(exported), "--device", "sim",
                            "--jobs", "0"], "jobs must be a positive integer")


def test_export_errors_are_one_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "p.velcro"
    one_line_error(capsys, ["export", "--task", "footwear", "--thresholds", "1,2",
                            "--out", str(out)], "2 thresholds given for 4 conv-activations")
    one_line_error(capsys, ["export", "--task", "footwear", "--dense", "fp16",
                            "--out", str(out)], "--dense 'fp16' is not available")
    one_line_error(capsys, ["export", "--task", "footwear", "--model",
                            "velcro.sw.models:lenet_300_100", "--weights", str(out),
                            "--out", str(out)], "does not exist")
    (tmp_path / "bn_models.py").write_text(
        "from torch import nn\n"
        "def bn_cnn():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4),\n"
        "                         nn.Flatten(), nn.Linear(4 * 28 * 28, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from bn_models import bn_cnn

    weights = tmp_path / "bn.pt"
    torch.save(bn_cnn().state_dict(), weights)
    one_line_error(capsys, ["export", "--task", "footwear", "--model", "bn_models:bn_cnn",
                            "--weights", str(weights), "--out", str(out)],
                   "graph node '2' (BatchNorm2d) is not supported: BatchNorm2d must directly "
                   "follow a Conv2d")
    assert not out.exists()


def test_export_with_search_on_an_image_folder(tmp_path, capsys):
    from PIL import Image

    data = load_fashion_mnist("test")
    folder = tmp_path / "images"
    for label in range(10):
        (folder / f"{label:02d}").mkdir(parents=True)
        # 400 images: the 2 % preprocessing split holds the 8 that variances need.
        for i, index in enumerate(np.flatnonzero(data.labels == label)[:40]):
            Image.fromarray(data.images[index, 0]).save(folder / f"{label:02d}" / f"{i}.png")
    out = tmp_path / "folder.velcro"
    assert main(["export", "--data", str(folder), "--search", "--criterion", "relative",
                 "--out", str(out)]) == 0
    package = load(out)
    assert package.velcro["criterion"] == "relative"
    assert package.source["data"] == "images"      # a name for people, never a path
    assert len(package.velcro["thresholds"]) == 4
    run_json = tmp_path / "run.json"
    assert main(["run", "--package", str(out), "--data", str(folder), "--json",
                 str(run_json)]) == 0
    record = json.loads(run_json.read_text())
    assert record["task"] == "images" and record["images"] == 196
    assert record["C"] == package.C


def test_export_and_run_with_a_kmeans_dense_layer(tmp_path):
    out, run_json = tmp_path / "km.velcro", tmp_path / "km.json"
    assert main(["export", "--task", "footwear", "--thresholds", "20,30,30,20", "--dense", "km",
                 "--k", "16", "--dense-layers", "fc1", "--out", str(out)]) == 0
    package = load(out)
    ops = {layer.name: layer.op for layer in package.layers}
    assert ops["fc1"] == "dense_codebook" and ops["fc2"] == "dense"
    assert main(["run", "--package", str(out), "--images", "200", "--weights",
                 str(REFERENCE_WEIGHTS), "--json", str(run_json)]) == 0
    record = json.loads(run_json.read_text())
    fc1 = next(entry for entry in record["layers"] if entry["name"] == "fc1")
    # Scalar k-means: 1024 one-input segments, 16 codewords; 256 x 1024 lookups.
    assert fc1["macs"] == 200 * 1024 * 16 and fc1["lookups"] == 200 * 256 * 1024

    model = load_reference()
    deployed = deploy(vq.kmeans(dense_weights(model, ["fc1"])["fc1"], 16))
    model.fc1.weight.data = torch.from_numpy((deployed.weight() * deployed.scale)
                                             .astype(np.float32))
    task = make_task("footwear")
    setup = prepare(model, task, sensitivity=False)
    val = task.split("validation")
    with applied(setup.tapped, compress(setup.profile, THRESHOLDS)):
        float_predictions = predict(setup.tapped.module, val.images[:200])
    assert record["float_accuracy"] == np.mean(float_predictions == val.labels[:200])
    assert abs(record["accuracy"] - record["float_accuracy"]) <= 0.02


def test_dense_options_are_checked(tmp_path, capsys):
    out = tmp_path / "p.velcro"
    one_line_error(capsys, ["export", "--task", "footwear", "--k", "16", "--out", str(out)],
                   "need --dense km or pq")
    one_line_error(capsys, ["export", "--task", "footwear", "--dense", "pq", "--k", "16",
                            "--out", str(out)], "needs --segment")
    one_line_error(capsys, ["export", "--task", "footwear", "--dense", "km", "--k", "16",
                            "--dense-layers", "conv1", "--out", str(out)], "no dense layer")
    one_line_error(capsys, ["export", "--task", "footwear", "--dense", "pq", "--k", "16",
                            "--segment", "4", "--out", str(out)],
                   "layer fc2: k=16 exceeds the 10 sub-vectors")
    assert not out.exists()


@pytest.mark.parametrize("backend, platform", [("pynq", "PynqPlatform"),
                                               ("pyxrt", "XrtPlatform"), (None, "XrtPlatform")])
def test_run_backend_chooses_the_binding_that_drives_the_card(
        tiny_package, bindings, xrt_install, card, tmp_path, backend, platform):
    from velcro.hw.kernel.connectivity import CONNECTIVITY
    from velcro.sw.cli import build_parser
    from velcro.sw.commands.deploy import BACKENDS, open_device
    from velcro.sw.runtime.backends import alveo

    assert BACKENDS == alveo.BACKENDS
    bindings(pyxrt="2.14", pynq=True)
    xrt_install("2.16.204")
    xclbin = card.write_xclbin(tmp_path / "velcro.xclbin")
    argv = ["run", "--package", "p.velcro", "--device", "alveo:0", "--xclbin", str(xclbin)]
    args = build_parser().parse_args(argv + (["--backend", backend] if backend else []))
    device = open_device("alveo:0", tiny_package, args)
    assert type(device.platform).__name__ == platform
    # The program and the dense indices, each in its port's bank, then synced to it.
    assert [event[4] for event in card.of("bo")] == [CONNECTIVITY["m_axi_program"],
                                                     CONNECTIVITY["m_axi_indices"]]
    assert len(card.of("sync")) == 2


def test_run_backend_is_for_alveo_only(tiny_package):
    from velcro.sw.cli import build_parser
    from velcro.sw.commands.deploy import open_device
    from velcro.sw.errors import DeviceError

    args = build_parser().parse_args(["run", "--package", "p.velcro", "--backend", "pyxrt"])
    with pytest.raises(DeviceError, match="--backend is for alveo, not golden"):
        open_device("golden", tiny_package, args)
