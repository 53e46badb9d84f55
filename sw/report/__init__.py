"""The results report (``velcro report``).

Takes the JSON result files of the other commands (VELCRO search and curves, VQ sweep,
Deep Compression, hardware benchmark, resource estimate); gives an HTML page and a
Markdown file with their tables and PNG plots, in one folder.

``inputs``
    The result files: where they are found and the shape each must have.
``sections``
    What each section shows of its inputs: text, tables and a plot.
``plots``
    Every plot: the report's, and those ``velcro demo`` and ``velcro vq --sweep`` write.
``render``
    The HTML page and the Markdown file, written atomically into the output folder.

No module of the report imports torch or faiss: it reads records, not models.
"""
