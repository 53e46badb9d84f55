"""Finding and tapping the activations that follow convolutions."""

import numpy as np
import pytest
import torch
from torch import nn

from velcro.sw.errors import ModelError
from velcro.sw.locality.profile import profile
from velcro.sw.locality.taps import tap
from velcro.sw.models import reference_cnn


def conv_output_shapes(model, x):
    shapes = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: shapes.__setitem__(n, o.shape[1:]))
               for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return shapes


@pytest.mark.parametrize("name, expected", [
    # resnet18: 20 convs; the 3 downsample 1x1 convs feed no activation.
    ("resnet18", 17),
    # mobilenet_v2: 52 convs; the 17 linear-bottleneck projections have no ReLU6.
    ("mobilenet_v2", 35),
    # googlenet: every BasicConv2d applies F.relu (a function, not a module).
    ("googlenet", 57),
])
def test_torchvision_models_get_one_entry_per_conv_activation(torchvision_models, rng, name,
                                                              expected):
    kwargs = {"init_weights": True, "aux_logits": False} if name == "googlenet" else {}
    model = getattr(torchvision_models, name)(weights=None, **kwargs).eval()
    images = rng.integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    prof = profile(model, images, batch_size=2)
    assert len(prof.layers) == expected
    conv_shapes = conv_output_shapes(model, torch.zeros(1, 3, 64, 64))
    for layer in prof.layers:
        assert layer.shape == tuple(conv_shapes[layer.name]), layer.name
        assert np.all(layer.variance >= 0) and np.all(layer.mean >= 0)


def test_tap_leaves_the_model_unchanged(rng):
    model = reference_cnn().eval()
    x = torch.from_numpy(rng.random((2, 1, 28, 28), dtype=np.float32))
    before = model(x)
    tapped = tap(model)
    torch.testing.assert_close(tapped(x), before, rtol=0, atol=0)
    assert not any(type(m).__name__ == "Tap" for m in model.modules())


def test_model_without_conv_activation_is_rejected():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU())
    with pytest.raises(ModelError, match="no convolution followed by a ReLU"):
        tap(model)
