"""Sub-commands of the ``velcro`` command line, one module per feature.

Each module of :data:`COMMANDS` defines ``register(subparsers)``; the options several
of them share are in :mod:`velcro.sw.commands.options`.
"""

#: The modules that register sub-commands, in the order ``velcro --help`` lists them.
COMMANDS = ("bench", "build", "compression", "deploy", "doctor", "report", "table1", "vq", "zoo")
