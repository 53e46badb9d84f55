"""``export``: the one library call from a float model to a deployment package.

It is what ``velcro export`` runs: the VELCRO plan (given, or built from per-layer
thresholds on the task's preprocessing split), vector-quantized dense layers, and
int8 post-training quantization (:func:`velcro.sw.export.quantize.quantize`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..data import Task
from ..errors import PlanError
from ..locality.plan import Plan
from .package import Package

__all__ = ["export"]


def export(model: nn.Module, task: Task, thresholds: Sequence[float] | None = None, *,
           plan: Plan | None = None, criterion: str = "variance", dense: dict | None = None,
           source: dict | None = None, progress: bool = False) -> Package:
    """Quantize ``model`` for ``task`` into a :class:`~velcro.sw.export.package.Package`.

    Parameters
    ----------
    model
        The float model, in eval mode.
    task
        The specialized task: its preprocessing split is profiled (for ``thresholds``)
        and calibrates the activation scales; its name and classes go into the package.
    thresholds
        One percentile per conv-activation: the plan is built from the profile of the
        preprocessing split with the locality ``criterion``. Give ``thresholds`` or
        ``plan``, or neither for a package that skips nothing.
    plan
        A VELCRO plan built beforehand (:func:`velcro.sw.locality.plan.compress`).
    dense
        ``layer name -> quantized layer`` for dense layers run from codebooks (scalar
        k-means or x-axis product quantization of :mod:`velcro.sw.vq.methods`); the
        other dense layers are int8.
    source
        What the package records of the model it came from (``model``, ``weights``,
        ``data``, ``image_size``).
    """
    if thresholds is not None and plan is not None:
        raise PlanError("give thresholds or a plan, not both")
    if thresholds is not None:
        from ..locality.experiment import prepare
        from ..locality.plan import check_thresholds, compress
        from ..locality.taps import tap

        tapped = tap(model)
        thresholds = check_thresholds(thresholds, tapped.names)
        setup = prepare(tapped, task, sensitivity=criterion == "fisher", progress=progress)
        plan = compress(setup.profile, thresholds, criterion)
    from .quantize import quantize

    return quantize(model, task, plan, source, dense)
