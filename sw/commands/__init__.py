"""Sub-commands of the ``velcro`` command line, one module per feature."""
