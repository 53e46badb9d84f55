import numpy as np
import pytest
import torch
from torch import nn

from velcro.sw.errors import VQError
from velcro.sw.vq.deepcompress import (
    LayerSetting,
    LayerStorage,
    Schedule,
    cluster_layer,
    deep_compress,
    finish_pruning,
    from_relative,
    huffman_decode,
    huffman_encode,
    prune_layers,
    share_weights,
    to_relative,
    weight_layers,
)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 4))


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 8 * 8, 20), nn.ReLU(), nn.Linear(20, 4))


# ----------------------------------------------------------------- pruning

@pytest.mark.parametrize("keep", [0.5, 0.1, 0.013, 1.0])
def test_pruning_keeps_exactly_the_requested_number_of_largest_weights(keep):
    model = small_cnn()
    before = {name: m.weight.detach().clone() for name, m in weight_layers(model).items()}
    masks = prune_layers(model, {name: keep for name in before})
    finish_pruning(model)
    for name, module in weight_layers(model).items():
        n = before[name].numel()
        kept = max(1, round(keep * n))
        assert int(masks[name].sum()) == kept
        assert int((module.weight != 0).sum()) == kept
        magnitude = before[name].abs()
        if keep < 1:
            assert magnitude[masks[name]].min() >= magnitude[~masks[name]].max()


def test_repruning_keeps_a_subset_and_training_leaves_pruned_weights_at_zero():
    model = mlp()
    first = prune_layers(model, {"1": 0.5, "3": 0.5})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.randn(8, 1, 8, 8)).square().sum().backward()
    optimizer.step()
    assert (model[1].weight[~first["1"]] == 0).all()
    second = prune_layers(model, {"1": 0.2, "3": 0.2})
    assert int(second["1"].sum()) == round(0.2 * 64 * 40)
    assert not (second["1"] & ~first["1"]).any()


# ----------------------------------------------------------------- quantization

def test_clustering_uses_linear_init_and_codes_only_the_kept_weights(rng):
    weight = rng.normal(size=(30, 20)).astype(np.float32)
    weight[rng.random(weight.shape) < 0.7] = 0
    centroids, codes = cluster_layer(weight, 4)
    assert centroids.shape == (15,)
    np.testing.assert_array_equal(codes == 0, weight == 0)
    kept = weight != 0
    nearest = np.abs(weight[kept][:, None] - centroids[None]).argmin(1) + 1
    np.testing.assert_array_equal(codes[kept], nearest)
    assert np.all(np.diff(centroids) > 0)       # ordered like the linear initialisation


def test_few_kept_weights_get_one_centroid_each():
    weight = np.zeros((4, 4), dtype=np.float32)
    weight[0, :3] = [0.5, -0.25, 1.0]
    centroids, codes = cluster_layer(weight, 8)
    assert sorted(centroids) == [-0.25, 0.5, 1.0]
    np.testing.assert_array_equal(np.r_[0, centroids][codes], weight)


def test_centroid_gradient_is_the_sum_of_its_members_gradients(rng):
    model = mlp()
    prune_layers(model, {"1": 0.3})
    finish_pruning(model)
    share_weights(model, {"1": 3})
    shared = model[1].parametrizations.weight[0]
    x = torch.randn(16, 1, 8, 8)
    model(x).square().sum().backward()
    # The same loss through a plain copy of the weights gives each weight's gradient.
    plain = mlp()
    plain[1].weight.data = model[1].weight.detach().clone()
    plain[3].weight.data = model[3].weight.detach().clone()
    plain[1].bias.data, plain[3].bias.data = model[1].bias.detach(), model[3].bias.detach()
    plain(x).square().sum().backward()
    codes = shared.codes.numpy()
    grads = plain[1].weight.grad.numpy()
    expected = [grads[codes == c].sum() for c in range(1, 8)]
    np.testing.assert_allclose(shared.centroids.grad.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert (model[1].weight[torch.from_numpy(codes == 0)] == 0).all()


# ----------------------------------------------------------------- sparse format + Huffman

def test_relative_indices_insert_fillers_for_long_gaps():
    codes = np.zeros(16, dtype=np.int64)
    codes[[1, 10, 11]] = [5, 6, 7]
    sparse = to_relative(codes, 2)              # distances 1..4
    # position 1: distance 2; position 10: distance 9 = 4 + 4 + 1 (two fillers); 11: 1
    np.testing.assert_array_equal(sparse.gaps, [1, 3, 3, 0, 0])
    np.testing.assert_array_equal(sparse.codes, [5, 0, 0, 6, 7])
    assert sparse.fillers == 2
    np.testing.assert_array_equal(from_relative(sparse), codes)


@pytest.mark.parametrize("index_bits", [1, 3, 5, 8])
def test_relative_indices_round_trip(rng, index_bits):
    codes = rng.integers(1, 64, (50, 70)) * (rng.random((50, 70)) < 0.05)
    sparse = to_relative(codes, index_bits)
    assert sparse.gaps.max() < 1 << index_bits
    np.testing.assert_array_equal(from_relative(sparse).reshape(codes.shape), codes)


def test_huffman_round_trip_and_skewed_symbols_need_fewer_bits(rng):
    symbols = rng.choice(32, size=5000, p=np.r_[0.5, np.full(31, 0.5 / 31)])
    stream = huffman_encode(symbols)
    np.testing.assert_array_equal(huffman_decode(stream), symbols)
    assert stream.count == 5000
    assert stream.bits == 8 * len(stream.payload) + 8 * 33      # 32 symbols + end of stream
    assert stream.bits < 5 * 5000


def test_storage_per_stage_on_a_hand_computed_layer():
    s = LayerStorage(name="fc", shape=[10, 100], weights=1000, biases=10, kept=80, fillers=5,
                     centroids=63, setting=LayerSetting(0.08, 6, 5), huffman_codes_bits=600,
                     huffman_gaps_bits=300)
    assert s.bits() == {"original": 32 * 1010,
                        "pruned": 85 * (32 + 5) + 320,
                        "quantized": 85 * (6 + 5) + 63 * 32 + 320,
                        "huffman": 600 + 300 + 63 * 32 + 320}


@pytest.mark.parametrize("kwargs, message", [
    ({"keep": 0.0, "bits": 6, "index_bits": 5}, "keep fraction must be in \\(0, 1\\], not 0.0"),
    ({"keep": 0.1, "bits": 0, "index_bits": 5}, "weight bits must be in \\[1, 16\\], not 0"),
    ({"keep": 0.1, "bits": 6, "index_bits": 17}, "index bits must be in \\[1, 16\\], not 17"),
])
def test_bad_settings_name_the_value(kwargs, message):
    with pytest.raises(VQError, match=message):
        LayerSetting(**kwargs)


# ----------------------------------------------------------------- pipeline

@pytest.fixture
def task(rng):
    teacher = small_cnn(seed=7).eval()
    images = rng.integers(0, 256, (1200, 1, 8, 8), dtype=np.uint8)
    with torch.no_grad():
        labels = teacher(torch.from_numpy(images / 255).float()).argmax(1).numpy()
    return images[:1000], labels[:1000], images[1000:], labels[1000:]


def test_pipeline_prunes_quantizes_and_decodes_losslessly(task):
    from velcro.sw.train import train

    tr_x, tr_y, te_x, te_y = task
    model = train(small_cnn(), tr_x, tr_y, epochs=3, progress=False)
    settings = {"0": LayerSetting(0.6, 4, 3), "3": LayerSetting(0.1, 3, 4),
                "5": LayerSetting(0.3, 3, 3)}
    result = deep_compress(model, settings, tr_x, tr_y, te_x, te_y,
                           Schedule(prune_steps=2, retrain_epochs=1, finetune_epochs=1),
                           progress=False)
    layers = {layer["name"]: layer for layer in result["layers"]}
    for name, setting in settings.items():
        assert layers[name]["kept"] == round(setting.keep * layers[name]["weights"])
        assert layers[name]["centroids"] == (1 << setting.bits) - 1
    bits = result["storage_bits"]
    assert bits["original"] == 32 * sum(p.numel() for p in model.parameters())
    assert bits["original"] > bits["pruned"] > bits["quantized"]
    # Accuracy measured on weights decoded back from the Huffman streams.
    assert result["accuracy"]["huffman"] == result["accuracy"]["quantized"]
    assert result["compression"]["huffman"] == bits["original"] / bits["huffman"]


def test_unknown_layer_names_are_rejected(task):
    tr_x, tr_y, te_x, te_y = task
    with pytest.raises(VQError, match="no weight layer 'fc9'"):
        deep_compress(mlp(), {"fc9": LayerSetting(0.1, 4, 4)}, tr_x, tr_y, te_x, te_y)
