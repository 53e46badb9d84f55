"""Benchmarks: ``velcro bench NAME`` runs one module of :data:`BENCHES`, ``velcro bench``
alone the whole suite (:mod:`velcro.sw.bench.suite`).

Each benchmark module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> dict`` returning the measured figures; ``velcro bench`` prints them
and writes them as JSON with ``--json``. Benchmarks measure and report; ``hw`` also
checks what it simulates against the golden and cost models, and fails (exit code 2)
when they disagree.
"""

#: The modules ``velcro bench NAME`` offers, by name.
BENCHES = ("golden", "hw", "profile", "vq")
