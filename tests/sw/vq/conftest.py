"""Shared fixtures of the VQ tests: a random weight matrix and a tiny trained-shape model."""

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture
def w(rng):
    return rng.normal(0, 0.1, (64, 48)).astype(np.float32)


@pytest.fixture
def tiny_model():
    """A function of a seed: a conv layer, then dense 144 -> 32 -> 3 (``"3"``, ``"5"``)."""
    def make(seed=0):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 3)).eval()

    return make


@pytest.fixture
def toy(rng, tiny_model):
    model = tiny_model()
    images = rng.integers(0, 256, (600, 1, 6, 6), dtype=np.uint8)
    with torch.no_grad():
        labels = model(torch.from_numpy(images / 255).float()).argmax(1).numpy()
    return model, images, labels
