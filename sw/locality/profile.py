"""VELCRO preprocessing: streaming per-element statistics of conv-activation outputs.

For every tapped activation the profile holds the per-element mean and variance
over the preprocessing images, computed in float64 batch by batch and merged with
Chan et al.'s parallel update, so memory does not grow with the number of images.
Optionally it also holds the mean squared gradient of the loss (at the model's own
prediction) with respect to each element, which the ``fisher`` criterion uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import to_float
from ..errors import ModelError, PlanError
from ..files import read_npz, write_npz
from ..progress import progress as progress_bar
from .taps import Tapped, tap

FORMAT = "velcro-profile"
VERSION = 1


class RunningMoments:
    """Count, mean and sum of squared deviations (M2) of a stream of tensors, in float64.

    Each batch is shifted by the running mean (by its first sample for the first
    batch) and reduced to its sum and sum of squares in float64, a few rows at a time
    through a reused buffer small enough to stay in cache; Chan's update then merges
    the batch. The shift keeps the sum of squares free of cancellation for elements
    whose mean is large against their spread, exactly the elements VELCRO replaces.
    """

    #: Bytes of the float64 work buffer; a block of rows of this size stays in L2/L3.
    BLOCK_BYTES = 4 << 20

    def __init__(self, shape: tuple[int, ...]):
        self.count = 0
        self.mean = torch.zeros(shape, dtype=torch.float64)
        self.m2 = torch.zeros(shape, dtype=torch.float64)
        size = int(np.prod(shape, dtype=np.int64))
        self._rows = max(1, self.BLOCK_BYTES // (8 * max(size, 1)))
        self._buffer = torch.empty((0, size), dtype=torch.float64)
        self._ones = torch.empty(0, dtype=torch.float64)
        self._total = torch.empty(size, dtype=torch.float64)
        self._squares = torch.empty(size, dtype=torch.float64)

    def update(self, batch: torch.Tensor) -> None:
        """Merge a batch ``[B, *shape]`` into the running moments (Chan's parallel update)."""
        n_b = batch.shape[0]
        if n_b == 0:
            return
        flat = batch.detach().reshape(n_b, -1)
        shift = (self.mean.reshape(-1) if self.count
                 else flat[0].to(torch.float64, copy=True))
        if self._buffer.shape[0] < min(n_b, self._rows):
            self._buffer = torch.empty((min(n_b, self._rows), flat.shape[1]), dtype=torch.float64)
            self._ones = torch.ones(self._buffer.shape[0], dtype=torch.float64)
        total, squares = self._total.zero_(), self._squares.zero_()
        for start in range(0, n_b, self._rows):
            rows = min(self._rows, n_b - start)
            work, ones = self._buffer[:rows], self._ones[:rows]
            work.copy_(flat[start:start + rows])
            work.sub_(shift)
            total.addmv_(work.T, ones)              # sum of (x - shift)
            work.mul_(work)
            squares.addmv_(work.T, ones)            # sum of (x - shift)^2
        mean_b = shift + total / n_b
        m2_b = (squares - total * total / n_b).clamp_(min=0.0)
        n = self.count + n_b
        delta = (mean_b - self.mean.reshape(-1)).reshape(self.mean.shape)
        self.mean += delta * (n_b / n)
        self.m2 += m2_b.reshape(self.m2.shape) + delta ** 2 * (self.count * n_b / n)
        self.count = n

    @property
    def variance(self) -> torch.Tensor:
        """Population variance (divides by N, as the VELCRO paper's variance tensor)."""
        return self.m2 / max(self.count, 1)


@dataclass
class LayerProfile:
    """Statistics of one conv-activation output of shape ``(C, H, W)``."""

    name: str
    mean: np.ndarray
    variance: np.ndarray
    grad_sq: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mean.shape


@dataclass
class Profile:
    """The profile of a model on the preprocessing images of a task."""

    layers: list[LayerProfile]
    count: int
    meta: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def has_sensitivity(self) -> bool:
        return all(layer.grad_sq is not None for layer in self.layers)

    def save(self, path: Path) -> None:
        """Write the profile as ``.npz`` (no pickles), atomically."""
        header = {"format": FORMAT, "version": VERSION, "count": self.count,
                  "names": self.names, "meta": self.meta}
        arrays = {}
        for i, layer in enumerate(self.layers):
            arrays[f"mean_{i}"] = layer.mean
            arrays[f"variance_{i}"] = layer.variance
            if layer.grad_sq is not None:
                arrays[f"grad_sq_{i}"] = layer.grad_sq
        write_npz(path, header, arrays)

    @classmethod
    def load(cls, path: Path) -> Profile:
        """Read a profile written by :meth:`save`; anything else raises :class:`PlanError`."""
        arrays, header = read_npz(path, FORMAT, VERSION, PlanError)
        layers = []
        try:
            for i, name in enumerate(header["names"]):
                mean = arrays[f"mean_{i}"]
                variance = arrays[f"variance_{i}"]
                grad_sq = arrays.get(f"grad_sq_{i}")
                if variance.shape != mean.shape or (grad_sq is not None
                                                    and grad_sq.shape != mean.shape):
                    raise PlanError(f"{path}: layer {name!r} arrays disagree in shape")
                layers.append(LayerProfile(str(name), mean.astype(np.float64),
                                           variance.astype(np.float64),
                                           None if grad_sq is None else grad_sq.astype(np.float64)))
            return cls(layers, int(header["count"]), dict(header.get("meta", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"{path}: not a valid velcro profile ({e})") from None


def profile(model: nn.Module | Tapped, images: np.ndarray, batch_size: int = 250,
            sensitivity: bool = False, progress: bool = False) -> Profile:
    """Per-element mean and variance of every conv-activation output over ``images``.

    Parameters
    ----------
    model
        Any traceable ``nn.Module`` built from convolutions and ReLU/ReLU6 activations,
        or an already :func:`~velcro.sw.locality.taps.tap`-ped model.
    images
        ``uint8 [N, C, H, W]`` images of the target task (the preprocessing split).
    sensitivity
        Also record the mean squared gradient of the cross-entropy at the model's own
        top-1 prediction with respect to each activation element (one backward pass
        per batch), for the ``fisher`` criterion.
    """
    tapped = tap(model)
    if len(images) == 0:
        raise ModelError("no images to profile")
    moments: dict[int, RunningMoments] = {}
    grads: dict[int, RunningMoments] = {}
    outputs: dict[int, torch.Tensor] = {}

    def hook(index):
        def record(module, inputs, output):
            if output.dim() < 2:
                return
            if index not in moments:
                moments[index] = RunningMoments(tuple(output.shape[1:]))
            moments[index].update(output)
            if sensitivity:
                output.retain_grad()
                outputs[index] = output
        return record

    handles = [t.register_forward_hook(hook(i)) for i, t in enumerate(tapped.taps)]
    tapped.module.eval()
    bar = progress_bar(total=len(images), desc="profiling", unit="img", enabled=progress)
    try:
        for start in range(0, len(images), batch_size):
            x = to_float(images[start:start + batch_size])
            try:
                if sensitivity:
                    outputs.clear()
                    logits = tapped.module(x)
                    loss = nn.functional.cross_entropy(logits, logits.argmax(1).detach(),
                                                       reduction="sum")
                    loss.backward()
                    for index, out in outputs.items():
                        grads.setdefault(index, RunningMoments(tuple(out.shape[1:])))
                        grads[index].update(out.grad ** 2)
                else:
                    with torch.inference_mode():
                        tapped.module(x)
            except RuntimeError as e:
                raise ModelError(f"images of shape {list(images.shape[1:])} do not fit the "
                                 f"model: {str(e).splitlines()[0]}") from None
            bar.update(len(x))
    finally:
        bar.close()
        for h in handles:
            h.remove()
        tapped.module.zero_grad(set_to_none=True)
    missing = [tapped.taps[i].name for i in range(len(tapped.taps)) if i not in moments]
    if missing:
        raise ModelError(f"conv-activations {missing} produced no feature maps")
    layers = []
    for i, t in enumerate(tapped.taps):
        m = moments[i]
        if not bool(torch.isfinite(m.mean).all() & torch.isfinite(m.m2).all()):
            raise ModelError(f"conv-activation {t.name} is NaN or infinite on the "
                             "preprocessing images; check the model's weights and inputs")
        layers.append(LayerProfile(
            t.name, m.mean.numpy(), m.variance.numpy(),
            grads[i].mean.numpy() if sensitivity else None))
    return Profile(layers, len(images))

