"""Vector quantization of dense layers, and the Deep Compression pipeline.

Takes the weight matrices of a model's dense layers; gives quantized layers
(codebooks and indices, or low-rank factors) with their exact storage, and the
accuracy and compression rate of the model that uses them. Deep Compression gives
pruned, weight-shared and Huffman-coded layers with their storage.

``methods``
    The five methods: binarization, scalar k-means, product and residual
    quantization, SVD.
``clustering``
    Seeded, single-threaded faiss clustering (product quantizers, scalar k-means).
``finetune``
    Accuracy of a model with its dense layers replaced; fine-tuning of the codebooks.
``sweep``
    Records of quantized models and the sweep over every method's parameters.
``deepcompress``
    Pruning, weight sharing and Huffman coding (Han et al.).

The int8 form of a quantized layer that the dense engine runs is
:mod:`velcro.sw.export.codebooks`; the sweep's plot is
:func:`velcro.sw.report.plots.plot_sweep`. Importing this package alone loads neither
torch nor faiss, so the report reads :data:`METHODS` and :data:`AXES` without them.
"""

#: The methods, in the order the report lists them.
METHODS = ("bin", "km", "pq", "rq", "svd")
#: The axes product quantization segments along: the inputs (x) or the outputs (y).
AXES = ("x", "y")
