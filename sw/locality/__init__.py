"""VELCRO, value-locality compression of a CNN's activations.

Takes a trained ``nn.Module`` and the images of a specialized task; gives a
:class:`~velcro.sw.locality.plan.Plan`: for every activation that follows a
convolution, the elements replaced by constants (their means over a few task images)
and those constants, with the compression-saving ratio ``C`` (the fraction of
conv-activation elements whose convolutions are skipped).

``taps``
    Trace the model with ``torch.fx`` and mark every activation that follows a conv.
``profile``
    Streaming per-element mean and variance over the preprocessing split.
``plan``
    Locality scores, per-layer percentile thresholds, plans and their application.
``search``
    The per-layer threshold search on the search split.
``rules``
    The search's acceptance rules (strict, McNemar).
``experiment``
    The split discipline end to end (profile, search, validate) and the demo.
"""
