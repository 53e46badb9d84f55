"""Training of the reference model on all ten Fashion-MNIST classes with a fixed seed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .data import load_fashion_mnist, to_float
from .evaluate import accuracy
from .model import REFERENCE_RECORD, REFERENCE_WEIGHTS, load_weights, reference_cnn, save_weights


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
        bar = tqdm(range(0, len(images), batch_size), desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not progress, unit="batch", leave=False)
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


def train_reference(epochs: int = 12, seed: int = 0, out: Path = REFERENCE_WEIGHTS,
                    progress: bool = True) -> dict:
    """Train the reference CNN, write its float16 weights and the measured accuracy record."""
    train_set = load_fashion_mnist("train")
    test_set = load_fashion_mnist("test")
    start = time.perf_counter()
    model = train(reference_cnn(), train_set.images, train_set.labels, epochs, seed,
                  progress=progress)
    seconds = time.perf_counter() - start
    out = Path(out)
    save_weights(model, out)
    # The shipped weights are float16; measure the model exactly as it will be loaded.
    shipped = load_weights(reference_cnn(), out)
    record = {
        "model": "reference_cnn",
        "dataset": "fashion-mnist",
        "test_accuracy": accuracy(shipped, test_set.images, test_set.labels),
        "epochs": epochs,
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    record_path = out.with_suffix(".json") if out != REFERENCE_WEIGHTS else REFERENCE_RECORD
    tmp = record_path.with_name(record_path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(record_path)
    return record
