"""Training of the shipped networks on all ten Fashion-MNIST classes with a fixed seed, on
the 50,000 training images not held out for the tasks' preprocessing and search splits."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import load_fashion_mnist, to_float
from .evaluate import accuracy
from .files import write_json
from .models import ARCHITECTURES, load_weights, save_weights, user_folder
from .progress import progress as progress_bar


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int, seed: int = 0,
          lr: float = 2e-3, batch_size: int = 128, weight_decay: float = 5e-4,
          progress: bool = True) -> nn.Module:
    """Adam with a cosine learning-rate schedule; deterministic for a given seed."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * int(np.ceil(len(images) / batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        bar = progress_bar(range(0, len(images), batch_size), desc=f"epoch {epoch + 1}/{epochs}",
                           unit="batch", enabled=progress)
        for start in bar:
            index = order[start:start + batch_size]
            x = to_float(images[index])
            y = torch.from_numpy(labels[index])
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def train_network(name: str = "reference", epochs: int = 12, seed: int = 0,
                  out: Path | None = None, progress: bool = True) -> dict:
    """Train the network ``name`` of :data:`~velcro.sw.models.ARCHITECTURES`, write its
    float16 weights to ``out`` (default: ``<name>.safetensors`` in
    :func:`~velcro.sw.models.user_folder`) and the measured accuracy record beside them
    (``.json``)."""
    build = ARCHITECTURES[name]
    train_set = load_fashion_mnist("fit")
    test_set = load_fashion_mnist("test")
    start = time.perf_counter()
    model = train(build(), train_set.images, train_set.labels, epochs, seed,
                  progress=progress)
    seconds = time.perf_counter() - start
    out = Path(out) if out is not None else user_folder() / f"{name}.safetensors"
    save_weights(model, out)
    # The shipped weights are float16; measure the model exactly as it will be loaded.
    shipped = load_weights(build(), out)
    record = {
        "model": "reference_cnn" if name == "reference" else name,
        "dataset": "fashion-mnist",
        "test_accuracy": accuracy(shipped, test_set.images, test_set.labels),
        "train_images": len(train_set),
        "epochs": epochs,
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    write_json(out.with_suffix(".json"), record)
    return record


def train_reference(epochs: int = 12, seed: int = 0, out: Path | None = None,
                    progress: bool = True) -> dict:
    """:func:`train_network` of the reference CNN."""
    return train_network("reference", epochs, seed, out, progress)
