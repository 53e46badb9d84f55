"""VELCRO compression: locality scores, percentile thresholds, plans and their application.

A *plan* says, per conv-activation, which elements are replaced by constants (a
boolean mask) and the constants (the profiled means). ``compress`` builds one from a
profile and per-layer percentile thresholds ``T_k`` in [0, 100]: in layer k, every
element whose locality score is within the ``T_k``-th percentile of that layer's
scores is replaced. Elements tied with the percentile value are all replaced, so the
compression-saving ratio ``C`` is always computed from the actual mask counts.

Locality scores (lower = more local, replaced first):

``variance``
    The paper's criterion: the element's variance over the preprocessing images.
``relative``
    Variance divided by the mean square of its channel. Percentiles are taken per
    layer, and channels of one layer can differ in scale by orders of magnitude
    (the next layer's weights compensate); this makes channels comparable.
``fisher``
    Variance times the mean squared gradient of the loss with respect to the
    element. Replacing ``a`` by its mean changes the loss by ``g * (mean - a)`` to
    first order, whose expected square is ``E[g^2] * Var[a]`` when the two are
    uncorrelated: the score is the expected damage of the replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import PlanError
from ..files import read_npz, write_npz
from .profile import Profile
from .taps import Tapped

CRITERIA = ("variance", "relative", "fisher")
FORMAT = "velcro-plan"
VERSION = 1


def scores(profile: Profile, criterion: str) -> list[np.ndarray]:
    """Per-element locality score of every layer for ``criterion`` (lower = more local)."""
    if criterion not in CRITERIA:
        raise PlanError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion == "fisher" and not profile.has_sensitivity:
        raise PlanError("the fisher criterion needs a profile with gradients "
                        "(profile with sensitivity=True / 'velcro profile --sensitivity')")
    result = []
    for layer in profile.layers:
        v = layer.variance
        if criterion == "variance":
            result.append(v)
        elif criterion == "relative":
            # Mean square of each channel (axis 0); E[a^2] = Var[a] + E[a]^2.
            square = v + layer.mean ** 2
            axes = tuple(range(1, v.ndim))
            power = square.mean(axis=axes, keepdims=True) if axes else square
            result.append(v / np.maximum(power, np.finfo(np.float64).tiny))
        else:
            result.append(v * layer.grad_sq)
    return result


def percentile_mask(score: np.ndarray, threshold: float) -> np.ndarray:
    """Elements whose score lies within the ``threshold``-th percentile, ties included.

    ``threshold`` 0 selects nothing and 100 everything. Otherwise the cut is the
    smallest score at or above which ``threshold`` % of the elements lie (the
    inverted-CDF percentile), and every element equal to it is selected too.
    """
    threshold = float(threshold)
    if not 0.0 <= threshold <= 100.0 or np.isnan(threshold):
        raise PlanError(f"threshold {threshold} out of range [0, 100]")
    if threshold == 0.0 or score.size == 0:
        return np.zeros(score.shape, dtype=bool)
    if threshold == 100.0:
        return np.ones(score.shape, dtype=bool)
    cut = np.percentile(score, threshold, method="inverted_cdf")
    return score <= cut


@dataclass
class PlanLayer:
    """Mask and replacement constants of one conv-activation output."""

    name: str
    threshold: float
    mask: np.ndarray
    mean: np.ndarray

    @property
    def replaced(self) -> int:
        return int(self.mask.sum())


@dataclass
class Plan:
    """A VELCRO compression plan: one :class:`PlanLayer` per conv-activation."""

    layers: list[PlanLayer]
    criterion: str
    meta: dict = field(default_factory=dict)

    @property
    def thresholds(self) -> list[float]:
        return [layer.threshold for layer in self.layers]

    @property
    def C(self) -> float:
        """Compression-saving ratio from the actual masks: replaced / total elements."""
        total = sum(layer.mask.size for layer in self.layers)
        return sum(layer.replaced for layer in self.layers) / total

    def save(self, path: Path) -> None:
        """Write the plan as ``.npz`` (no pickles), atomically."""
        header = {"format": FORMAT, "version": VERSION, "criterion": self.criterion,
                  "names": [layer.name for layer in self.layers],
                  "thresholds": self.thresholds, "meta": self.meta}
        arrays = {}
        for i, layer in enumerate(self.layers):
            arrays[f"mask_{i}"] = layer.mask
            arrays[f"mean_{i}"] = layer.mean
        write_npz(path, header, arrays)

    @classmethod
    def load(cls, path: Path) -> Plan:
        arrays, header = read_npz(path, FORMAT, VERSION, PlanError)
        try:
            layers = []
            for i, (name, t) in enumerate(zip(header["names"], header["thresholds"], strict=True)):
                mask, mean = arrays[f"mask_{i}"], arrays[f"mean_{i}"]
                if mask.dtype != np.bool_ or mask.shape != mean.shape:
                    raise PlanError(f"{path}: layer {name!r} has a bad mask or mean array")
                layers.append(PlanLayer(str(name), float(t), mask, mean.astype(np.float32)))
            return cls(layers, str(header["criterion"]), dict(header.get("meta", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"{path}: not a valid velcro plan ({e})") from None


def check_thresholds(thresholds: Sequence[float], names: Sequence[str]) -> list[float]:
    """Validate a threshold tuple against the layers it is for."""
    thresholds = [float(t) for t in thresholds]
    if len(thresholds) != len(names):
        raise PlanError(f"{len(thresholds)} thresholds given for {len(names)} conv-activations "
                        f"({', '.join(names)})")
    for name, t in zip(names, thresholds, strict=True):
        if not 0.0 <= t <= 100.0:
            raise PlanError(f"threshold {t:g} for {name} out of range [0, 100]")
    return thresholds


def compress(profile: Profile, thresholds: Sequence[float], criterion: str = "variance",
             layer_scores: list[np.ndarray] | None = None) -> Plan:
    """Build a plan from a profile and one percentile threshold per conv-activation.

    ``layer_scores`` may pass precomputed :func:`scores` (the threshold search does).
    """
    thresholds = check_thresholds(thresholds, profile.names)
    layer_scores = layer_scores if layer_scores is not None else scores(profile, criterion)
    layers = [PlanLayer(layer.name, t, percentile_mask(s, t), layer.mean.astype(np.float32))
              for layer, s, t in zip(profile.layers, layer_scores, thresholds, strict=True)]
    return Plan(layers, criterion)


def plan_C(profile: Profile, thresholds: Sequence[float], layer_scores: list[np.ndarray]) -> float:
    """C of the plan ``compress`` would build, without building it."""
    replaced = sum(int(percentile_mask(s, t).sum()) for s, t in zip(layer_scores, thresholds,
                                                                    strict=True))
    return replaced / sum(s.size for s in layer_scores)


def apply(tapped: Tapped, plan: Plan) -> list:
    """Attach forward hooks that replace masked elements by their means.

    Returns the hook handles; call ``remove()`` on each (or use :func:`applied`) to
    restore the model.
    """
    if [t.name for t in tapped.taps] != [layer.name for layer in plan.layers]:
        raise PlanError(f"plan layers {[layer.name for layer in plan.layers]} do not match the "
                        f"model's conv-activations {tapped.names}")
    handles = []
    for t, layer in zip(tapped.taps, plan.layers, strict=True):
        if layer.replaced == 0:
            continue
        mask = torch.from_numpy(layer.mask)
        mean = torch.from_numpy(layer.mean)

        def replace(module, inputs, output, mask=mask, mean=mean):
            if tuple(output.shape[1:]) != tuple(mask.shape):
                raise PlanError(f"plan for {module.name} expects {list(mask.shape)}, "
                                f"the model produced {list(output.shape[1:])}")
            return torch.where(mask, mean.to(output.dtype), output)

        handles.append(t.register_forward_hook(replace))
    return handles


@contextmanager
def applied(tapped: Tapped, plan: Plan | None):
    """Context manager: the model runs with ``plan`` inside the block (None: unchanged)."""
    handles = apply(tapped, plan) if plan is not None else []
    try:
        yield tapped
    finally:
        for h in handles:
            h.remove()
