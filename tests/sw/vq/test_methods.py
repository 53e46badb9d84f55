import numpy as np
import pytest
import torch
from torch import nn

from velcro.sw import golden
from velcro.sw.vq import (
    DenseHead,
    Tuning,
    VQError,
    binarize,
    deploy,
    evaluate,
    finetune,
    kmeans,
    ordering,
    pack_indices,
    plot_sweep,
    product_quantize,
    quantize,
    quantize_layers,
    residual_quantize,
    svd,
    sweep,
    unpack_indices,
)


@pytest.fixture
def w(rng):
    return rng.normal(0, 0.1, (64, 48)).astype(np.float32)


# ----------------------------------------------------------------- storage formulas

def test_kmeans_storage_of_1000x1000_with_16_centers(rng):
    q = kmeans(rng.normal(size=(1000, 1000)).astype(np.float32), 16)
    assert q.storage_bits == 1_000_000 * 4 + 16 * 32
    assert q.compression_rate == pytest.approx(32e6 / (4e6 + 512))
    assert q.codebook.shape == (16,) and q.indices.shape == (1000, 1000)


def test_storage_formulas_on_a_64x48_matrix(w):
    assert binarize(w).storage_bits == 64 * 48 + 32
    # x-axis PQ, k=8, s=4: 64 rows x 12 segments x 3 bits + 12 codebooks x 8 x 4 floats
    assert product_quantize(w, 8, 4, "x").storage_bits == 64 * 12 * 3 + 32 * 12 * 8 * 4
    # y-axis: 48 columns x 16 segments x 3 bits + 16 codebooks x 8 x 4 floats
    assert product_quantize(w, 8, 4, "y").storage_bits == 48 * 16 * 3 + 32 * 16 * 8 * 4
    # RQ, whole rows: 3 stages x (64 indices x 2 bits + 4 codewords x 48 floats)
    assert residual_quantize(w, 4, 3).storage_bits == 3 * (64 * 2 + 32 * 4 * 48)
    assert residual_quantize(w, 4, 3, segment=12).storage_bits == 3 * (64 * 4 * 2
                                                                       + 32 * 4 * 4 * 12)
    assert svd(w, 5).storage_bits == 32 * 5 * (64 + 48 + 1)
    assert svd(w, 5).compression_rate == pytest.approx(64 * 48 / (5 * 113))


# ----------------------------------------------------------------- reconstruction

def test_kmeans_reconstruction_is_the_codebook_lookup(w):
    q = kmeans(w, 8)
    rec = q.reconstruct()
    for o, i in np.ndindex(*w.shape):
        assert rec[o, i] == q.codebook[q.indices[o, i]]
    assert len(np.unique(rec)) <= 8


def test_pq_x_axis_shapes_and_lookup(w):
    q = product_quantize(w, 8, 4, "x")
    assert q.codebooks.shape == (12, 8, 4) and q.indices.shape == (64, 12)
    rec = q.reconstruct()
    assert rec.shape == w.shape
    for o, j in np.ndindex(64, 12):
        np.testing.assert_array_equal(rec[o, 4 * j:4 * j + 4], q.codebooks[j, q.indices[o, j]])


def test_pq_y_axis_shapes_and_lookup(w):
    q = product_quantize(w, 8, 4, "y")
    assert q.codebooks.shape == (16, 8, 4) and q.indices.shape == (48, 16)
    rec = q.reconstruct()
    assert rec.shape == w.shape
    for i, j in np.ndindex(48, 16):
        np.testing.assert_array_equal(rec[4 * j:4 * j + 4, i], q.codebooks[j, q.indices[i, j]])


def test_rq_reconstruction_sums_the_stage_lookups(w):
    q = residual_quantize(w, 4, 3, segment=12)
    assert q.codebooks.shape == (3, 4, 4, 12) and q.indices.shape == (3, 64, 4)
    expected = np.zeros_like(w)
    for t, o, j in np.ndindex(3, 64, 4):
        expected[o, 12 * j:12 * j + 12] += q.codebooks[t, j, q.indices[t, o, j]]
    np.testing.assert_allclose(q.reconstruct(), expected, rtol=1e-6, atol=1e-7)


def test_rq_stages_reduce_the_error(w):
    errors = [np.linalg.norm(residual_quantize(w, 8, t).reconstruct() - w) for t in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]


def test_binarization_uses_signs_and_mean_magnitude(w):
    q = binarize(w)
    assert q.scale == pytest.approx(np.abs(w).mean())
    np.testing.assert_array_equal(q.reconstruct(), np.where(w >= 0, q.scale, -q.scale))


def test_pq_with_one_codeword_per_vector_is_exact(w):
    np.testing.assert_allclose(product_quantize(w, 64, 4, "x").reconstruct(), w, atol=1e-6)
    np.testing.assert_allclose(product_quantize(w[:, :32], 32, 4, "y").reconstruct(),
                               w[:, :32], atol=1e-6)


def test_full_rank_svd_is_exact_and_low_rank_is_the_best_approximation(w):
    np.testing.assert_allclose(svd(w, 48).reconstruct(), w, atol=1e-5)
    sigma = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    err = np.linalg.norm(svd(w, 10).reconstruct() - w)
    assert err == pytest.approx(np.sqrt((sigma[10:] ** 2).sum()), rel=1e-4)


def test_more_centers_give_smaller_error(w):
    errors = [np.linalg.norm(kmeans(w, k).reconstruct() - w) for k in (2, 4, 16, 64)]
    assert errors == sorted(errors, reverse=True)


def test_clustering_is_deterministic_for_a_seed(w):
    a, b = product_quantize(w, 16, 2, "x", seed=3), product_quantize(w, 16, 2, "x", seed=3)
    np.testing.assert_array_equal(a.codebooks, b.codebooks)
    np.testing.assert_array_equal(a.indices, b.indices)


def test_index_dtype_follows_the_bits(rng):
    x = rng.normal(size=(100, 100)).astype(np.float32)
    assert kmeans(x, 256).indices.dtype == np.uint8
    assert kmeans(x, 512).indices.dtype == np.uint16


# ----------------------------------------------------------------- bad input

@pytest.mark.parametrize("k", [0, 1, 3, 100, 131072, 2.0])
def test_k_must_be_a_power_of_two_up_to_65536(w, k):
    with pytest.raises(VQError, match=f"k must be a power of two in \\[2, 65536\\], not {k}"):
        kmeans(w, k)


@pytest.mark.parametrize("axis, segment, length", [("x", 5, 48), ("y", 5, 64)])
def test_segment_must_divide_the_axis(w, axis, segment, length):
    with pytest.raises(VQError, match=f"segment length {segment} does not divide the {length}"):
        product_quantize(w, 4, segment, axis)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_rejected(w, bad):
    w[3, 7] = bad
    for method, params in [("km", {"k": 4}), ("pq", {"k": 4, "segment": 4}), ("bin", {}),
                           ("svd", {"rank": 2}), ("rq", {"k": 4, "stages": 2})]:
        with pytest.raises(VQError, match=f"non-finite values \\(first: {bad} at \\[3, 7\\]\\)"):
            quantize(w, method, **params)


def test_rank_above_min_dimension_is_rejected(w):
    with pytest.raises(VQError, match="rank must be an integer in \\[1, 48\\].*not 49"):
        svd(w, 49)


def test_other_bad_parameters_name_the_value(w):
    with pytest.raises(VQError, match="axis must be 'x'.*not 'z'"):
        product_quantize(w, 4, 4, "z")
    with pytest.raises(VQError, match="k=128 exceeds the 64 sub-vectors"):
        product_quantize(w, 128, 4, "x")
    with pytest.raises(VQError, match="unknown method 'lsh'"):
        quantize(w, "lsh")
    with pytest.raises(VQError, match="method 'pq' needs --segment"):
        quantize(w, "pq", k=4)
    with pytest.raises(VQError, match="2-D"):
        kmeans(np.zeros(10, dtype=np.float32), 2)


# ----------------------------------------------------------------- deployment

@pytest.mark.parametrize("make", [lambda w: kmeans(w, 16),
                                  lambda w: product_quantize(w, 8, 4, "x")])
def test_deployed_layer_matches_golden_codebook_dense(w, rng, make):
    q = make(w)
    d = deploy(q)
    assert d.codebooks.dtype == np.int8 and np.abs(d.codebooks).max() == 127
    np.testing.assert_allclose(d.scale * d.weight(), q.reconstruct(), atol=d.scale / 2 + 1e-7)
    x = rng.integers(-128, 128, (5, 48), dtype=np.int8)
    bias = rng.integers(-1000, 1000, 64).astype(np.int32)
    expected = x.astype(np.int64) @ d.weight().astype(np.int64).T + bias
    np.testing.assert_array_equal(golden.dense_codebook_acc(x, d.codebooks, d.indices, bias),
                                  expected)
    np.testing.assert_array_equal(golden.dense_acc(x, d.weight(), bias), expected)


def test_deployed_shapes_follow_the_contract(w):
    km = deploy(kmeans(w, 16))
    assert km.codebooks.shape == (1, 16, 1) and km.indices.shape == (64, 48) and km.bits == 4
    pq = deploy(product_quantize(w, 8, 4, "x"))
    assert pq.codebooks.shape == (12, 8, 4) and pq.indices.shape == (64, 12) and pq.bits == 3
    assert pq.indices.dtype == np.uint8


@pytest.mark.parametrize("make", [lambda w: product_quantize(w, 8, 4, "y"),
                                  lambda w: residual_quantize(w, 4, 2),
                                  binarize, lambda w: svd(w, 3)])
def test_layers_the_engine_cannot_run_refuse_to_deploy(w, make):
    with pytest.raises(VQError, match="plain int8 dense layer"):
        deploy(make(w))


def test_pack_layout_is_segment_major_little_endian():
    # segment 0 holds 1, 2, 5 -> bits 100 010 101 -> bytes 0b01010001, 0b00000001;
    # segment 1 holds 7, 0, 3 -> bits 111 000 110 -> bytes 0b11000111, 0b00000000
    indices = np.array([[1, 7], [2, 0], [5, 3]])
    np.testing.assert_array_equal(pack_indices(indices, 3), [0b01010001, 1, 0b11000111, 0])


@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_unpack_round_trip(rng, bits):
    indices = rng.integers(0, 1 << bits, (37, 5))
    packed = pack_indices(indices, bits)
    assert packed.dtype == np.uint8 and packed.size == 5 * -(-37 * bits // 8)
    out = unpack_indices(packed, bits, 37, 5)
    np.testing.assert_array_equal(out, indices)
    assert out.dtype == (np.uint8 if bits <= 8 else np.uint16)


def test_packed_deployed_indices_round_trip(w):
    d = deploy(product_quantize(w, 16, 4, "x"))
    packed = pack_indices(d.indices, d.bits)
    np.testing.assert_array_equal(unpack_indices(packed, d.bits, 64, 12), d.indices)


def test_pack_rejects_indices_wider_than_the_bits():
    with pytest.raises(VQError, match="indices must lie in \\[0, 7\\] for 3 bits, not \\[0, 8\\]"):
        pack_indices(np.array([[0, 8]]), 3)
    with pytest.raises(VQError, match="must be 4 uint8 bytes"):
        unpack_indices(np.zeros(3, dtype=np.uint8), 3, 3, 2)


# ----------------------------------------------------------------- fine-tuning

def test_codeword_gradient_is_the_sum_of_member_gradients(w, rng):
    q = product_quantize(w, 8, 4, "x")
    books = torch.tensor(q.codebooks, requires_grad=True)
    upstream = rng.normal(size=w.shape).astype(np.float32)
    (q.torch_decoder()({"codebooks": books}) * torch.from_numpy(upstream)).sum().backward()
    expected = np.zeros_like(q.codebooks)
    for o, j in np.ndindex(*q.indices.shape):
        expected[j, q.indices[o, j]] += upstream[o, 4 * j:4 * j + 4]
    np.testing.assert_allclose(books.grad.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, params", [("bin", {}), ("km", {"k": 4}),
                                            ("pq", {"k": 4, "segment": 2, "axis": "y"}),
                                            ("rq", {"k": 4, "stages": 2}), ("svd", {"rank": 2})])
def test_torch_decoder_reproduces_reconstruct(w, method, params):
    q = quantize(w, method, **params)
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in q.trainable().items()}
    np.testing.assert_allclose(q.torch_decoder()(tensors).numpy(), q.reconstruct(),
                               rtol=1e-5, atol=1e-6)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 3)).eval()


@pytest.fixture
def toy(rng):
    model = tiny_model()
    images = rng.integers(0, 256, (600, 1, 6, 6), dtype=np.uint8)
    with torch.no_grad():
        labels = model(torch.from_numpy(images / 255).float()).argmax(1).numpy()
    return model, images, labels


def test_dense_head_accuracy_equals_the_full_model(toy, rng):
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


def test_record_counts_unquantized_dense_layers_as_float32(toy):
    model, images, labels = toy
    head = DenseHead(model, images, labels)
    weights = {"3": model[3].weight.detach().numpy()}
    quantized = quantize_layers(weights, "km", {"k": 4})
    (rec,) = evaluate(head, quantized, "km", {"k": 4})
    assert rec["compression_rate"] == pytest.approx(32 * (144 * 32 + 32 * 3)
                                                    / (144 * 32 * 2 + 4 * 32 + 32 * 32 * 3))
    assert [layer["method"] for layer in rec["layers"]] == ["km k=4", "float32"]
    assert rec["accuracy"] == head.accuracy({"3": quantized["3"].reconstruct()})


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


def test_sweep_records_plain_and_tuned_points_and_plots(toy, tmp_path):
    model, images, labels = toy
    head = DenseHead(model, images, labels)
    configs = [("km", {"k": 4}), ("pq", {"k": 4, "segment": 4, "axis": "x"}),
               ("svd", {"rank": 2})]
    records = sweep(head, {"3": model[3].weight.detach().numpy()}, configs,
                    tuning=Tuning(head, epochs=1), progress=False)
    assert [(r["method"], r["finetune_epochs"]) for r in records] == [
        ("km", 0), ("km", 1), ("pq", 0), ("pq", 1), ("svd", 0), ("svd", 1)]
    plot_sweep(records, head.accuracy(), tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ordering_compares_the_best_point_at_each_rate():
    def point(method, rate, acc):
        return {"method": method, "compression_rate": rate, "accuracy": acc, "params": {}}

    records = [point("pq", 20, 0.90), point("pq", 10, 0.93), point("km", 10, 0.92),
               point("km", 4, 0.95), point("svd", 20, 0.91), point("svd", 10, 0.80)]
    rows = {r["rate"]: r for r in ordering(records, rates=(4, 8, 16))}
    assert rows[4]["holds"] is False            # KM's 4x point beats PQ's best
    assert rows[8] == {"rate": 8, "pq": 0.93, "km": 0.92, "svd": 0.91, "holds": True}
    assert "holds" not in rows[16] and rows[16]["km"] is None
