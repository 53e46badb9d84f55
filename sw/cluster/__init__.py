"""Profiling, threshold search and inference on a Ray cluster (``--ray``, ``--workers``).

Takes what the single-process stages take (a model and images, a search split, a
deployment package and devices) and gives the same results, computed by Ray tasks
and actors on one machine or many:

``engine``
    Connecting to Ray (``--ray auto|local:N|ADDRESS``), or starting a local instance.
``profile``
    The preprocessing profile with the images sharded over tasks; the workers' running
    moments are merged with Chan's pairwise update.
``search``
    The candidate plans of each step of the threshold search, measured by actors that
    hold the model and the search images.
``inference``
    ``velcro run`` over several devices, one actor each, with a dead worker's shard
    run again on a healthy one.

Nothing here imports Ray until it is used; velcro without the ``ray`` extra never
needs it.
"""
