"""Accuracy of a model with quantized dense layers, and fine-tuning of their codebooks.

:class:`DenseHead` runs the layers of a trained ``nn.Sequential`` model from its first
dense layer on, with any of the dense layers' weights replaced; :func:`dense_weights`
gives the weights to quantize. :func:`finetune` trains the float parameters of
quantized layers (:mod:`velcro.sw.vq.methods`) on the head's features, their indices
fixed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ModelError, VQError
from ..progress import progress as progress_bar
from .methods import QuantizedDense


class DenseHead:
    """Accuracy of a ``nn.Sequential`` model with its dense layers' weights replaced.

    Everything before the first dense layer runs once, on construction; each
    :meth:`accuracy` call then runs only the layers from the first dense layer on.
    """

    def __init__(self, model: nn.Module, images: np.ndarray, labels: np.ndarray,
                 batch_size: int = 500):
        from ..data import to_float

        if not isinstance(model, nn.Sequential):
            raise ModelError(f"vector quantization needs an nn.Sequential model, not "
                             f"{type(model).__name__}")
        children = list(model.children())
        first = next((i for i, m in enumerate(children) if isinstance(m, nn.Linear)), None)
        if first is None:
            raise ModelError("the model has no dense (nn.Linear) layer")
        names = [name for name, _ in model.named_children()]
        self.layers = {names[i]: m for i, m in enumerate(children) if isinstance(m, nn.Linear)}
        self.head = model[first:].eval()
        self.labels = np.asarray(labels)
        model.eval()
        prefix = model[:first]
        with torch.inference_mode():
            self.features = torch.cat([prefix(to_float(images[i:i + batch_size]))
                                       for i in range(0, len(images), batch_size)])

    def accuracy(self, weights: dict[str, np.ndarray] | None = None) -> float:
        """Top-1 accuracy in [0, 1] with ``weights`` (by layer name) replacing the trained ones."""
        head = self.head
        if weights:
            head = copy.deepcopy(self.head)
            layers = dict(head.named_children())
            for name, w in weights.items():
                layers[name].weight.data = torch.as_tensor(w, dtype=torch.float32)
        with torch.inference_mode():
            predicted = head(self.features).argmax(1).numpy()
        return float((predicted == self.labels).mean())


def dense_weights(model: nn.Module, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Float32 weights of the named ``nn.Linear`` layers (raises for other names)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    weights = {}
    for name in names:
        if name not in layers:
            raise VQError(f"no dense layer {name!r}; the dense layers are {', '.join(layers)}")
        weights[name] = layers[name].weight.detach().float().numpy()
    return weights


@dataclass(frozen=True)
class Tuning:
    """Fine-tuning of the quantized layers' float parameters on training features.

    Only the codebooks (scale, SVD factors) change; indices, the other layers and the
    storage stay as they are. Each codeword's gradient is the sum of the gradients of
    the weights that share it, as Deep Compression fine-tunes its centroids; the
    plain methods of Gong et al. have no such step.
    """

    head: DenseHead
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 256
    seed: int = 0


def finetune(tuning: Tuning, quantized: dict[str, QuantizedDense],
             progress: bool = False) -> dict[str, QuantizedDense]:
    """Fine-tuned copies of the quantized layers (Adam, cosine schedule, cross-entropy)."""
    head, features = tuning.head.head, tuning.head.features
    labels = torch.from_numpy(tuning.head.labels)
    fixed = {name: p.detach() for name, p in head.named_parameters()}
    params = {name: {key: nn.Parameter(torch.tensor(a, dtype=torch.float32))
                     for key, a in q.trainable().items()} for name, q in quantized.items()}
    decoders = {name: q.torch_decoder() for name, q in quantized.items()}
    optimizer = torch.optim.Adam([p for group in params.values() for p in group.values()],
                                 lr=tuning.lr)
    batches = -(-len(features) // tuning.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, tuning.epochs * batches)
    generator = torch.Generator().manual_seed(tuning.seed)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(tuning.epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in progress_bar(range(0, len(features), tuning.batch_size),
                                  desc=f"fine-tune {epoch + 1}/{tuning.epochs}", unit="batch",
                                  enabled=progress):
            batch = order[start:start + tuning.batch_size]
            weights = dict(fixed)
            weights.update({f"{name}.weight": decoders[name](params[name]) for name in params})
            loss = loss_fn(torch.func.functional_call(head, weights, (features[batch],)),
                           labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return {name: q.replaced({key: p.detach().numpy().copy() for key, p in params[name].items()})
            for name, q in quantized.items()}
