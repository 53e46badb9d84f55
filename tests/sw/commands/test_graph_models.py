"""Models beyond the chain of conv3x3 layers through the command line: a user's model
file with BatchNorm, a residual add and average pooling; unsupported ops."""

import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from velcro.sw.cli import main
from velcro.sw.export.package import load
from velcro.sw.models import load_user_model, save_weights

USER_MODEL = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 5, stride=2, padding=2)
        self.bn = nn.BatchNorm2d(8)
        self.block = Block(8)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        x = nn.functional.relu(self.bn(self.stem(x)))
        x = self.pool(self.block(x))
        return self.fc(x.view(x.size(0), -1))


def build():
    return Net()
'''


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "net.py").write_text(USER_MODEL)
    spec = f"{folder / 'net.py'}:build"
    torch.manual_seed(0)
    model = load_user_model(spec)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    save_weights(model, folder / "net.safetensors")
    return folder, spec


def test_a_user_model_file_with_bn_residual_and_avgpool_compresses_exports_and_runs(
        user_model, capsys):
    folder, spec = user_model
    weights = str(folder / "net.safetensors")
    assert main(["compress", "--task", "footwear", "--model", spec, "--weights", weights,
                 "--thresholds", "30,30", "--json", str(folder / "c.json")]) == 0
    compressed = json.loads((folder / "c.json").read_text())
    assert compressed["C"] > 0.25
    assert main(["export", "--task", "footwear", "--model", spec, "--weights", weights,
                 "--thresholds", "30,30", "--out", str(folder / "net.velcro")]) == 0
    package = load(folder / "net.velcro")
    assert [layer.op for layer in package.layers] == [
        "conv", "conv", "add", "avgpool", "flatten", "dense"]
    assert package.layers[2].inputs == ("block.conv", "stem")
    assert [layer.attrs["tap"] for layer in package.tapped] == ["stem", "block.conv"]
    assert package.C == pytest.approx(compressed["C"])
    capsys.readouterr()
    out = folder / "run.json"
    assert main(["run", "--package", str(folder / "net.velcro"), "--device", "golden",
                 "--images", "200", "--model", spec, "--weights", weights,
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "partition: 2 of 6 layers on the kernel" in printed
    record = json.loads(out.read_text())
    # The 5x5 stem, the add, pooling and flatten on the host; the block's 3x3 conv
    # (BatchNorm folded, no activation before the add) and the classifier on the kernel.
    assert [layer["device"] for layer in record["layers"]] == [
        "host", "kernel", "host", "host", "host", "kernel"]
    macs = np.array([layer["macs"] + layer["macs_skipped"] for layer in record["layers"]])
    assert record["kernel_mac_fraction"] == pytest.approx((macs[1] + macs[-1]) / macs.sum())
    # Two kernel calls a batch, each moving its input and output through card memory.
    trips = record["round_trips"]
    assert (trips["kernel_calls"], trips["host_stages"]) == (2, 4)
    conv_in = np.prod(package.layers[1].in_shape)
    assert trips["bytes_per_image"] >= 2 * conv_in + package.layers[-1].in_shape[0]
    assert trips["host_seconds"] > 0 and trips["kernel_seconds"] > 0
    assert "round trips: 2 kernel call(s) and 4 host stage(s) per batch" in printed
    # The integer package follows the float model with the same plan.
    assert abs(record["accuracy"] - record["float_accuracy"]) <= 0.05


@pytest.mark.parametrize("forward, match", [
    ("return self.fc(torch.sort(self.conv(x), dim=1).values.flatten(1))",
     r"graph node 'sort' \(.*sort\) is not supported: unknown function; supported: "),
    ("return self.fc(torch.relu(self.dilated(x)).flatten(1))",
     r"graph node 'dilated' \(Conv2d\) is not supported: a dilated convolution"),
    ("return self.fc(torch.relu(self.transposed(x))[:, :, :28, :28].flatten(1))",
     r"graph node 'transposed' \(ConvTranspose2d\) is not supported"),
])
def test_an_unsupported_op_is_one_line_naming_the_node(tmp_path, capsys, forward, match):
    source = textwrap.dedent(f'''
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(1, 2, 3, padding=1)
                self.dilated = nn.Conv2d(1, 2, 3, padding=2, dilation=2)
                self.transposed = nn.ConvTranspose2d(1, 2, 3, padding=1)
                self.fc = nn.Linear(2 * 28 * 28, 10)

            def forward(self, x):
                {forward}

        def build():
            return Net()
        ''')
    (tmp_path / "bad.py").write_text(source)
    spec = f"{tmp_path / 'bad.py'}:build"
    save_weights(load_user_model(spec), tmp_path / "bad.safetensors")
    assert main(["export", "--task", "footwear", "--model", spec, "--weights",
                 str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "bad.velcro")]) == 2
    err = capsys.readouterr().err.rstrip("\n").split("\r")[-1]
    assert err.startswith("velcro: error: ") and "\n" not in err
    import re
    assert re.search(match, err), err
    assert not (tmp_path / "bad.velcro").exists()


def test_the_small_resnet_on_the_kernel_simulation_predicts_as_the_golden_model(tmp_path):
    package = tmp_path / "resnet.velcro"
    assert main(["export", "--task", "footwear", "--model", "small_resnet", "--thresholds",
                 ",".join(["30"] * 7), "--out", str(package)]) == 0
    records = {}
    for device in ("golden", "sim"):
        out = tmp_path / f"{device}.json"
        assert main(["run", "--package", str(package), "--device", device, "--images", "4",
                     "--json", str(out)]) == 0
        records[device] = json.loads(out.read_text())
    golden_run, sim_run = records["golden"], records["sim"]
    assert sim_run["predictions_sha256"] == golden_run["predictions_sha256"]
    # Every 3x3 conv on the kernel, the adds and 1x1 projection on the host.
    assert [layer["device"] for layer in sim_run["layers"]].count("kernel") == 8
    assert sim_run["kernel_mac_fraction"] == pytest.approx(golden_run["kernel_mac_fraction"])
    assert sim_run["kernel_mac_fraction"] > 0.95
    assert sim_run["kernel_counters"]["match"]
    assert sim_run["round_trips"]["kernel_calls"] == golden_run["round_trips"]["kernel_calls"] == 5
    # One kernel call per device stage and image batch: the five stages' descriptors.
    assert len(sim_run["cycles"]["layers"]) >= 5
