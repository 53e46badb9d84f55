import pytest
from torch import nn

from velcro.sw.data import load_fashion_mnist
from velcro.sw.errors import ModelError
from velcro.sw.evaluate import accuracy
from velcro.sw.models import load_reference, load_user_model, reference_record


def test_reference_model_uses_only_hardware_layers():
    model = load_reference()
    allowed = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear)
    assert all(isinstance(m, allowed) for m in model.children())
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)
    dense = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert any(m.in_features * m.out_features >= 256 * 1024 for m in dense)


def test_shipped_weights_reach_the_recorded_accuracy():
    test = load_fashion_mnist("test")
    assert accuracy(load_reference(), test.images, test.labels) == \
        reference_record()["test_accuracy"]


def test_user_model_errors_are_model_errors(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "broken_import.py").write_text("raise RuntimeError('operator x does not exist')\n")
    (tmp_path / "broken_factory.py").write_text("def make():\n    return 1 / 0\n")
    with pytest.raises(ModelError, match="cannot import 'broken_import' .*RuntimeError"):
        load_user_model("broken_import:make")
    with pytest.raises(ModelError, match="ZeroDivisionError"):
        load_user_model("broken_factory:make")
    with pytest.raises(ModelError, match="has no attribute 'other'"):
        load_user_model("broken_factory:other")
    with pytest.raises(ModelError, match="must look like"):
        load_user_model("no_colon")
