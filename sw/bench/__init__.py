"""Benchmarks run by ``velcro bench NAME``: one module per benchmark.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> dict`` returning the measured figures; ``velcro bench`` prints them
and writes them as JSON with ``--json``. Benchmarks measure and report; they do not
pass or fail.
"""
