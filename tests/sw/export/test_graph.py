import warnings

import pytest
import torch
from torch import nn

from velcro.sw import golden
from velcro.sw.data import make_task
from velcro.sw.errors import ModelError
from velcro.sw.export.graph import onnx_model, trace
from velcro.sw.export.quantize import quantize
from velcro.sw.models import small_inverted_residual, small_resnet


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 1, 1, ceil_mode=True)
        self.fc = nn.Linear(9, 10)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x)), self.pool(x)], 1)
        return self.fc(y.mean((2, 3)))


def test_concat_and_spatial_mean_trace_to_concat_and_global_pooling():
    graph = trace(Inception().eval(), (1, 28, 28))
    assert [(n.op, n.inputs) for n in graph.nodes] == [
        ("conv", ["input"]), ("conv", ["input"]), ("maxpool", ["input"]),
        ("concat", ["a", "b", "pool"]), ("avgpool", ["cat"]), ("flatten", ["mean"]),
        ("linear", ["mean_flat"])]
    assert graph.nodes[4].attrs["kernel"] == (28, 28)
    assert [n.tap for n in graph.nodes[:2]] == ["a", "b"]


def test_mean_over_channels_is_refused():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(28 * 28, 10)

        def forward(self, x):
            return self.fc(x.mean(1).flatten(1))

    with pytest.raises(ModelError, match="only the mean of a map over both spatial axes"):
        trace(Bad().eval(), (1, 28, 28))


@pytest.mark.parametrize("build", [small_resnet, small_inverted_residual])
def test_an_onnx_file_gives_the_graph_of_its_torch_model(tmp_path, build):
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 1, 28, 28), str(path), dynamo=False,
                          opset_version=13)
    converted = onnx_model(path)
    task = make_task("footwear")
    direct, through_onnx = quantize(model, task), quantize(converted, task)
    assert [layer.op for layer in through_onnx.layers] == [layer.op for layer in direct.layers]
    assert len(through_onnx.tapped) == len(direct.tapped) > 0
    images = task.split("validation").images[:100]
    agree = golden.run(direct, images).argmax(1) == golden.run(through_onnx, images).argmax(1)
    # BatchNorm is folded by the exporter in float32, here in float64: scales differ a little.
    assert agree.mean() >= 0.95


def test_a_corrupt_onnx_file_is_one_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelError, match="bad.onnx: cannot convert the ONNX model"):
        onnx_model(path)
