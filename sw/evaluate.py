"""Batched inference and accuracy of a torch model on uint8 images."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data import to_float
from .errors import ModelError

BATCH = 500


def logits(model: nn.Module, images: np.ndarray, batch_size: int = BATCH) -> torch.Tensor:
    """Float logits of every image (``uint8 [N, C, H, W]``), in eval mode without gradients."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = to_float(images[start:start + batch_size])
            try:
                out.append(model(x))
            except RuntimeError as e:
                raise ModelError(f"images of shape {list(images.shape[1:])} do not fit the model: "
                                 f"{str(e).splitlines()[0]}") from None
    return torch.cat(out)


def predict(model: nn.Module, images: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    """Top-1 class of every image."""
    return logits(model, images, batch_size).argmax(1).numpy()


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]."""
    if len(images) == 0:
        raise ModelError("no images to evaluate")
    return float((predict(model, images) == labels).mean())


def check_input(model: nn.Module, images: np.ndarray) -> None:
    """Run one image through the model so shape errors surface as one clear message."""
    predict(model, images[:1])
