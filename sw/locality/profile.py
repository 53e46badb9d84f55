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

    Each batch is shifted by ``shift`` (default: the first sample of the stream) and
    reduced to its sum and sum of squares in float64, a few rows at a time through a
    reused buffer small enough to stay in cache; Chan's update then merges the batch.
    The shift keeps the sum of squares free of cancellation for elements whose mean is
    large against their spread, exactly the elements VELCRO replaces. A fixed shift
    makes every batch's figures independent of the batches before it, so streams split
    at batch boundaries and merged (:meth:`merge`) agree with one stream to the
    rounding of the merges alone.
    """

    #: Bytes of the float64 work buffer; a block of rows of this size stays in L2/L3.
    BLOCK_BYTES = 4 << 20

    def __init__(self, shape: tuple[int, ...], shift: torch.Tensor | None = None):
        self.count = 0
        self.shift = None if shift is None else shift.detach().reshape(-1).to(torch.float64)
        self.mean = torch.zeros(shape, dtype=torch.float64)
        self.m2 = torch.zeros(shape, dtype=torch.float64)
        size = int(np.prod(shape, dtype=np.int64))
        self._rows = max(1, self.BLOCK_BYTES // (8 * max(size, 1)))
        self._buffer = torch.empty((0, size), dtype=torch.float64)
        self._ones = torch.empty(0, dtype=torch.float64)
        self._total = torch.empty(size, dtype=torch.float64)
        self._squares = torch.empty(size, dtype=torch.float64)

    def __getstate__(self) -> dict:
        # Ray ships moments between processes: the count and the two tensors, not the
        # work buffers.
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def __setstate__(self, state: dict) -> None:
        self.__init__(tuple(state["mean"].shape))
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]

    def update(self, batch: torch.Tensor) -> None:
        """Merge a batch ``[B, *shape]`` into the running moments (Chan's parallel update)."""
        n_b = batch.shape[0]
        if n_b == 0:
            return
        flat = batch.detach().reshape(n_b, -1)
        if self.shift is None:
            self.shift = flat[0].to(torch.float64, copy=True)
        shift = self.shift
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
        self._combine(n_b, mean_b.reshape(self.mean.shape), m2_b.reshape(self.m2.shape))

    def merge(self, other: RunningMoments) -> None:
        """Merge the moments of another stream of the same shape (Chan's pairwise update):
        the result is that of one stream holding both, up to rounding."""
        if other.mean.shape != self.mean.shape:
            raise ValueError(f"cannot merge moments of shape {list(other.mean.shape)} into "
                             f"{list(self.mean.shape)}")
        if other.count:
            self._combine(other.count, other.mean, other.m2)

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        """Chan et al.'s combination of ``(count, mean, m2)`` with ``(n_b, mean_b, m2_b)``."""
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / n)
        self.m2 += m2_b + delta ** 2 * (self.count * n_b / n)
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
    bar = progress_bar(total=len(images), desc="profiling", unit="img", enabled=progress)
    try:
        moments = accumulate(tapped, (images[start:start + batch_size]
                                      for start in range(0, len(images), batch_size)),
                             sensitivity, bar.update, shifts(tapped, images[:1], sensitivity))
    finally:
        bar.close()
    return finish(tapped, moments)


@dataclass
class TapMoments:
    """Running moments of every tap's output (and of its squared gradient), mergeable:
    the part of a profile that workers computing shards of the images hand back."""

    outputs: dict[int, RunningMoments] = field(default_factory=dict)
    grads: dict[int, RunningMoments] | None = None
    count: int = 0

    def merge(self, other: TapMoments) -> None:
        """Add the moments of other images (:meth:`RunningMoments.merge` per tap)."""
        if (self.grads is None) != (other.grads is None):
            raise ValueError("cannot merge moments with and without sensitivity")
        pairs = [(self.outputs, other.outputs)]
        if self.grads is not None:
            pairs.append((self.grads, other.grads))
        for mine, theirs in pairs:
            for index, m in theirs.items():
                if index in mine:
                    mine[index].merge(m)
                else:
                    mine[index] = m
        self.count += other.count


def shifts(tapped: Tapped, image: np.ndarray, sensitivity: bool = False) -> TapMoments:
    """The moments of one image (``uint8 [1, C, H, W]``), whose means shift every batch
    of :func:`accumulate`: given to all the shards of a profile, they make the result
    independent of the sharding up to the rounding of the merges."""
    return accumulate(tapped, [image], sensitivity)


def accumulate(tapped: Tapped, batches, sensitivity: bool = False,
               update=None, shift: TapMoments | None = None) -> TapMoments:
    """The running moments of every tap over ``batches`` (uint8 ``[B, C, H, W]`` arrays);
    ``update(n)`` is called after each batch of ``n`` images. ``shift`` (:func:`shifts`)
    gives the value each element's batches are shifted by (default: its first sample)."""
    moments = TapMoments(grads={} if sensitivity else None)

    def start(kind: str, index: int, shape) -> RunningMoments:
        fixed = getattr(shift, kind, None) or {}
        return RunningMoments(tuple(shape), fixed[index].mean if index in fixed else None)

    outputs: dict[int, torch.Tensor] = {}

    def hook(index):
        def record(module, inputs, output):
            if output.dim() < 2:
                return
            if index not in moments.outputs:
                moments.outputs[index] = start("outputs", index, output.shape[1:])
            moments.outputs[index].update(output)
            if sensitivity:
                output.retain_grad()
                outputs[index] = output
        return record

    handles = [t.register_forward_hook(hook(i)) for i, t in enumerate(tapped.taps)]
    tapped.module.eval()
    try:
        for batch in batches:
            x = to_float(batch)
            try:
                if sensitivity:
                    outputs.clear()
                    logits = tapped.module(x)
                    loss = nn.functional.cross_entropy(logits, logits.argmax(1).detach(),
                                                       reduction="sum")
                    loss.backward()
                    for index, out in outputs.items():
                        if index not in moments.grads:
                            moments.grads[index] = start("grads", index, out.shape[1:])
                        moments.grads[index].update(out.grad ** 2)
                else:
                    with torch.inference_mode():
                        tapped.module(x)
            except RuntimeError as e:
                raise ModelError(f"images of shape {list(batch.shape[1:])} do not fit the "
                                 f"model: {str(e).splitlines()[0]}") from None
            moments.count += len(x)
            if update is not None:
                update(len(x))
    finally:
        for h in handles:
            h.remove()
        tapped.module.zero_grad(set_to_none=True)
    return moments


def finish(tapped: Tapped, moments: TapMoments) -> Profile:
    """The :class:`Profile` of the moments :func:`accumulate` (and merges) gathered."""
    if moments.count == 0:
        raise ModelError("no images to profile")
    missing = [tapped.taps[i].name for i in range(len(tapped.taps))
               if i not in moments.outputs]
    if missing:
        raise ModelError(f"conv-activations {missing} produced no feature maps")
    layers = []
    for i, t in enumerate(tapped.taps):
        m = moments.outputs[i]
        if not bool(torch.isfinite(m.mean).all() & torch.isfinite(m.m2).all()):
            raise ModelError(f"conv-activation {t.name} is NaN or infinite on the "
                             "preprocessing images; check the model's weights and inputs")
        layers.append(LayerProfile(
            t.name, m.mean.numpy(), m.variance.numpy(),
            moments.grads[i].mean.numpy() if moments.grads is not None else None))
    return Profile(layers, moments.count)
