"""Model accuracy with replaced dense layers, and codebook fine-tuning
(:mod:`velcro.sw.vq.finetune`)."""

import numpy as np
import torch
from torch import nn

from velcro.sw.vq.finetune import DenseHead, Tuning, finetune
from velcro.sw.vq.methods import quantize_layers


def test_dense_head_accuracy_equals_the_full_model(toy, rng, tiny_model):
    from velcro.sw.evaluate import accuracy

    model, images, labels = toy
    noisy = rng.integers(0, 3, len(labels))
    head = DenseHead(model, images, noisy)
    assert head.accuracy() == accuracy(model, images, noisy)
    new = rng.normal(0, 0.1, (32, 144)).astype(np.float32)
    changed = tiny_model()
    changed[3].weight.data = torch.from_numpy(new)
    assert head.accuracy({"3": new}) == accuracy(changed, images, noisy)
    assert head.accuracy() == accuracy(model, images, noisy)


def test_finetuning_keeps_indices_and_storage_and_lowers_the_loss(toy):
    model, images, labels = toy
    head = DenseHead(model, images, labels)
    quantized = quantize_layers({"3": model[3].weight.detach().numpy()}, "pq",
                                {"k": 2, "segment": 8, "axis": "x"})
    tuned = finetune(Tuning(head, epochs=3, lr=1e-2, batch_size=64), quantized)
    before, after = quantized["3"], tuned["3"]
    np.testing.assert_array_equal(after.indices, before.indices)
    assert after.storage_bits == before.storage_bits
    assert not np.array_equal(after.codebooks, before.codebooks)

    def loss(q):
        w = torch.from_numpy(q.reconstruct())
        logits = torch.func.functional_call(head.head, {"3.weight": w}, (head.features,))
        return nn.functional.cross_entropy(logits, torch.from_numpy(labels)).item()

    assert loss(after) < loss(before)
